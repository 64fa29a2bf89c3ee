//! Property-style tests of `rewrite_yaml` over generated manifests (seeded, no extra crates): idempotence, byte-identity without matches, valid output; plus error cases.

use berth::rewrite::{rewrite_yaml, ImageRef, RewriteError, Rules};

fn rules() -> Rules {
    Rules {
        hostname: "images.acme.test".into(),
        app: "acme".into(),
        upstream_hosts: vec![
            "quay.io".into(),
            "docker.io".into(),
            "registry.example.com:5000".into(),
        ],
        pull_secret: Some("berth-pull".into()),
        all: false,
        registry: None,
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, good enough to shuffle manifest shapes.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

const OURS: &[&str] = &[
    "quay.io/acme/api:1.2",
    "redis",
    "library/redis:7",
    "docker.io/bitnami/redis:7.2",
    "registry.example.com:5000/team/app:1",
    "quay.io/acme/api@sha256:4a5b8e5e3f3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e",
    "images.acme.test/proxy/acme/quay.io/acme/x:1",
];
const FOREIGN: &[&str] = &[
    "ghcr.io/other/tool:1",
    "registry.k8s.io/pause:3.9",
    "gcr.io/distroless/static:nonroot",
    "registry.example.com:6000/team/app:1",
    "Not/A Valid:Ref",
];

/// One generated document and whether it references any of our images.
fn document(rng: &mut Rng, foreign_only: bool) -> String {
    let ind = *rng.pick(&[2usize, 4]);
    let dash = *rng.pick(&[0usize, 2]);
    let pad = |n: usize| " ".repeat(n * ind);
    let (kind, prefix): (&str, &[&str]) = *rng.pick(&[
        ("Pod", &["spec"][..]),
        ("Deployment", &["spec", "template", "spec"][..]),
        ("StatefulSet", &["spec", "template", "spec"][..]),
        ("Job", &["spec", "template", "spec"][..]),
        (
            "CronJob",
            &["spec", "jobTemplate", "spec", "template", "spec"][..],
        ),
        ("ConfigMap", &["data"][..]),
    ]);
    let mut out = String::new();
    if rng.chance(50) {
        out.push_str("# Source: chart/templates/thing.yaml\n");
    }
    out.push_str(&format!(
        "apiVersion: v1\nkind: {kind}\nmetadata:\n{}name: x-é\n",
        pad(1)
    ));
    for (depth, key) in prefix.iter().enumerate() {
        out.push_str(&format!("{}{key}:\n", pad(depth)));
        if rng.chance(15) {
            out.push_str(&format!("{}# a comment about {key}\n", pad(depth + 1)));
        }
    }
    let d = prefix.len();
    let p = pad(d);
    match rng.next() % 5 {
        0 => out.push_str(&format!(
            "{p}imagePullSecrets:\n{p}{}- name: legacy\n",
            " ".repeat(dash)
        )),
        1 => out.push_str(&format!("{p}imagePullSecrets: [{{name: berth-pull}}]\n")),
        2 => out.push_str(&format!("{p}imagePullSecrets: []\n")),
        _ => {}
    }
    out.push_str(&format!("{p}restartPolicy: Never\n"));
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        if list != "containers" && rng.chance(60) {
            continue;
        }
        out.push_str(&format!("{p}{list}:\n"));
        for i in 0..=(rng.next() % 3) {
            let image = if foreign_only || rng.chance(30) {
                *rng.pick(FOREIGN)
            } else {
                *rng.pick(OURS)
            };
            let quoted = match rng.next() % 3 {
                0 => format!("\"{image}\""),
                1 => format!("'{image}'"),
                _ if image.contains(' ') => format!("'{image}'"),
                _ => image.to_string(),
            };
            let comment = if rng.chance(20) { "  # why not" } else { "" };
            let dp = format!("{p}{}", " ".repeat(dash));
            if rng.chance(15) {
                out.push_str(&format!("{dp}- {{name: c{i}, image: {quoted}}}{comment}\n"));
            } else {
                out.push_str(&format!(
                    "{dp}- name: c{i}\n{dp}  image: {quoted}{comment}\n"
                ));
            }
        }
    }
    out
}

fn stream(rng: &mut Rng, foreign_only: bool) -> String {
    let n = 1 + rng.next() % 3;
    let mut s = String::new();
    for i in 0..n {
        if i > 0 || rng.chance(50) {
            s.push_str("---\n");
        }
        s.push_str(&document(rng, foreign_only));
    }
    if rng.chance(20) {
        s = s.replace('\n', "\r\n");
    }
    s
}

/// How many documents `text` holds, or the first error. (serde_yaml_ng's document
/// iterator repeats a syntax error forever, so it must not simply be counted.)
fn yaml_docs(text: &str) -> Result<usize, String> {
    let mut n = 0;
    for d in serde_yaml_ng::Deserializer::from_str(text) {
        let v: Result<serde_yaml_ng::Value, _> = serde::Deserialize::deserialize(d);
        v.map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

#[test]
fn rewriting_is_idempotent_and_keeps_valid_yaml() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let r = rules();
    for case in 0..400 {
        let input = stream(&mut rng, false);
        let once =
            rewrite_yaml(&r, &input, None).unwrap_or_else(|e| panic!("case {case}: {e}\n{input}"));
        let twice =
            rewrite_yaml(&r, &once, None).unwrap_or_else(|e| panic!("case {case}: {e}\n{once}"));
        assert_eq!(once, twice, "case {case} not idempotent; input:\n{input}");
        let docs = yaml_docs(&once)
            .unwrap_or_else(|e| panic!("case {case}: output is not YAML: {e}\n{once}"));
        assert_eq!(Ok(docs), yaml_docs(&input), "case {case}: document count");
        if !input.contains("kind: ConfigMap") {
            assert!(
                !once.contains("image: quay.io/"),
                "case {case}: left an upstream image\n{once}"
            );
        }
        if once.contains("\r\n") {
            assert!(
                !once.replace("\r\n", "").contains('\n'),
                "case {case}: mixed newlines"
            );
        }
    }
}

#[test]
fn documents_without_our_images_are_byte_identical() {
    let mut rng = Rng(0x0dd_ba11);
    let r = rules();
    for case in 0..300 {
        let input = stream(&mut rng, true);
        let out = rewrite_yaml(&r, &input, None).unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert_eq!(out, input, "case {case}");
    }
}

#[test]
fn malformed_yaml_reports_line_and_column() {
    let input = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - image: \"quay.io/acme/a:1\n";
    match rewrite_yaml(&rules(), input, None) {
        Err(RewriteError::Yaml { line, column, .. }) => {
            assert!(line >= 5 && column >= 1, "line {line} column {column}");
        }
        other => panic!("expected a YAML error, got {other:?}"),
    }
    let input = "kind: Pod\nspec: {containers: [\n";
    assert!(matches!(
        rewrite_yaml(&rules(), input, None),
        Err(RewriteError::Yaml { .. })
    ));
    let input = "a: b\n c: d\n  - e\n";
    let err = rewrite_yaml(&rules(), input, None).err();
    assert!(
        matches!(err, Some(RewriteError::Yaml { line: 2.., .. })),
        "{err:?}"
    );
}

#[test]
fn pin_failure_produces_no_output() {
    let input = "kind: Pod\nspec:\n  containers:\n  - image: quay.io/acme/a:1\n";
    let fail = |_: &ImageRef| -> Result<String, String> { Err("manifest unknown".into()) };
    let err = rewrite_yaml(&rules(), input, Some(&fail));
    assert!(
        matches!(&err, Err(RewriteError::Pin { line: 4, .. })),
        "{err:?}"
    );
    let junk = |_: &ImageRef| -> Result<String, String> { Ok("sha256:nothex".into()) };
    assert!(matches!(
        rewrite_yaml(&rules(), input, Some(&junk)),
        Err(RewriteError::Pin { .. })
    ));
    let seen = std::cell::RefCell::new(Vec::new());
    let ok = |r: &ImageRef| -> Result<String, String> {
        seen.borrow_mut().push(r.to_string());
        Ok(format!("sha256:{}", "b".repeat(64)))
    };
    let out = rewrite_yaml(&rules(), input, Some(&ok)).unwrap_or_default();
    assert!(
        out.contains(&format!(
            "image: images.acme.test/proxy/acme/quay.io/acme/a:1@sha256:{}",
            "b".repeat(64)
        )),
        "{out}"
    );
    assert_eq!(seen.borrow().as_slice(), ["quay.io/acme/a:1"]);
}

#[test]
fn non_ascii_before_an_image_keeps_offsets_right() {
    let input = "# café ☕ ünïcode\nkind: Pod\nmetadata: {name: \"ß\"}\nspec:\n  containers:\n  - name: ☃\n    image: redis # ☃\n";
    let out = rewrite_yaml(&rules(), input, None).unwrap_or_default();
    assert_eq!(
        out,
        "# café ☕ ünïcode\nkind: Pod\nmetadata: {name: \"ß\"}\nspec:\n  imagePullSecrets:\n  - name: berth-pull\n  containers:\n  - name: ☃\n    image: images.acme.test/proxy/acme/docker.io/library/redis # ☃\n"
    );
}

#[test]
fn trailing_comma_in_a_flow_mapping_keeps_the_output_valid() {
    let input = "kind: Pod\nspec:\n  imagePullSecrets: [{name: x,}]\n  containers: [{name: a, image: redis}]\n";
    let out = rewrite_yaml(&rules(), input, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out,
        "kind: Pod\nspec:\n  imagePullSecrets: [{name: x,}, {name: berth-pull}]\n  containers: [{name: a, image: images.acme.test/proxy/acme/docker.io/library/redis}]\n"
    );
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(
        v["spec"]["imagePullSecrets"][1]["name"].as_str(),
        Some("berth-pull")
    );
}

#[test]
fn merge_keys_are_followed_to_the_anchor() {
    let input = "base: &base\n  containers:\n  - name: a\n    image: redis\nkind: Deployment\nspec:\n  template:\n    spec:\n      <<: *base\n";
    let out = rewrite_yaml(&rules(), input, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out,
        "base: &base\n  containers:\n  - name: a\n    image: images.acme.test/proxy/acme/docker.io/library/redis\nkind: Deployment\nspec:\n  template:\n    spec:\n      imagePullSecrets:\n      - name: berth-pull\n      <<: *base\n"
    );
    // A container merged from defaults, its own keys winning over the merged ones.
    let input = "kind: Pod\nx: &d {image: redis, imagePullPolicy: Always}\nspec:\n  containers:\n  - <<: *d\n    name: a\n  - <<: *d\n    name: b\n    image: ghcr.io/other/b:1\n";
    let out = rewrite_yaml(&rules(), input, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.contains("x: &d {image: images.acme.test/proxy/acme/docker.io/library/redis, ")
            && out.contains("image: ghcr.io/other/b:1")
            && out.contains("- name: berth-pull"),
        "{out}"
    );
}

#[test]
fn duplicate_keys_are_refused_naming_the_line() {
    let input =
        "kind: Pod\nspec:\n  containers:\n  - name: a\n    image: ghcr.io/x/y\n    image: redis\n";
    match rewrite_yaml(&rules(), input, None) {
        Err(RewriteError::Unsupported {
            line: 6, reason, ..
        }) => {
            assert!(
                reason.contains("duplicate key \"image\"") && reason.contains("line 5"),
                "{reason}"
            )
        }
        other => panic!("expected a refusal naming line 6, got {other:?}"),
    }
    let input = "kind: Pod\nspec:\n  containers: []\nspec:\n  containers: [{image: redis}]\n";
    assert!(
        matches!(
            rewrite_yaml(&rules(), input, None),
            Err(RewriteError::Unsupported { line: 4, .. })
        ),
        "a second `spec:` must be refused too"
    );
}

#[test]
fn recursive_and_cross_document_aliases_are_errors() {
    for input in [
        "kind: Pod\nspec: &s {containers: [*s]}\n",
        "x: &i redis\n---\nkind: Pod\nspec: {containers: [{image: *i}]}\n",
    ] {
        let r = rewrite_yaml(&rules(), input, None);
        assert!(r.is_err(), "{input:?}: {r:?}");
    }
}

/// libyaml (and so `kubectl`) reads continuation lines of quoted scalars and lines of flow
/// collections at any indentation; so does the rewriter, keeping them byte for byte.
#[test]
fn quoted_and_flow_continuations_are_read_as_libyaml_reads_them() {
    let spec = "spec:\n  containers:\n  - name: a\n    image: quay.io/acme/a:1\n";
    let heads = [
        // The e2e redis StatefulSet's shape: lines left of the key.
        "metadata:\n  annotations:\n    description: 'a long\n  single-quoted scalar\nover lines'\n",
        "metadata:\n  annotations:\n    d: \"double\n  quoted \\\n continued\"\n",
        // A tab where indentation would be.
        "metadata:\n  annotations:\n    d: 'x\n\ttab'\n",
        "metadata:\n  annotations:\n    d: [a,\n  b, {c: d,\ne: f}]\n",
    ];
    for head in heads {
        let input = format!("kind: Pod\n{head}{spec}");
        let libyaml: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&input).unwrap_or_else(|e| panic!("libyaml: {e}\n{input}"));
        let out = rewrite_yaml(&rules(), &input, None).unwrap_or_else(|e| panic!("{e}\n{input}"));
        assert!(out.starts_with(&format!("kind: Pod\n{head}")), "{out}");
        assert!(
            out.contains("image: images.acme.test/proxy/acme/quay.io/acme/a:1"),
            "{out}"
        );
        let after: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).expect("valid output");
        assert_eq!(after["metadata"], libyaml["metadata"], "{input}");
        // Without our images: byte-identical.
        let foreign = input.replace("quay.io/acme/a:1", "ghcr.io/x/y:1");
        assert_eq!(
            rewrite_yaml(&rules(), &foreign, None).as_deref(),
            Ok(foreign.as_str())
        );
    }
}

/// Errors point at the line at fault, not at where the scalar around it starts.
#[test]
fn errors_inside_quoted_scalars_name_the_offending_line() {
    let input = "kind: Pod\nmetadata:\n  annotations:\n    d: 'opened here\n      and continued\n---\nkind: Pod\n";
    match rewrite_yaml(&rules(), input, None) {
        Err(RewriteError::Yaml { line, message, .. }) => {
            assert_eq!(line, 6, "{message}");
            assert!(message.contains("opened at line 4"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let input = "kind: Pod\nspec:\n  containers:\n  - image: 'quay.io/acme/a:1\n";
    match rewrite_yaml(&rules(), input, None) {
        Err(RewriteError::Yaml { line, message, .. }) => {
            assert_eq!(line, 4, "{message}");
            assert!(message.contains("never closed"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A flow collection left open: still an error, with a position after the repairs.
    let input = "kind: Pod\nmetadata:\n  annotations:\n    d: [a,\n  b\nspec: {}\n";
    assert!(matches!(
        rewrite_yaml(&rules(), input, None),
        Err(RewriteError::Yaml { line: 4.., .. })
    ));
}

/// A block-scalar image is rewritten in its one content line, every header kept.
#[test]
fn block_scalar_images_are_rewritten_in_place() {
    for header in [
        "|", ">", "|-", ">-", "|+", ">+", "|2", ">2-", "|-2", "&i >-", "!!str |",
    ] {
        let input = format!(
            "kind: Pod\nspec:\n  containers:\n  - name: a\n    image: {header}\n      quay.io/acme/a:1\n  - name: b\n    image: x\n"
        );
        let before: serde_yaml_ng::Value = serde_yaml_ng::from_str(&input).expect("libyaml");
        let out = rewrite_yaml(&rules(), &input, None).unwrap_or_else(|e| panic!("{header}: {e}"));
        let after: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).expect("valid output");
        let (b, a) = (
            before["spec"]["containers"][0]["image"].as_str().unwrap(),
            after["spec"]["containers"][0]["image"].as_str().unwrap(),
        );
        // The same value, the reference replaced: chomping (a kept newline) unchanged.
        assert_eq!(
            a,
            b.replace(
                "quay.io/acme/a:1",
                "images.acme.test/proxy/acme/quay.io/acme/a:1"
            ),
            "{header}:\n{out}"
        );
        assert!(out.contains(&format!("image: {header}\n")), "{out}");
        assert_eq!(
            rewrite_yaml(&rules(), &out, None).as_deref(),
            Ok(out.as_str())
        );
    }
    // Two lines are no reference (whatever the folding): not berth's, left as written.
    let two = "kind: Pod\nspec:\n  containers:\n  - image: >\n      quay.io/acme/a:1\n      more\n";
    assert_eq!(rewrite_yaml(&rules(), two, None).as_deref(), Ok(two));
}

/// Repairs are bounded: a hostile file of thousands of under-indented flow lines ends with
/// an error (or is read), quickly, never in a loop.
#[test]
fn indentation_repairs_are_bounded() {
    let mut input = String::from("kind: Pod\nmetadata:\n  annotations:\n    a: [\n");
    for i in 0..3000 {
        input.push_str(&format!(" x{i},\n"));
    }
    input.push_str(" y]\nspec:\n  containers:\n  - image: quay.io/acme/a:1\n");
    let start = std::time::Instant::now();
    let out = rewrite_yaml(&rules(), &input, None);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(out, Err(RewriteError::Yaml { .. })), "{out:?}");
    // A few hundred such lines are read as libyaml reads them.
    let short: String = input
        .lines()
        .take(300)
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + " y]\nspec:\n  containers:\n  - image: quay.io/acme/a:1\n";
    let out = rewrite_yaml(&rules(), &short, None).expect("read");
    assert!(out.contains("image: images.acme.test/proxy/acme/quay.io/acme/a:1"));
}
