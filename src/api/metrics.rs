//! The customer edge's metric families (`berth_http_*`, `berth_pulls`), registered into the
//! registry the composition root passes in. Labels stay low-cardinality: route classes,
//! status codes and app names; never license ids or repository names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

/// `default()` is registered nowhere (a throwaway for tests).
#[derive(Clone, Default)]
pub struct ApiMetrics {
    requests: Family<RouteLabels, Counter>,
    response_bytes: Family<RouteOnly, Counter>,
    pulls: Family<AppLabels, Counter>,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> ApiMetrics {
        let m = ApiMetrics::default();
        registry.register(
            "http_requests",
            "Requests by route class and status",
            m.requests.clone(),
        );
        registry.register(
            "http_response_bytes",
            "Body bytes sent by route class",
            m.response_bytes.clone(),
        );
        registry.register("pulls", "Manifest pulls by app", m.pulls.clone());
        m
    }

    /// One answered request of a route class (see [`route_class`]).
    pub fn request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RouteLabels { route, status })
            .inc();
    }

    pub fn response_bytes(&self, route: &'static str, bytes: u64) {
        self.response_bytes
            .get_or_create(&RouteOnly { route })
            .inc_by(bytes);
    }

    pub fn pull(&self, app: &str) {
        self.pulls
            .get_or_create(&AppLabels {
                app: app.to_string(),
            })
            .inc();
    }
}

/// The route class of a request path, for metric labels.
pub fn route_class(path: &str) -> &'static str {
    if path == "/token" {
        "token"
    } else if path == "/v2" || path == "/v2/" {
        "base"
    } else if path == "/v2/_catalog" {
        "catalog"
    } else if path.starts_with("/v2/") {
        if path.contains("/blobs/uploads") {
            "upload"
        } else if path.contains("/manifests/") {
            "manifest"
        } else if path.contains("/blobs/") {
            "blob"
        } else if path.ends_with("/tags/list") {
            "tags"
        } else if path.contains("/referrers/") {
            "referrers"
        } else {
            "other"
        }
    } else if path.starts_with("/admission/") {
        "admission"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(route_class("/v2/proxy/a/h/r/blobs/sha256:x"), "blob");
        assert_eq!(route_class("/v2/proxy/a/h/r/manifests/1"), "manifest");
        assert_eq!(route_class("/v2/"), "base");
        assert_eq!(route_class("/token"), "token");
        assert_eq!(route_class("/x"), "other");
        assert_eq!(route_class("/v2/acme/w/blobs/uploads/"), "upload");
        assert_eq!(route_class("/v2/acme/w/blobs/uploads/0a1b"), "upload");
        assert_eq!(route_class("/v2/acme/w/blobs/sha256:x"), "blob");
        assert_eq!(route_class("/v2/_catalog"), "catalog");
    }
}
