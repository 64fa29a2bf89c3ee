//! Where pod specs live in each Kubernetes workload kind; shared by the YAML and admission rewriters.

/// Lists of containers in a pod spec whose `image` fields are rewritten.
pub(crate) const CONTAINER_KEYS: [&str; 3] =
    ["containers", "initContainers", "ephemeralContainers"];

const TEMPLATE: &[&str] = &["spec", "template", "spec"];

/// Paths from an object's root to its pod spec, by `kind` (any apiVersion: the
/// layout did not change between extensions/v1beta1, apps/v1, batch/v1beta1...).
pub(crate) fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &["spec"],
        "PodTemplate" => &["template", "spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => TEMPLATE,
        _ => return None,
    })
}

/// For kinds we do not know (Argo Rollouts, OpenShift DeploymentConfigs, ...),
/// the YAML rewriter still looks for the common `spec.template.spec` shape, but
/// only uses it when it holds a `containers` list.
pub(crate) const FALLBACK_POD_SPEC_PATH: &[&str] = TEMPLATE;

/// A `kind: List` (or `DeploymentList`, ...) keeps its objects under `items`.
pub(crate) fn is_list_kind(kind: &str) -> bool {
    kind.ends_with("List")
}
