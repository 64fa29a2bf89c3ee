//! AdmissionReview round trips: the returned JSONPatch, applied to the request object, must give the rewritten object;
//! and the webhook as `berth serve` runs it: HTTPS on its own listener (`server.webhook_listen`), never the customer port.

#[path = "support/http.rs"]
mod http;
#[path = "support/jsonpatch.rs"]
mod jsonpatch;
mod support;

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

// ---- the webhook listener of a running `berth serve` ------------------------------------

/// berth with a plain customer listener on `port` and the webhook on `webhook_port` with
/// the certificate in `dir`; `rules` is the `rewrite:` section.
fn serve_yaml(port: u16, webhook_port: u16, dir: &std::path::Path, rules: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:{port}\", hostname: images.acme.test, webhook_listen: \"127.0.0.1:{webhook_port}\",\n\
         \x20 webhook_tls: [ {{ cert: \"{crt}\", key: \"{key}\" }} ] }}\n\
         cache: {{ dir: \"{cache}\" }}\n\
         upstreams:\n\
         \x20 - {{ name: up, url: \"http://127.0.0.1:1\", host: upstream.test }}\n\
         \x20 - {{ name: ported, url: \"http://127.0.0.1:1\", host: \"registry.example.com:5000\" }}\n\
         apps:\n  - {{ slug: acme, upstreams: [up, ported] }}\n\
         licenses:\n  - {{ id: LICENSE-good-0001, app: acme, customer: Big Bank }}\n\
         {rules}",
        crt = dir.join("webhook.crt").display(),
        key = dir.join("webhook.key").display(),
        cache = dir.join("cache").display(),
    )
}

/// One HTTPS request to the webhook listener (trusting only `ca`), the response read to
/// the end of the connection.
fn https(
    port: u16,
    ca: &rustls_pki_types::CertificateDer<'static>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> http::Resp {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(http::TIMEOUT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).expect("send to the webhook");
    tls.write_all(body).expect("send to the webhook");
    let mut raw = Vec::new();
    // A peer that closes without close_notify ends the read with an error; what arrived
    // before it is the answer.
    let _ = tls.read_to_end(&mut raw);
    let (status, headers, split) = http::parse_head(&raw)
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&raw)));
    http::Resp {
        status,
        headers,
        body: raw[split..].to_vec(),
    }
}

fn pod_review(uid: &str, namespace: &str, pod: &Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        }
    })
    .to_string()
    .into_bytes()
}

#[test]
fn the_webhook_listener_serves_reviews_over_tls_and_the_customer_port_does_not() {
    let dir = support::tempdir();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("webhook.crt"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("webhook.key"),
        cert.key_pair.serialize_pem(),
    )
    .unwrap();
    let ca = cert.cert.der().clone();
    let (port, webhook_port) = (support::free_port(), support::free_port());
    let rules = "rewrite:\n  - { app: acme, pull_secret: acme-pull, namespaces: [prod] }\n";
    let berth = support::berth::Berth::start_on(
        port,
        &serve_yaml(port, webhook_port, dir.path(), rules),
        &[],
    );
    assert!(support::wait_for_port(
        webhook_port,
        std::time::Duration::from_secs(10)
    ));
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "api", "namespace": "prod"},
        "spec": {
            "containers": [
                {"name": "api", "image": "upstream.test/acme/api:v1"},
                {"name": "foreign", "image": "ghcr.io/elsewhere/tool:1"},
            ],
            "initContainers": [
                {"name": "init", "image": "registry.example.com:5000/team/init:2"},
            ],
        }
    });
    let post = |body: &[u8]| {
        https(
            webhook_port,
            &ca,
            "POST",
            "/admission/rewrite",
            &[("Content-Type", "application/json")],
            body,
        )
    };

    let uid = "8f1e2d3c-0000-4a5b-9c8d-112233445566";
    let r = post(&pod_review(uid, "prod", &pod));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), berth.logs());
    let v = r.json();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    let mut want = pod.clone();
    want["spec"]["containers"][0]["image"] =
        json!("images.acme.test/proxy/acme/upstream.test/acme/api:v1");
    want["spec"]["initContainers"][0]["image"] =
        json!("images.acme.test/proxy/acme/registry.example.com_5000/team/init:2");
    want["spec"]["imagePullSecrets"] = json!([{"name": "acme-pull"}]);
    assert_eq!(v["response"]["uid"], uid);
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(patched(&v, pod.clone()), want);

    // Another namespace: allowed, untouched.
    let r = post(&pod_review("uid-2", "dev", &pod));
    assert_eq!(r.status, 200, "{}", r.text());
    let resp = &r.json()["response"];
    assert_eq!(
        (resp["uid"].as_str(), resp["allowed"].as_bool()),
        (Some("uid-2"), Some(true))
    );
    assert!(resp.get("patch").is_none(), "patched outside prod: {resp}");

    // Malformed, too large, the wrong method: 4xx with an OCI error.
    let r = post(b"{\"apiVersion\": \"admission.k8s.io/v1\", ");
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "BAD_REQUEST"),
        "{}",
        r.text()
    );
    let r = post(br#"{"apiVersion":"v1","kind":"Pod"}"#);
    assert_eq!(r.status, 400, "not a review: {}", r.text());
    // Refused from its declared length, before any of it is read.
    let r = https(
        webhook_port,
        &ca,
        "POST",
        "/admission/rewrite",
        &[("Content-Length", "4194305")],
        b"",
    );
    assert_eq!(r.status, 400, "a review over 4 MiB: {}", r.text());
    let r = https(webhook_port, &ca, "GET", "/admission/rewrite", &[], b"");
    assert!(
        (400..500).contains(&r.status),
        "GET: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(
        https(webhook_port, &ca, "GET", "/healthz", &[], b"").status,
        200
    );
    assert_eq!(
        https(webhook_port, &ca, "GET", "/v2/", &[], b"").status,
        404
    );

    // The customer port is no webhook: 404, and the review is never parsed there.
    let r = http::request(
        port,
        "POST",
        "/admission/rewrite",
        &[("Content-Type", "application/json")],
        &pod_review("uid-c", "prod", &pod),
    );
    assert_eq!(r.status, 404, "customer port: {}", r.text());
    assert_eq!(r.code(), "NAME_UNKNOWN");

    // The webhook follows config reloads: a rule for dev now patches dev.
    let rules = "rewrite:\n  - { app: acme, pull_secret: acme-pull, namespaces: [prod, dev] }\n";
    std::fs::write(
        &berth.config_path,
        serve_yaml(port, webhook_port, dir.path(), rules),
    )
    .unwrap();
    berth.sighup();
    let patched_dev = support::wait_until(std::time::Duration::from_secs(10), || {
        post(&pod_review("uid-3", "dev", &pod)).json()["response"]
            .get("patch")
            .is_some()
    });
    assert!(patched_dev, "rewrite rules not reloaded within 10 s");
}

// ---- one behaviour: `berth rewrite` and the webhook on the same objects ----------------

/// A config with `rewrite:` rules (namespaces, an exclusion, labels, another app) and an
/// upstream with a `repositories` allow-list.
fn rules_config(dir: &std::path::Path) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:5443\", hostname: images.acme.test }}\n\
         cache: {{ dir: \"{}\" }}\n\
         upstreams:\n\
         \x20 - {{ name: vendor, url: \"http://127.0.0.1:1\", host: registry.vendor.test, repositories: [\"acme/*\"] }}\n\
         \x20 - {{ name: hub, url: \"http://127.0.0.1:1\", kind: dockerhub, repositories: [\"library/redis\"] }}\n\
         \x20 - {{ name: beta-up, url: \"http://127.0.0.1:1\", host: quay.io }}\n\
         apps:\n  - {{ slug: acme, upstreams: [vendor, hub] }}\n  - {{ slug: beta, upstreams: [beta-up] }}\n\
         rewrite:\n\
         \x20 - {{ app: acme, pull_secret: acme-pull, exclude_namespaces: [kube-system], namespaces: [prod, default] }}\n\
         \x20 - {{ app: acme, pull_secret: acme-labelled, exclude_namespaces: [kube-system], labels: {{ berth: \"on\" }} }}\n\
         \x20 - {{ app: beta, pull_secret: beta-pull, namespaces: [beta] }}\n",
        dir.join("cache").display()
    )
}

fn workload(
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    labels: Value,
    images: &[&str],
) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    let mut meta = json!({"name": name, "labels": labels});
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    let spec = json!({"containers": containers});
    match kind {
        "Pod" => json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}),
        _ => json!({"apiVersion": "apps/v1", "kind": kind, "metadata": meta,
                    "spec": {"template": {"metadata": {"labels": {"x": "y"}}, "spec": spec}}}),
    }
}

#[test]
fn the_cli_and_the_webhook_rewrite_the_same_objects_the_same_way() {
    let dir = support::tempdir();
    let text = rules_config(dir.path());
    let config = berth::config::Config::parse(&text, dir.path(), &|_| None).expect("config");
    let path = dir.path().join("berth.yaml");
    std::fs::write(&path, &text).unwrap();
    let images = [
        "registry.vendor.test/acme/api:1",
        // Not in the allow-list: berth would answer 404, so it is never rewritten.
        "registry.vendor.test/other/x:1",
        "redis:7",
        "postgres:16",
        "quay.io/beta/tool:2",
    ];
    let objects = [
        workload("Deployment", "prod-app", Some("prod"), json!({}), &images),
        workload("Pod", "no-namespace", None, json!({}), &images),
        workload(
            "Pod",
            "system",
            Some("kube-system"),
            json!({"berth": "on"}),
            &images,
        ),
        workload(
            "StatefulSet",
            "labelled",
            Some("dev"),
            json!({"berth": "on"}),
            &images,
        ),
        workload("Pod", "unselected", Some("dev"), json!({}), &images),
        workload("Pod", "betas", Some("beta"), json!({}), &images),
        workload(
            "Pod",
            "foreign-only",
            Some("prod"),
            json!({}),
            &["postgres:16"],
        ),
    ];
    // The webhook: each object reviewed in the namespace kubectl would send it to.
    let webhook: Vec<Value> = objects
        .iter()
        .map(|o| {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
            let kind = o["kind"].as_str().unwrap();
            let body = json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": kind},
                            "namespace": ns, "operation": "CREATE", "object": o},
            });
            let resp = review(
                &|ctx| berth::rewrite::admission_rules(&config, ctx),
                body.to_string().as_bytes(),
            )
            .expect("review");
            if resp["response"].get("patch").is_some() {
                patched(&resp, o.clone())
            } else {
                o.clone()
            }
        })
        .collect();
    // The CLI: the same objects as one YAML stream (JSON documents are YAML).
    let stream: String = objects.iter().map(|o| format!("---\n{o}\n")).collect();
    let run = |args: &[&str]| {
        let mut all = vec!["rewrite", "--config", path.to_str().unwrap()];
        all.extend_from_slice(args);
        support::berth::run_cli(&all, &[], Some(&stream), std::time::Duration::from_secs(20))
    };
    let r = run(&["--app", "acme"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let cli: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&r.stdout)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML out"))
        .collect();
    assert_eq!(cli.len(), objects.len(), "{}", r.stdout);
    for (i, (c, w)) in cli.iter().zip(&webhook).enumerate() {
        let name = objects[i]["metadata"]["name"].as_str().unwrap();
        if name == "betas" {
            // beta's rule decides it: the webhook rewrites it for beta, `--app acme`
            // leaves it and says so.
            assert_eq!(c, &objects[i], "{name}");
            assert!(
                r.stderr.contains("betas") && r.stderr.contains("beta"),
                "{}",
                r.stderr
            );
            continue;
        }
        assert_eq!(c, w, "{name}: CLI and webhook differ");
    }
    // What the rules mean, spelled out for two of them.
    let prod = &webhook[0]["spec"]["template"]["spec"];
    assert_eq!(prod["imagePullSecrets"], json!([{"name": "acme-pull"}]));
    let got: Vec<&str> = prod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "images.acme.test/proxy/acme/registry.vendor.test/acme/api:1",
            "registry.vendor.test/other/x:1",
            "images.acme.test/proxy/acme/index.docker.io/library/redis:7",
            "postgres:16",
            "quay.io/beta/tool:2",
        ]
    );
    assert_eq!(webhook[2], objects[2], "kube-system is excluded");
    assert_eq!(
        webhook[4], objects[4],
        "no rule selects dev without the label"
    );
    assert_eq!(
        webhook[3]["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "acme-labelled"}])
    );
    assert_eq!(
        webhook[6], objects[6],
        "nothing of the app's: no secret either"
    );
    // --app beta: the CLI rewrites beta's object as the webhook did.
    let r = run(&["--app", "beta"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let cli: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&r.stdout)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML out"))
        .collect();
    assert_eq!(cli[5], webhook[5]);
    assert_eq!(
        webhook[5]["spec"]["imagePullSecrets"],
        json!([{"name": "beta-pull"}])
    );
    // --pull-secret overrides the rule's name, for the same selection.
    let r = run(&["--app", "acme", "--pull-secret", "mine"]);
    let cli: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&r.stdout)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML out"))
        .collect();
    assert_eq!(
        cli[0]["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "mine"}])
    );
    assert_eq!(
        cli[2], objects[2],
        "kube-system stays excluded with --pull-secret"
    );
}
