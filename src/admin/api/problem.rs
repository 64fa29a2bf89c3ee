//! The admin API's errors as RFC 9457 problem documents (`application/problem+json`), and
//! the one mapping from a control-plane error to a status and a problem. A problem's
//! `detail` never carries a secret: control errors name fields and public ids only, and
//! state store errors are logged here and answered with a generic detail.

use http::StatusCode;
use serde::Serialize;

use crate::control::ControlError;
use crate::state::StateError;

/// What went wrong, as the client is told; the variant decides status, `type` and `title`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    ReadOnly,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    Invalid,
    TooManyRequests,
    Internal,
    Unavailable,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::ReadOnly | Kind::Conflict => StatusCode::CONFLICT,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `type` slug (`urn:berth:problem:<slug>`); the OpenAPI document lists them.
    fn slug(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad-request",
            Kind::Unauthorized => "unauthorized",
            Kind::NotFound => "not-found",
            Kind::MethodNotAllowed => "method-not-allowed",
            Kind::RequestTimeout => "request-timeout",
            Kind::ReadOnly => "read-only",
            Kind::Conflict => "conflict",
            Kind::PayloadTooLarge => "payload-too-large",
            Kind::UnsupportedMediaType => "unsupported-media-type",
            Kind::Invalid => "invalid",
            Kind::TooManyRequests => "too-many-requests",
            Kind::Internal => "internal",
            Kind::Unavailable => "unavailable",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::BadRequest => "Bad request",
            Kind::Unauthorized => "Unauthorized",
            Kind::NotFound => "Not found",
            Kind::MethodNotAllowed => "Method not allowed",
            Kind::RequestTimeout => "Request timeout",
            Kind::ReadOnly => "Read-only",
            Kind::Conflict => "Conflict",
            Kind::PayloadTooLarge => "Payload too large",
            Kind::UnsupportedMediaType => "Unsupported media type",
            Kind::Invalid => "Invalid field",
            Kind::TooManyRequests => "Too many requests",
            Kind::Internal => "Internal error",
            Kind::Unavailable => "Unavailable",
        }
    }
}

/// One problem answer. `field` names the request field at fault (422, and 400 when the
/// JSON parser says which); `allow` and `retry_after` become headers.
#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: Kind,
    pub detail: String,
    pub field: Option<String>,
    pub allow: Option<String>,
    pub retry_after: Option<u64>,
}

/// The body as sent.
#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl Problem {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Problem {
        Problem {
            kind,
            detail: detail.into(),
            field: None,
            allow: None,
            retry_after: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Problem {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(Kind::BadRequest, detail)
    }

    /// A query parameter that cannot be used.
    pub fn bad_parameter(name: &str, detail: impl std::fmt::Display) -> Problem {
        Problem::bad_request(format!("query parameter {name}: {detail}")).with_field(name)
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub fn body(&self) -> Vec<u8> {
        let doc = Document {
            kind: format!("urn:berth:problem:{}", self.kind.slug()),
            title: self.kind.title(),
            status: self.status().as_u16(),
            detail: &self.detail,
            field: self.field.as_deref(),
        };
        // A struct of strings and a number always serializes.
        serde_json::to_vec(&doc).unwrap_or_default()
    }
}

/// The one mapping of control-plane errors: Invalid → 422 (naming the field), NotFound →
/// 404, ReadOnly and Conflict → 409, an unreachable store → 503, any other store failure →
/// 500. Store errors are logged in full once, here, and answered generically: their text
/// is for operators (it may name a database host), not for API clients.
pub fn of(e: ControlError) -> Problem {
    match e {
        ControlError::Invalid { field, message } => {
            Problem::new(Kind::Invalid, format!("{field}: {message}")).with_field(field)
        }
        e @ ControlError::NotFound(_) => Problem::new(Kind::NotFound, e.to_string()),
        e @ ControlError::ReadOnly(_) => Problem::new(Kind::ReadOnly, e.to_string()),
        e @ ControlError::Conflict(_) => Problem::new(Kind::Conflict, e.to_string()),
        ControlError::State(e) => {
            tracing::error!(error = %e, "admin API: state store failed");
            match e {
                StateError::Unavailable(_) => Problem::new(
                    Kind::Unavailable,
                    "the state store is unavailable; try again",
                ),
                _ => Problem::new(Kind::Internal, "internal error (see berth's log)"),
            }
        }
    }
}

impl From<ControlError> for Problem {
    fn from(e: ControlError) -> Problem {
        of(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_errors_map_to_the_contract_statuses() {
        let cases = [
            (
                ControlError::Invalid {
                    field: "app".into(),
                    message: "unknown app \"x\"".into(),
                },
                422,
                Some("app"),
            ),
            (ControlError::NotFound("license lic_x".into()), 404, None),
            (ControlError::ReadOnly("license abc".into()), 409, None),
            (ControlError::Conflict("x already exists".into()), 409, None),
            (
                ControlError::State(StateError::Unavailable("postgres://u:pw@db".into())),
                503,
                None,
            ),
            (
                ControlError::State(StateError::Database("near \"pw\": syntax".into())),
                500,
                None,
            ),
        ];
        for (e, status, field) in cases {
            let p = of(e);
            assert_eq!(p.status().as_u16(), status, "{p:?}");
            assert_eq!(p.field.as_deref(), field);
            let body: serde_json::Value = serde_json::from_slice(&p.body()).unwrap();
            assert_eq!(body["status"], status);
            assert!(body["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:berth:problem:"));
            assert!(
                !body["detail"].as_str().unwrap().contains("pw"),
                "store error text reached a client: {body}"
            );
        }
    }
}
