//! AdmissionReview round trips: the returned JSONPatch, applied to the request object, must give the rewritten object.

#[path = "support/jsonpatch.rs"]
mod jsonpatch;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use berth::rewrite::{review, AdmissionContext, AdmissionRules, Rules};
use serde_json::{json, Value};

fn rules() -> Rules {
    Rules {
        hostname: "images.acme.test".into(),
        app: "acme".into(),
        upstream_hosts: vec!["quay.io".into(), "index.docker.io".into()],
        pull_secret: Some("berth-pull".into()),
        all: false,
        registry: None,
    }
}

fn always(_: &AdmissionContext) -> Option<Rules> {
    Some(rules())
}

fn request(kind: &str, operation: &str, object: Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "apps", "version": "v1", "kind": kind},
            "resource": {"group": "apps", "version": "v1", "resource": "things"},
            "namespace": "acme",
            "operation": operation,
            "object": object,
        }
    })
    .to_string()
    .into_bytes()
}

fn patched(response: &Value, mut object: Value) -> Value {
    let r = &response["response"];
    assert_eq!(r["patchType"], "JSONPatch");
    let patch: Value = serde_json::from_slice(
        &STANDARD
            .decode(r["patch"].as_str().expect("patch"))
            .expect("base64"),
    )
    .expect("patch JSON");
    jsonpatch::apply_patch(&mut object, &patch);
    object
}

fn deployment(pull_secrets: Option<Value>) -> Value {
    let mut spec = json!({
        "initContainers": [{"name": "init", "image": "redis:7"}],
        "containers": [
            {"name": "api", "image": "quay.io/acme/api:1.2"},
            {"name": "other", "image": "ghcr.io/else/where:1"},
        ],
    });
    if let Some(s) = pull_secrets {
        spec["imagePullSecrets"] = s;
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "labels": {"app": "api", "a/b~c": "x"}},
        "spec": {"template": {"spec": spec}},
    })
}

#[test]
fn deployment_round_trip() {
    let obj = deployment(None);
    let resp = review(&always, &request("Deployment", "CREATE", obj.clone())).expect("review");
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(
        resp["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(resp["response"]["allowed"], true);
    let out = patched(&resp, obj);
    let spec = &out["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"][0]["image"],
        "images.acme.test/proxy/acme/quay.io/acme/api:1.2"
    );
    assert_eq!(spec["containers"][1]["image"], "ghcr.io/else/where:1");
    assert_eq!(
        spec["initContainers"][0]["image"],
        "images.acme.test/proxy/acme/index.docker.io/library/redis:7"
    );
    assert_eq!(spec["imagePullSecrets"], json!([{"name": "berth-pull"}]));

    // Re-reviewing the patched object changes nothing.
    let again = review(&always, &request("Deployment", "UPDATE", out)).expect("review");
    assert!(again["response"].get("patch").is_none(), "{again}");
}

#[test]
fn existing_pull_secrets_are_extended_once() {
    let obj = deployment(Some(json!([{"name": "legacy"}])));
    let out = patched(
        &review(&always, &request("Deployment", "CREATE", obj.clone())).expect("review"),
        obj,
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "legacy"}, {"name": "berth-pull"}])
    );

    let obj = deployment(Some(json!([{"name": "berth-pull"}])));
    let out = patched(
        &review(&always, &request("Deployment", "CREATE", obj.clone())).expect("review"),
        obj,
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "berth-pull"}])
    );
}

#[test]
fn pods_and_cronjobs() {
    let pod = json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "containers": [{"name": "a", "image": "quay.io/acme/a:1"}],
        "ephemeralContainers": [{"name": "dbg", "image": "quay.io/acme/dbg:1"}],
    }});
    let out = patched(
        &review(&always, &request("Pod", "CREATE", pod.clone())).expect("review"),
        pod.clone(),
    );
    assert_eq!(
        out["spec"]["ephemeralContainers"][0]["image"],
        "images.acme.test/proxy/acme/quay.io/acme/dbg:1"
    );
    assert_eq!(
        out["spec"]["imagePullSecrets"],
        json!([{"name": "berth-pull"}])
    );
    // imagePullSecrets is immutable on a running pod: updates are left alone.
    let resp = review(&always, &request("Pod", "UPDATE", pod)).expect("review");
    assert!(resp["response"].get("patch").is_none());

    let cj = json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {
        "containers": [{"name": "a", "image": "quay.io/acme/a:1"}], "imagePullSecrets": null}}}}}});
    let out = patched(
        &review(&always, &request("CronJob", "CREATE", cj.clone())).expect("review"),
        cj,
    );
    let spec = &out["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"][0]["image"],
        "images.acme.test/proxy/acme/quay.io/acme/a:1"
    );
    assert_eq!(spec["imagePullSecrets"], json!([{"name": "berth-pull"}]));
}

#[test]
fn unknown_kinds_and_unselected_objects_pass_unchanged() {
    let svc = json!({"kind": "Service", "spec": {"template": {"spec": {"containers": [{"image": "quay.io/acme/a:1"}]}}}});
    let resp = review(&always, &request("Service", "CREATE", svc)).expect("review");
    assert_eq!(
        resp["response"],
        json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
    );

    let selector = AdmissionRules {
        namespaces: vec!["other".into()],
        ..Default::default()
    };
    let seen = std::cell::RefCell::new(None);
    let rules_for = |ctx: &AdmissionContext| {
        *seen.borrow_mut() = Some(ctx.clone());
        selector.matches(ctx).then(rules)
    };
    let resp = review(
        &rules_for,
        &request("Deployment", "CREATE", deployment(None)),
    )
    .expect("review");
    assert!(resp["response"].get("patch").is_none());
    let ctx = seen.borrow().clone().expect("rules_for called");
    assert_eq!(
        (
            ctx.namespace.as_str(),
            ctx.kind.as_str(),
            ctx.operation.as_str()
        ),
        ("acme", "Deployment", "CREATE")
    );
    assert_eq!(ctx.labels.get("app").map(String::as_str), Some("api"));
    assert_eq!(ctx.name.as_deref(), Some("api"));

    let delete = review(&always, &request("Deployment", "DELETE", Value::Null)).expect("review");
    assert!(delete["response"].get("patch").is_none());
}

#[test]
fn malformed_reviews_are_errors() {
    let cases: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"[]".to_vec(),
        json!({"apiVersion": "v1", "kind": "AdmissionReview", "request": {"uid": "x", "kind": {"kind": "Pod"}}}).to_string().into_bytes(),
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "Pod", "request": {"uid": "x", "kind": {"kind": "Pod"}}}).to_string().into_bytes(),
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string().into_bytes(),
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"kind": {"kind": "Pod"}}}).to_string().into_bytes(),
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "x"}}).to_string().into_bytes(),
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "x", "kind": {"kind": "Pod"}, "object": "str"}}).to_string().into_bytes(),
    ];
    for body in cases {
        let err = review(&always, &body).expect_err(&String::from_utf8_lossy(&body));
        assert!(!err.reason.is_empty());
    }
}
