//! A tiny HTTP/1.1 client over a plain socket, for tests that must see every header and
//! status exactly as berth sent them (no client-side redirects, retries or auth).
//!
//! Included with `#[path = "support/http.rs"] mod http;` by the tests that need it, so the
//! shared `support` module stays untouched.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Longest wait for any single read; every request is bounded by it.
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub type Headers = Vec<(String, String)>;

#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    /// Lowercased names, in the order received.
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of a {} is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The first OCI error code, checking the body has the `{"errors":[{code,message}]}` shape.
    pub fn code(&self) -> String {
        let v = self.json();
        assert!(
            v["errors"][0]["message"].is_string(),
            "OCI error without a message: {v}"
        );
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no OCI error code in {v}"))
            .to_string()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection (`Connection: close`), the whole response read.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to 127.0.0.1");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send request head");
    s.write_all(body).expect("send request body");
    let mut all = Vec::new();
    s.read_to_end(&mut all)
        .unwrap_or_else(|e| panic!("{method} {path}: reading response: {e}"));
    let head_only = method == "HEAD";
    parse_response(&all, head_only).unwrap_or_else(|| {
        panic!(
            "{method} {path}: unparseable response {:?}",
            String::from_utf8_lossy(&all[..all.len().min(500)])
        )
    })
}

pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(port, "GET", path, headers, b"")
}

/// (status, headers, offset of the body) once `raw` holds a whole response head.
pub fn parse_head(raw: &[u8]) -> Option<(u16, Headers, usize)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, split))
}

fn parse_response(raw: &[u8], head_only: bool) -> Option<Resp> {
    let (status, headers, split) = parse_head(raw)?;
    let mut r = Resp {
        status,
        headers,
        body: raw[split..].to_vec(),
    };
    if !head_only
        && r.header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
    {
        r.body = dechunk(&r.body)?;
    }
    Some(r)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}
