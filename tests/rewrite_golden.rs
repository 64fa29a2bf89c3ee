//! Golden tests for `rewrite_yaml`: each `tests/golden/rewrite/NAME.in.yaml` must rewrite to exactly `NAME.out.yaml`.
//!
//! `BLESS=1 cargo test --test rewrite_golden` rewrites the `.out.yaml` files; review
//! the diff before committing it. Names starting with `airgap-` use an airgap
//! registry, `pin-` pins digests, `all-` moves every image to an airgap registry, `json-`
//! inputs are JSON and must stay JSON.

use std::path::{Path, PathBuf};

use berth::rewrite::{rewrite_image, rewrite_yaml, ImageRef, Rules};
use serde_yaml_ng::Value;
use sha2::{Digest, Sha256};

const SECRET: &str = "berth-pull";

fn rules_for(name: &str) -> Rules {
    Rules {
        hostname: "images.acme.test".into(),
        app: "acme".into(),
        upstream_hosts: vec![
            "quay.io".into(),
            "index.docker.io".into(),
            "registry.example.com:5000".into(),
        ],
        pull_secret: Some(SECRET.into()),
        all: name.starts_with("all-"),
        // `all` moves every image only to an airgap registry (berth serves just the app's
        // upstreams), so `all-` cases have one.
        registry: (name.starts_with("airgap-") || name.starts_with("all-"))
            .then(|| "registry.customer.example/vendor-mirror".to_string()),
    }
}

/// A stand-in for the registry lookup: a stable digest derived from the name.
fn fake_pin(r: &ImageRef) -> Result<String, String> {
    Ok(format!(
        "sha256:{:x}",
        Sha256::digest(r.to_string().as_bytes())
    ))
}

fn cases() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/rewrite");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p
                .file_name()?
                .to_str()?
                .strip_suffix(".in.yaml")?
                .to_string();
            Some((name, p))
        })
        .collect();
    v.sort();
    v
}

fn run(name: &str, input: &str) -> String {
    let rules = rules_for(name);
    let f: &dyn Fn(&ImageRef) -> Result<String, String> = &fake_pin;
    let pin = name.starts_with("pin-").then_some(f);
    rewrite_yaml(&rules, input, pin).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn golden_files() {
    let cases = cases();
    assert!(cases.len() >= 10, "golden cases missing");
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for (name, path) in &cases {
        let input = std::fs::read_to_string(path).expect("read input");
        let got = run(name, &input);
        let out_path = path.with_file_name(format!("{name}.out.yaml"));
        if bless {
            std::fs::write(&out_path, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&out_path).unwrap_or_default();
        if got != want {
            failures.push(format!("--- {name}: got\n{got}\n--- want\n{want}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn golden_outputs_are_idempotent() {
    for (name, path) in cases() {
        let input = std::fs::read_to_string(&path).expect("read input");
        let once = run(&name, &input);
        assert_eq!(
            run(&name, &once),
            once,
            "{name}: second rewrite changed the output"
        );
    }
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect()
}

/// Walks input and output side by side: they must be equal except for images
/// (each changed one being exactly what `rewrite_image` says, possibly pinned) and
/// `imagePullSecrets` (gaining exactly our secret).
fn same_but_rewritten(name: &str, rules: &Rules, path: &str, a: &Value, b: &Value) {
    match (a, b) {
        (Value::Mapping(ma), Value::Mapping(mb)) => {
            for (k, vb) in mb {
                let key = k.as_str().unwrap_or("?");
                let p = format!("{path}.{key}");
                match ma.get(k) {
                    Some(va) if key == "image" && va != vb => {
                        let (ia, ib) = (va.as_str().unwrap_or(""), vb.as_str().unwrap_or(""));
                        let want = rewrite_image(rules, ia)
                            .unwrap_or_else(|| panic!("{name} {p}: {ia} changed"));
                        let ok = ib == want
                            || (name.starts_with("pin-")
                                && ib
                                    .strip_prefix(want.as_str())
                                    .is_some_and(|d| d.starts_with("@sha256:")));
                        assert!(ok, "{name} {p}: {ia} became {ib}, expected {want}");
                    }
                    Some(va) if key == "imagePullSecrets" && va != vb => {
                        let mut before = va.as_sequence().cloned().unwrap_or_default();
                        let after = vb.as_sequence().cloned().unwrap_or_default();
                        before.push(
                            serde_yaml_ng::from_str(&format!("{{name: {SECRET}}}")).expect("item"),
                        );
                        let (mut x, mut y): (Vec<String>, Vec<String>) = (
                            before.iter().map(|v| format!("{v:?}")).collect(),
                            after.iter().map(|v| format!("{v:?}")).collect(),
                        );
                        x.sort();
                        y.sort();
                        assert_eq!(x, y, "{name} {p}");
                    }
                    Some(va) => same_but_rewritten(name, rules, &p, va, vb),
                    None if key == "imagePullSecrets" => {
                        assert_eq!(
                            vb,
                            &serde_yaml_ng::from_str::<Value>(&format!("[{{name: {SECRET}}}]"))
                                .expect("list"),
                            "{name} {p}"
                        );
                    }
                    None => panic!("{name} {p}: key added"),
                }
            }
            assert!(
                ma.keys().all(|k| mb.contains_key(k)),
                "{name} {path}: key removed"
            );
        }
        (Value::Sequence(sa), Value::Sequence(sb)) => {
            assert_eq!(sa.len(), sb.len(), "{name} {path}: length changed");
            for (i, (x, y)) in sa.iter().zip(sb).enumerate() {
                same_but_rewritten(name, rules, &format!("{path}[{i}]"), x, y);
            }
        }
        (Value::Tagged(ta), Value::Tagged(tb)) => {
            assert_eq!(ta.tag, tb.tag, "{name} {path}");
            same_but_rewritten(name, rules, path, &ta.value, &tb.value);
        }
        _ => assert_eq!(a, b, "{name} {path}"),
    }
}

#[test]
fn golden_outputs_parse_to_the_input_structure() {
    let mut rewritten_images = 0;
    for (name, path) in cases() {
        let input = std::fs::read_to_string(&path).expect("read input");
        let out = run(&name, &input);
        let (da, db) = (docs(&input), docs(&out));
        assert_eq!(da.len(), db.len(), "{name}: document count");
        for (a, b) in da.iter().zip(&db) {
            same_but_rewritten(&name, &rules_for(&name), "", a, b);
        }
        rewritten_images +=
            out.matches("/proxy/acme/").count() + out.matches("vendor-mirror/").count();
    }
    assert!(
        rewritten_images > 20,
        "golden files rewrite too little: {rewritten_images}"
    );
}

/// A JSON input stays JSON: what is added is written with quoted keys and strings.
#[test]
fn json_inputs_stay_json() {
    let mut seen = 0;
    for (name, path) in cases() {
        if !name.starts_with("json-") {
            continue;
        }
        seen += 1;
        let input = std::fs::read_to_string(&path).expect("read input");
        let out = run(&name, &input);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{name}: output is not JSON ({e}):\n{out}"));
        assert!(
            out.contains("\"imagePullSecrets\": [{\"name\": \"berth-pull\"}]"),
            "{out}"
        );
        assert!(
            v.to_string().contains("/proxy/acme/"),
            "{name}: nothing rewritten"
        );
    }
    assert!(seen > 0, "no json- golden case");
}

/// The inputs are what libyaml (serde_yaml_ng's parser, the C library go-yaml and so
/// `kubectl` follow) accepts; the ones made for its leniencies must not need them in vain.
#[test]
fn golden_inputs_are_valid_for_libyaml() {
    for (name, path) in cases() {
        let input = std::fs::read_to_string(&path).expect("read input");
        for d in serde_yaml_ng::Deserializer::from_str(&input) {
            if let Err(e) = <Value as serde::Deserialize>::deserialize(d) {
                panic!("{name}: libyaml refuses the input: {e}");
            }
        }
    }
}
