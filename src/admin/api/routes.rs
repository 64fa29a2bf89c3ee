//! The admin API's route table: every (method, path template) the API answers, and the
//! matcher that turns a request into an operation and its path parameters. The OpenAPI
//! document describes exactly this table (a unit test compares them).

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    ListLicenses,
    CreateLicense,
    GetLicense,
    PatchLicense,
    RevokeLicense,
    RotateLicense,
    ListKeys,
    CreateKey,
    GetKey,
    RevokeKey,
    ListAdminTokens,
    CreateAdminToken,
    RevokeAdminToken,
    ListApps,
    ListUpstreams,
    TestUpstream,
    Usage,
    Audit,
    Gc,
    OpenApi,
}

/// What an operation reads from the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Required,
    /// `POST /upstreams/{name}/test`: an empty body, or JSON.
    Optional,
}

impl Op {
    pub fn body(self) -> Body {
        match self {
            Op::CreateLicense | Op::PatchLicense | Op::CreateKey | Op::CreateAdminToken => {
                Body::Required
            }
            Op::TestUpstream => Body::Optional,
            _ => Body::None,
        }
    }
}

pub struct Route {
    pub method: &'static str,
    /// `{name}` segments match one non-empty path segment.
    pub path: &'static str,
    pub op: Op,
}

const fn r(method: &'static str, path: &'static str, op: Op) -> Route {
    Route { method, path, op }
}

pub const ROUTES: &[Route] = &[
    r("GET", "/api/v1/licenses", Op::ListLicenses),
    r("POST", "/api/v1/licenses", Op::CreateLicense),
    r("GET", "/api/v1/licenses/{id}", Op::GetLicense),
    r("PATCH", "/api/v1/licenses/{id}", Op::PatchLicense),
    r("POST", "/api/v1/licenses/{id}/revoke", Op::RevokeLicense),
    r("POST", "/api/v1/licenses/{id}/rotate", Op::RotateLicense),
    r("GET", "/api/v1/apikeys", Op::ListKeys),
    r("POST", "/api/v1/apikeys", Op::CreateKey),
    r("GET", "/api/v1/apikeys/{id}", Op::GetKey),
    r("DELETE", "/api/v1/apikeys/{id}", Op::RevokeKey),
    r("POST", "/api/v1/apikeys/{id}/revoke", Op::RevokeKey),
    r("GET", "/api/v1/admin-tokens", Op::ListAdminTokens),
    r("POST", "/api/v1/admin-tokens", Op::CreateAdminToken),
    r(
        "POST",
        "/api/v1/admin-tokens/{id}/revoke",
        Op::RevokeAdminToken,
    ),
    r("GET", "/api/v1/apps", Op::ListApps),
    r("GET", "/api/v1/upstreams", Op::ListUpstreams),
    r("POST", "/api/v1/upstreams/{name}/test", Op::TestUpstream),
    r("GET", "/api/v1/usage", Op::Usage),
    r("GET", "/api/v1/audit", Op::Audit),
    r("POST", "/api/v1/gc", Op::Gc),
    r("GET", "/api/v1/openapi.json", Op::OpenApi),
];

/// Why a request matched no operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    /// The path exists with these methods (the `Allow` header).
    Method(Vec<&'static str>),
}

/// The operation `method` on `path` is, with the path's parameters (percent-decoded).
pub fn find(method: &str, path: &str) -> Result<(Op, Vec<String>), Miss> {
    let mut allowed = Vec::new();
    for route in ROUTES {
        let Some(params) = matches(route.path, path) else {
            continue;
        };
        if route.method == method {
            return Ok((route.op, params));
        }
        if !allowed.contains(&route.method) {
            allowed.push(route.method);
        }
    }
    if allowed.is_empty() {
        Err(Miss::NotFound)
    } else {
        Err(Miss::Method(allowed))
    }
}

fn matches(template: &str, path: &str) -> Option<Vec<String>> {
    let mut t = template.split('/');
    let mut p = path.split('/');
    let mut params = Vec::new();
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some(ts), Some(ps)) if ts.starts_with('{') => {
                if ps.is_empty() {
                    return None;
                }
                params.push(percent_decode(ps)?);
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return None,
        }
    }
}

/// `%XX` escapes of a path segment; `None` for a broken escape or bytes that are not UTF-8.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_operation_or_say_which_methods_exist() {
        assert_eq!(
            find("GET", "/api/v1/licenses"),
            Ok((Op::ListLicenses, vec![]))
        );
        assert_eq!(
            find("POST", "/api/v1/licenses/lic_abc/rotate"),
            Ok((Op::RotateLicense, vec!["lic_abc".into()]))
        );
        assert_eq!(
            find("DELETE", "/api/v1/apikeys/key_x"),
            Ok((Op::RevokeKey, vec!["key_x".into()]))
        );
        assert_eq!(
            find("POST", "/api/v1/admin-tokens/config%3Aops/revoke"),
            Ok((Op::RevokeAdminToken, vec!["config:ops".into()]))
        );
        assert_eq!(
            find("DELETE", "/api/v1/licenses/lic_abc"),
            Err(Miss::Method(vec!["GET", "PATCH"]))
        );
        assert_eq!(find("GET", "/api/v1/licenses/"), Err(Miss::NotFound));
        assert_eq!(find("GET", "/api/v1/licenses/a/b"), Err(Miss::NotFound));
        assert_eq!(find("GET", "/api/v1/nothing"), Err(Miss::NotFound));
        assert_eq!(find("GET", "/api/v1/licenses/%zz"), Err(Miss::NotFound));
    }

    /// The served OpenAPI document describes every route of the table and nothing else.
    #[test]
    fn the_openapi_document_describes_exactly_the_route_table() {
        let doc: serde_json::Value = serde_json::from_str(super::super::OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let table: std::collections::BTreeSet<_> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(documented, table);
    }
}
