//! AWS Signature Version 4 (the subset berth needs: one request, headers signed, payload
//! hashed), written against ring rather than pulling in the AWS SDK.

use std::time::SystemTime;

use ring::{digest, hmac};

use crate::settings::Secret;

/// What gets signed. Header names must be lowercase; values are trimmed when signed.
pub struct SignInput<'a> {
    pub method: &'a str,
    /// Absolute path, already URI-encoded as it goes on the wire (`/` for ECR).
    pub path: &'a str,
    /// The raw query string without `?` (empty when none).
    pub query: &'a str,
    /// Every header to sign, `host` and `x-amz-date` included.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub region: &'a str,
    pub service: &'a str,
    /// `YYYYMMDDTHHMMSSZ`, the value of `x-amz-date`.
    pub amz_date: &'a str,
}

/// Returns the `Authorization` header value for `input`.
pub fn authorization(access_key_id: &str, secret: &Secret, input: &SignInput<'_>) -> String {
    let date = &input.amz_date[..8.min(input.amz_date.len())];
    let scope = format!("{date}/{}/{}/aws4_request", input.region, input.service);
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), collapse_spaces(v)))
        .collect();
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        input.method,
        input.path,
        canonical_query(input.query),
        canonical_headers,
        signed_headers,
        hex_sha256(input.body)
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        input.amz_date,
        scope,
        hex_sha256(canonical_request.as_bytes())
    );
    let key = signing_key(secret, date, input.region, input.service);
    let signature = hex(hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    )
}

/// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
fn signing_key(secret: &Secret, date: &str, region: &str, service: &str) -> hmac::Key {
    let mut k = format!("AWS4{}", secret.expose()).into_bytes();
    for part in [date, region, service, "aws4_request"] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &k);
        k = hmac::sign(&key, part.as_bytes()).as_ref().to_vec();
    }
    hmac::Key::new(hmac::HMAC_SHA256, &k)
}

/// Query parameters sorted by name then value; berth's queries are already encoded.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn collapse_spaces(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn hex_sha256(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDDTHHMMSSZ` for `t` (UTC).
pub fn amz_date(t: SystemTime) -> String {
    // humantime prints `2015-08-30T12:36:00Z`; SigV4 wants the basic format.
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's published examples: the sigv4 test suite's `get-vanilla` and `post-vanilla`,
    // and the IAM ListUsers walk-through of the signing documentation.
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn sign(
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        service: &str,
    ) -> String {
        authorization(
            "AKIDEXAMPLE",
            &Secret::new(SECRET),
            &SignInput {
                method,
                path,
                query,
                headers,
                body: b"",
                region: "us-east-1",
                service,
                amz_date: "20150830T123600Z",
            },
        )
    }

    #[test]
    fn aws_test_suite_get_vanilla() {
        let a = sign(
            "GET",
            "/",
            "",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
            "service",
        );
        assert_eq!(
            a,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn aws_test_suite_post_vanilla() {
        let a = sign(
            "POST",
            "/",
            "",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
            "service",
        );
        assert!(
            a.ends_with(
                "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
            ),
            "{a}"
        );
    }

    #[test]
    fn aws_docs_iam_list_users() {
        let a = sign(
            "GET",
            "/",
            "Action=ListUsers&Version=2010-05-08",
            &[
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("host", "iam.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
            "iam",
        );
        assert!(
            a.ends_with("SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"),
            "{a}"
        );
    }

    #[test]
    fn dates() {
        let t = humantime::parse_rfc3339("2015-08-30T12:36:00Z").unwrap();
        assert_eq!(amz_date(t), "20150830T123600Z");
        assert_eq!(
            hex_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
