//! The mutating admission webhook: turns an `admission.k8s.io/v1` AdmissionReview into a response whose JSONPatch rewrites images and adds the pull secret.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::workload::{pod_spec_path, CONTAINER_KEYS};
use super::{Decision, Rules};

/// What the caller gets to decide on: whether and how to rewrite this object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionContext {
    pub namespace: String,
    /// The object's kind (`Pod`, `Deployment`, ...).
    pub kind: String,
    /// `CREATE`, `UPDATE`, ...
    pub operation: String,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// A malformed review; the caller answers HTTP 400 with `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed AdmissionReview: {reason}")]
pub struct AdmissionError {
    pub reason: String,
}

fn bad(reason: impl Into<String>) -> AdmissionError {
    AdmissionError {
        reason: reason.into(),
    }
}

/// A simple selector for the `rewrite:` config: which objects the webhook touches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionRules {
    /// Namespaces to rewrite in; empty means all.
    pub namespaces: Vec<String>,
    /// Namespaces never touched (checked first), e.g. `kube-system`.
    pub exclude_namespaces: Vec<String>,
    /// Labels the object must all carry (equality match); empty means any object.
    pub labels: BTreeMap<String, String>,
}

impl AdmissionRules {
    pub fn matches(&self, ctx: &AdmissionContext) -> bool {
        if self.exclude_namespaces.contains(&ctx.namespace) {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&ctx.namespace) {
            return false;
        }
        self.labels
            .iter()
            .all(|(k, v)| ctx.labels.get(k) == Some(v))
    }
}

/// Answers one AdmissionReview. Always `allowed: true` (berth never blocks a
/// workload); a `patch` is present only when something changes.
///
/// Pods are only patched on CREATE: a pod's `imagePullSecrets` is immutable
/// afterwards, and a rejected UPDATE would be worse than an untouched one.
pub fn review(
    rules_for: &dyn Fn(&AdmissionContext) -> Option<Rules>,
    body: &[u8],
) -> Result<Value, AdmissionError> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|v| v.starts_with("admission.k8s.io/"))
        .ok_or_else(|| bad("apiVersion is not admission.k8s.io/*"))?;
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err(bad("kind is not AdmissionReview"));
    }
    let request = review
        .get("request")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("missing request"))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| bad("missing request.uid"))?;
    let kind = request
        .get("kind")
        .and_then(|k| k.get("kind"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing request.kind.kind"))?;
    let operation = request
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or("");
    let object = request.get("object").unwrap_or(&Value::Null);
    if !(object.is_object() || object.is_null()) {
        return Err(bad("request.object is not an object"));
    }
    let meta = object.get("metadata");
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .or_else(|| {
            meta.and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
        })
        .unwrap_or("");
    let labels = meta
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let ctx = AdmissionContext {
        namespace: namespace.to_string(),
        kind: kind.to_string(),
        operation: operation.to_string(),
        name: meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string),
        labels,
    };

    let subresource = request
        .get("subResource")
        .and_then(Value::as_str)
        .unwrap_or("");
    let pod_not_created = kind == "Pod" && operation != "CREATE";
    let ops = match pod_spec_path(kind) {
        Some(path) if object.is_object() && subresource.is_empty() && !pod_not_created => {
            match rules_for(&ctx) {
                Some(rules) => patch_ops(&rules, object, path),
                None => Vec::new(),
            }
        }
        _ => Vec::new(),
    };

    let mut response = Map::new();
    response.insert("uid".into(), json!(uid));
    response.insert("allowed".into(), json!(true));
    if !ops.is_empty() {
        response.insert("patchType".into(), json!("JSONPatch"));
        response.insert(
            "patch".into(),
            json!(STANDARD.encode(Value::Array(ops).to_string())),
        );
    }
    Ok(json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": response,
    }))
}

/// RFC 6901: `~` first, so that the `~1` produced for `/` is not re-escaped.
pub fn escape_pointer_segment(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn patch_ops(rules: &Rules, object: &Value, path: &[&str]) -> Vec<Value> {
    let Some(spec) = path
        .iter()
        .try_fold(object, |v, k| v.get(k))
        .filter(|s| s.is_object())
    else {
        return Vec::new();
    };
    let base: String = path
        .iter()
        .map(|k| format!("/{}", escape_pointer_segment(k)))
        .collect();
    let mut ops = Vec::new();
    let mut targeted = false;
    for key in CONTAINER_KEYS {
        let Some(containers) = spec.get(key).and_then(Value::as_array) else {
            continue;
        };
        for (i, c) in containers.iter().enumerate() {
            let Some(image) = c.get("image").and_then(Value::as_str) else {
                continue;
            };
            match rules.decide(image) {
                // A workload is never blocked: an image berth cannot rename keeps
                // pulling from where it did.
                Decision::Foreign | Decision::Unrewritable { .. } => {}
                Decision::AlreadyTargeted | Decision::Own { .. } => targeted = true,
                Decision::Rewrite { new, .. } => {
                    targeted = true;
                    ops.push(json!({
                        "op": "replace",
                        "path": format!("{base}/{}/{i}/image", escape_pointer_segment(key)),
                        "value": new,
                    }));
                }
            }
        }
    }
    if let (true, Some(secret)) = (targeted, &rules.pull_secret) {
        let list_path = format!("{base}/imagePullSecrets");
        match spec.get("imagePullSecrets") {
            Some(Value::Array(items)) => {
                let present = items
                    .iter()
                    .any(|i| i.get("name").and_then(Value::as_str) == Some(secret));
                if !present {
                    ops.push(json!({"op": "add", "path": format!("{list_path}/-"), "value": {"name": secret}}));
                }
            }
            None | Some(Value::Null) => {
                ops.push(json!({"op": "add", "path": list_path, "value": [{"name": secret}]}));
            }
            // Not a list: the API server rejects the object anyway; do not make it worse.
            Some(_) => {}
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_escaping() {
        assert_eq!(escape_pointer_segment("a/b~c"), "a~1b~0c");
        assert_eq!(escape_pointer_segment("~1"), "~01");
    }

    #[test]
    fn selector() {
        let r = AdmissionRules {
            namespaces: vec!["acme".into()],
            exclude_namespaces: vec!["kube-system".into()],
            labels: [("berth".to_string(), "on".to_string())].into(),
        };
        let mut ctx = AdmissionContext {
            namespace: "acme".into(),
            labels: [("berth".to_string(), "on".to_string())].into(),
            ..Default::default()
        };
        assert!(r.matches(&ctx));
        ctx.labels.clear();
        assert!(!r.matches(&ctx));
        ctx.labels.insert("berth".into(), "on".into());
        ctx.namespace = "other".into();
        assert!(!r.matches(&ctx));
        assert!(AdmissionRules::default().matches(&ctx));
    }

    #[test]
    fn a_hosted_image_is_left_and_gets_the_secret() {
        let rules = super::super::Rules {
            hostname: "images.acme.test".into(),
            app: "acme".into(),
            upstream_hosts: vec!["quay.io".into()],
            pull_secret: Some("berth-pull".into()),
            ..Default::default()
        };
        let pod = json!({"spec": {"containers": [
            {"name": "w", "image": "images.acme.test/acme/worker:1.0"},
        ]}});
        assert_eq!(
            patch_ops(&rules, &pod, &["spec"]),
            vec![
                json!({"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "berth-pull"}]})
            ]
        );
        let foreign = json!({"spec": {"containers": [{"name": "w", "image": "ghcr.io/x/y:1"}]}});
        assert!(patch_ops(&rules, &foreign, &["spec"]).is_empty());
    }
}
