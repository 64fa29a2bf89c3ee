//! The one place where an `Error` becomes an HTTP status, an OCI error code and an
//! `{"errors":[...]}` body.

use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::body::{full, Body};
use crate::error::Error;

pub fn status_and_code(err: &Error) -> (StatusCode, &'static str) {
    match err {
        Error::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
        Error::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        Error::TagInvalid(_) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
        Error::RangeInvalid(_) => (StatusCode::BAD_REQUEST, "RANGE_INVALID"),
        Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
        Error::PaginationInvalid(_) => (StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID"),
        Error::RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"),
        Error::BlobUploadInvalid(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
        Error::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        Error::ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
        Error::SizeInvalid(_) => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
        Error::UploadRange { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
        Error::BlobUploadUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
        Error::NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        Error::ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        Error::BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        Error::Unauthorized | Error::LoginRefused(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
        Error::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
        Error::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
        Error::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
        Error::Upstream { .. } | Error::UpstreamUnavailable { .. } => {
            (StatusCode::BAD_GATEWAY, "UNAVAILABLE")
        }
        Error::Offline(_) | Error::Unavailable(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
        }
        Error::UpstreamTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE"),
        Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
    }
}

/// Builds the error response. `Internal` errors say nothing specific to the client: the
/// operator's log line has the cause.
pub fn response(err: &Error) -> Response<Body> {
    let (status, code) = status_and_code(err);
    let message = match err {
        Error::Internal(_) => "internal error".to_string(),
        e => e.to_string(),
    };
    let mut entry = serde_json::json!({ "code": code, "message": message });
    if let Error::Upstream { upstream, .. }
    | Error::UpstreamUnavailable { upstream, .. }
    | Error::UpstreamTimeout { upstream, .. } = err
    {
        entry["detail"] = serde_json::json!({ "upstream": upstream });
    }
    let body = serde_json::to_vec(&serde_json::json!({ "errors": [entry] }))
        .unwrap_or_else(|_| b"{\"errors\":[]}".to_vec());
    let mut resp = Response::new(full(body.clone()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    match err {
        Error::TooManyRequests {
            retry_after: Some(r),
        } => {
            if let Ok(v) = HeaderValue::try_from(r.as_str()) {
                h.insert(RETRY_AFTER, v);
            }
        }
        Error::RangeNotSatisfiable {
            content_range: Some(r),
        } => {
            if let Ok(v) = HeaderValue::try_from(r.as_str()) {
                h.insert(CONTENT_RANGE, v);
            }
        }
        Error::UploadRange { range } => {
            if let Ok(v) = HeaderValue::try_from(range.as_str()) {
                h.insert(RANGE, v);
            }
        }
        _ => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn oci_error_body() {
        let r = response(&Error::ManifestUnknown("acme/api:9".into()));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN");
        assert!(v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("acme/api:9"));
    }

    #[test]
    fn retry_after_passes_through() {
        let r = response(&Error::TooManyRequests {
            retry_after: Some("30".into()),
        });
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[RETRY_AFTER], "30");
    }

    #[test]
    fn internal_errors_stay_vague() {
        let r = response(&Error::Internal("disk /secret/path failed".into()));
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
