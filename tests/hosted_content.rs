//! Content discovery and management on the hosted registry over raw HTTP, as the OCI
//! distribution spec v1.1 words it: deleting manifests (by digest and by tag) and blobs,
//! the `delete` action of API keys, references that are not valid, the referrers API with
//! its artifactType filter, `/v2/_catalog` with paging and per-credential visibility, and
//! what one app's credentials cannot do to another app's content.

#[path = "support/hosted.rs"]
mod hosted;
#[path = "support/http.rs"]
mod http;
mod support;

use hosted::{digest_of, fixture, Fx, Pushed, INDEX, MANIFEST};
use http::Resp;

const SIG: &str = "application/vnd.example.sig.v1";
const SBOM: &str = "application/vnd.example.sbom.v1";

fn tags(fx: &Fx, repo: &str, secret: &str) -> Vec<String> {
    let r = fx.req("GET", &format!("/v2/{repo}/tags/list"), secret, &[], b"");
    assert_eq!(r.status, 200, "tags of {repo}: {}", r.text());
    let v = r.json();
    v["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("no tags array in {v}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn referrers(fx: &Fx, repo: &str, digest: &str, secret: &str, filter: Option<&str>) -> Resp {
    let q = filter
        .map(|f| format!("?artifactType={f}"))
        .unwrap_or_default();
    fx.req(
        "GET",
        &format!("/v2/{repo}/referrers/{digest}{q}"),
        secret,
        &[],
        b"",
    )
}

/// The `manifests` of a referrers answer, after checking it is a 200 image index.
fn referrer_list(r: &Resp) -> Vec<serde_json::Value> {
    assert_eq!(r.status, 200, "referrers: {}", r.text());
    assert_eq!(r.header("content-type"), Some(INDEX));
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2, "{v}");
    assert_eq!(v["mediaType"], INDEX, "{v}");
    v["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("referrers without a manifests array: {v}"))
        .clone()
}

fn assert_missing_manifest(fx: &Fx, repo: &str, reference: &str, secret: &str) {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let r = fx.req("GET", &path, secret, &[("Accept", MANIFEST)], b"");
    assert_eq!(r.status, 404, "GET {path}: {}", r.text());
    assert_eq!(r.code(), "MANIFEST_UNKNOWN", "GET {path}");
    let r = fx.req("HEAD", &path, secret, &[("Accept", MANIFEST)], b"");
    assert_eq!(r.status, 404, "HEAD {path}");
}

fn assert_manifest(fx: &Fx, repo: &str, reference: &str, secret: &str, want: &Pushed) {
    let r = fx.req(
        "GET",
        &format!("/v2/{repo}/manifests/{reference}"),
        secret,
        &[("Accept", MANIFEST)],
        b"",
    );
    assert_eq!(r.status, 200, "{repo}:{reference}: {}", r.text());
    assert!(r.body == want.bytes, "{repo}:{reference} has other bytes");
}

#[test]
fn deleting_a_manifest_by_digest_removes_it_its_tags_and_its_referrer_entry() {
    let fx = fixture();
    let key = fx.key("acme", &["push", "pull", "delete"]);
    let repo = "acme/del/manifest";
    let image = fx.push_image(repo, &["v1", "v1-alias"], &key, 1);
    let keep = fx.push_image(repo, &["keep"], &key, 2);
    let (sig, _, r) = fx.push_artifact(repo, &key, SIG, &image, b"signature one");
    assert_eq!(r.status, 201, "{}", r.text());
    let listed = referrer_list(&referrers(&fx, repo, &image.digest, &key, None));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["digest"], sig.as_str());

    // The referrer goes first: the image's referrers no longer list it.
    let r = fx.req(
        "DELETE",
        &format!("/v2/{repo}/manifests/{sig}"),
        &key,
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "DELETE the artifact: {}", r.text());
    assert_missing_manifest(&fx, repo, &sig, &key);
    let listed = referrer_list(&referrers(&fx, repo, &image.digest, &key, None));
    assert!(
        listed.is_empty(),
        "a deleted referrer is still listed: {listed:?}"
    );

    // Then the image: gone by digest, and both tags that pointed at it with it.
    let r = fx.req(
        "DELETE",
        &format!("/v2/{repo}/manifests/{}", image.digest),
        &key,
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "DELETE the image: {}", r.text());
    assert_missing_manifest(&fx, repo, &image.digest, &key);
    assert_missing_manifest(&fx, repo, "v1", &key);
    assert_missing_manifest(&fx, repo, "v1-alias", &key);
    assert_eq!(tags(&fx, repo, &key), ["keep"]);
    // The other manifest of the repository is untouched.
    assert_manifest(&fx, repo, "keep", &key, &keep);
    assert_manifest(&fx, repo, &keep.digest, &key, &keep);

    // Deleting what is not there (any more) is a 404.
    let r = fx.req(
        "DELETE",
        &format!("/v2/{repo}/manifests/{}", image.digest),
        &key,
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "DELETE a deleted manifest: {}", r.text());
}

#[test]
fn deleting_a_tag_removes_only_the_tag() {
    let fx = fixture();
    let key = fx.key("acme", &["push", "pull", "delete"]);
    let repo = "acme/del/tag";
    let image = fx.push_image(repo, &["a", "b"], &key, 3);
    assert_eq!(tags(&fx, repo, &key), ["a", "b"]);

    let r = fx.req("DELETE", &format!("/v2/{repo}/manifests/a"), &key, &[], b"");
    assert_eq!(r.status, 202, "DELETE a tag: {}", r.text());
    assert_missing_manifest(&fx, repo, "a", &key);
    assert_eq!(tags(&fx, repo, &key), ["b"]);
    assert_manifest(&fx, repo, &image.digest, &key, &image);
    assert_manifest(&fx, repo, "b", &key, &image);
    // Its blobs stay too: only a name went.
    let r = fx.req(
        "GET",
        &format!("/v2/{repo}/blobs/{}", image.layer),
        &key,
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn deleting_a_blob_and_deleting_an_unknown_one() {
    let fx = fixture();
    let key = fx.key("acme", &["push", "pull", "delete"]);
    let repo = "acme/del/blob";
    let data = hosted::pseudo_random(5, 50_000);
    let digest = fx.push_blob(repo, &key, &data);
    let path = format!("/v2/{repo}/blobs/{digest}");
    let r = fx.req("GET", &path, &key, &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body == data);

    let r = fx.req("DELETE", &path, &key, &[], b"");
    assert_eq!(r.status, 202, "DELETE a blob: {}", r.text());
    let r = fx.req("GET", &path, &key, &[], b"");
    assert_eq!(r.status, 404, "GET a deleted blob: {}", r.text());
    assert_eq!(r.code(), "BLOB_UNKNOWN");
    let r = fx.req("HEAD", &path, &key, &[], b"");
    assert_eq!(r.status, 404, "HEAD a deleted blob");

    // Again, and a digest never pushed: 404 BLOB_UNKNOWN.
    for d in [digest.clone(), digest_of(b"never pushed")] {
        let r = fx.req("DELETE", &format!("/v2/{repo}/blobs/{d}"), &key, &[], b"");
        assert_eq!(r.status, 404, "DELETE an unknown blob {d}: {}", r.text());
        assert_eq!(r.code(), "BLOB_UNKNOWN");
    }
    // And an unknown manifest digest.
    let r = fx.req(
        "DELETE",
        &format!("/v2/{repo}/manifests/{}", digest_of(b"no manifest")),
        &key,
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "DELETE an unknown manifest: {}", r.text());
}

#[test]
fn without_the_delete_action_deletes_are_denied_and_the_content_stays() {
    let fx = fixture();
    let pusher = fx.key("acme", &["push", "pull"]);
    let license = fx.license("acme", &[]);
    let repo = "acme/del/denied";
    let image = fx.push_image(repo, &["v1"], &pusher, 6);
    for (who, secret) in [("a push,pull key", &pusher), ("a license", &license)] {
        for target in [
            format!("manifests/{}", image.digest),
            "manifests/v1".to_string(),
            format!("blobs/{}", image.layer),
        ] {
            let r = fx.req("DELETE", &format!("/v2/{repo}/{target}"), secret, &[], b"");
            assert_eq!(r.status, 403, "{who} DELETE {target}: {}", r.text());
            assert_eq!(r.code(), "DENIED", "{who} DELETE {target}");
        }
    }
    assert_manifest(&fx, repo, "v1", &pusher, &image);
    assert_manifest(&fx, repo, &image.digest, &pusher, &image);
    assert_eq!(tags(&fx, repo, &pusher), ["v1"]);
    let r = fx.req(
        "GET",
        &format!("/v2/{repo}/blobs/{}", image.layer),
        &license,
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(digest_of(&r.body), image.layer);
}

#[test]
fn a_reference_that_is_neither_tag_nor_digest_is_manifest_unknown() {
    let fx = fixture();
    let key = fx.key("acme", &["push", "pull"]);
    let license = fx.license("acme", &[]);
    let repo = "acme/refs";
    fx.push_image(repo, &["v1"], &key, 7);
    for secret in [&key, &license] {
        // The conformance suite's name; a tag may not begin with '.'.
        assert_missing_manifest(&fx, repo, ".INVALID_MANIFEST_NAME", secret);
        // A well-formed tag that was never pushed is the same answer.
        assert_missing_manifest(&fx, repo, "never-pushed", secret);
    }
}

#[test]
fn referrers_list_artifacts_by_subject_and_filter_by_artifact_type() {
    let fx = fixture();
    let key = fx.key("acme", &["push", "pull"]);
    let license = fx.license("acme", &[]);
    let repo = "acme/signed";
    let image = fx.push_image(repo, &["v1"], &key, 8);

    let (sig, sig_bytes, r) = fx.push_artifact(repo, &key, SIG, &image, b"a signature");
    assert_eq!(r.status, 201, "PUT the signature: {}", r.text());
    assert_eq!(r.header("oci-subject"), Some(image.digest.as_str()));
    assert_eq!(r.header("docker-content-digest"), Some(sig.as_str()));
    let (sbom, sbom_bytes, r) = fx.push_artifact(repo, &key, SBOM, &image, b"an sbom");
    assert_eq!(r.status, 201, "PUT the sbom: {}", r.text());
    assert_eq!(r.header("oci-subject"), Some(image.digest.as_str()));

    let want_sig = serde_json::json!({
        "mediaType": MANIFEST, "digest": sig, "size": sig_bytes.len(), "artifactType": SIG,
    });
    let want_sbom = serde_json::json!({
        "mediaType": MANIFEST, "digest": sbom, "size": sbom_bytes.len(), "artifactType": SBOM,
    });
    // The fields the spec names; a registry may add annotations.
    let trimmed = |list: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        let mut out: Vec<_> = list
            .into_iter()
            .map(|d| {
                serde_json::json!({
                    "mediaType": d["mediaType"], "digest": d["digest"],
                    "size": d["size"], "artifactType": d["artifactType"],
                })
            })
            .collect();
        out.sort_by_key(|d| d["digest"].as_str().unwrap_or_default().to_string());
        out
    };
    let mut both = vec![want_sig.clone(), want_sbom.clone()];
    both.sort_by_key(|d| d["digest"].as_str().unwrap().to_string());

    for secret in [&key, &license] {
        let r = referrers(&fx, repo, &image.digest, secret, None);
        assert_eq!(trimmed(referrer_list(&r)), both);
        assert_eq!(
            r.header("oci-filters-applied"),
            None,
            "no filter was asked for"
        );

        let r = referrers(&fx, repo, &image.digest, secret, Some(SIG));
        assert_eq!(trimmed(referrer_list(&r)), vec![want_sig.clone()]);
        assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));

        let r = referrers(
            &fx,
            repo,
            &image.digest,
            secret,
            Some("application/vnd.example.none"),
        );
        assert!(referrer_list(&r).is_empty(), "{}", r.text());
        assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));

        // Nothing refers to the signature, nor to a digest nobody pushed: empty, not 404.
        for d in [sig.clone(), digest_of(b"nothing refers to this")] {
            let r = referrers(&fx, repo, &d, secret, None);
            assert!(
                referrer_list(&r).is_empty(),
                "referrers of {d}: {}",
                r.text()
            );
        }
    }
}

/// The `repositories` of one catalog page and its `Link` header.
fn catalog(fx: &Fx, path: &str, secret: &str) -> (Vec<String>, Option<String>) {
    let r = fx.req("GET", path, secret, &[], b"");
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    let v = r.json();
    let names = v["repositories"]
        .as_array()
        .unwrap_or_else(|| panic!("no repositories array in {v}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    (names, r.header("link").map(str::to_string))
}

/// `</v2/_catalog?n=2&last=…>; rel="next"` → (the target, its decoded `n` and `last`).
fn next_link(link: &str) -> (String, String, String) {
    let (target, rel) = link
        .split_once(';')
        .unwrap_or_else(|| panic!("Link without a rel: {link}"));
    assert_eq!(rel.trim(), "rel=\"next\"", "{link}");
    let target = target
        .trim()
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or_else(|| panic!("Link target not in <>: {link}"))
        .to_string();
    let (path, query) = target.split_once('?').expect("a query in the Link");
    assert_eq!(path, "/v2/_catalog", "{link}");
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(|v| v.replace("%2F", "/").replace("%2f", "/"))
            .unwrap_or_else(|| panic!("no {name} in {link}"))
    };
    let (n, last) = (param("n"), param("last"));
    (target, n, last)
}

#[test]
fn the_catalog_is_sorted_paged_and_shows_each_credential_only_its_own() {
    let fx = fixture();
    let acme = fx.key("acme", &["push", "pull"]);
    let beta = fx.key("beta", &["push", "pull"]);
    let all = ["acme/alpha", "acme/team/beta", "acme/zeta"];
    // Pushed out of order: the listing sorts.
    for (i, repo) in ["acme/zeta", "acme/alpha", "acme/team/beta"]
        .iter()
        .enumerate()
    {
        fx.push_image(repo, &["v1"], &acme, 20 + i as u64);
    }
    fx.push_image("beta/only", &["v1"], &beta, 30);

    let (names, _) = catalog(&fx, "/v2/_catalog", &acme);
    assert_eq!(names, all);

    let (page, link) = catalog(&fx, "/v2/_catalog?n=2", &acme);
    assert_eq!(page, all[..2]);
    let link = link.expect("a first page of 2 of 3 has a Link to the next");
    let (target, n, last) = next_link(&link);
    assert_eq!(
        (n.as_str(), last.as_str()),
        ("2", "acme/team/beta"),
        "{link}"
    );
    let (rest, link) = catalog(&fx, &target, &acme);
    assert_eq!(rest, all[2..]);
    assert_eq!(link, None, "the last page links nowhere");
    // `last` by hand, as the spec words it.
    let (rest, _) = catalog(&fx, "/v2/_catalog?n=2&last=acme/alpha", &acme);
    assert_eq!(rest, all[1..]);

    // Another app's key sees its own and nothing of acme's.
    let (names, _) = catalog(&fx, "/v2/_catalog", &beta);
    assert_eq!(names, ["beta/only"]);

    // A license lists what its image globs allow of its app's hosted repositories.
    let narrow = fx.license("acme", &["acme/team/*"]);
    let (names, _) = catalog(&fx, "/v2/_catalog", &narrow);
    assert_eq!(names, ["acme/team/beta"]);
    let whole = fx.license("acme", &[]);
    let (names, _) = catalog(&fx, "/v2/_catalog", &whole);
    assert_eq!(names, all);
    let beta_license = fx.license("beta", &[]);
    let (names, _) = catalog(&fx, "/v2/_catalog", &beta_license);
    assert_eq!(names, ["beta/only"]);

    let r = http::get(fx.berth.port, "/v2/_catalog", &[]);
    assert_eq!(r.status, 401, "anonymous catalog: {}", r.text());
    assert!(r.header("www-authenticate").is_some());
}

/// Acme's content with a referrer, and beta's credentials: (acme's key, beta's key, beta's
/// license, acme's image, its signature's digest). Both keys may delete in their own app.
fn two_apps(fx: &Fx, repo: &str) -> (String, String, String, Pushed, String) {
    let acme = fx.key("acme", &["push", "pull", "delete"]);
    let beta = fx.key("beta", &["push", "pull", "delete"]);
    let beta_license = fx.license("beta", &[]);
    let image = fx.push_image(repo, &["v1"], &acme, 40);
    let (sig, _, r) = fx.push_artifact(repo, &acme, SIG, &image, b"acme's signature");
    assert_eq!(r.status, 201, "{}", r.text());
    (acme, beta, beta_license, image, sig)
}

/// What tests/hosted.rs does not already check: another app's key cannot write a manifest
/// into an app, list its tags, or link its blob into its own app by a mount; another app's
/// license cannot read (GET or HEAD) its blob by digest.
#[test]
fn another_apps_credentials_cannot_write_list_read_or_mount_an_apps_content() {
    let fx = fixture();
    let repo = "acme/private";
    let (acme, beta, beta_license, image, _) = two_apps(&fx, repo);

    // Beta's key may push into beta, so the manifest is valid there; not into acme.
    let other = fx.push_image("beta/mine", &["v1"], &beta, 41);
    let r = fx.put_manifest(repo, "v1", &beta, &other.bytes);
    assert_eq!(
        r.status,
        403,
        "beta's key PUT a manifest into acme: {}",
        r.text()
    );
    assert_manifest(&fx, repo, "v1", &acme, &image);

    for secret in [&beta, &beta_license] {
        let r = fx.req("GET", &format!("/v2/{repo}/tags/list"), secret, &[], b"");
        assert_eq!(r.status, 403, "beta lists acme's tags: {}", r.text());
        assert!(!r.text().contains("v1"), "{}", r.text());
        // Blobs by digest, GET and HEAD: never the bytes, never a 200.
        for method in ["GET", "HEAD"] {
            let r = fx.req(
                method,
                &format!("/v2/{repo}/blobs/{}", image.layer),
                secret,
                &[],
                b"",
            );
            assert!(
                [401, 403, 404].contains(&r.status),
                "{method} of acme's blob by beta: {}",
                r.status
            );
            assert_ne!(
                digest_of(&r.body),
                image.layer,
                "{method} gave acme's layer"
            );
        }
    }

    // A mount from acme into beta is an upload (202), and the blob does not appear in beta.
    let r = fx.req(
        "POST",
        &format!(
            "/v2/beta/mine/blobs/uploads/?mount={}&from={repo}",
            image.config
        ),
        &beta,
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let r = fx.req(
        "HEAD",
        &format!("/v2/beta/mine/blobs/{}", image.config),
        &beta,
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "a refused mount linked the blob anyway");
}

/// The new content routes keep apps apart too: another app's key, even one allowed to
/// delete, deletes nothing of an app, and neither it nor that app's license lists the app's
/// referrers.
#[test]
fn another_apps_credentials_cannot_delete_or_list_referrers_of_an_apps_content() {
    let fx = fixture();
    let repo = "acme/private";
    let (acme, beta, beta_license, image, sig) = two_apps(&fx, repo);

    for target in [
        format!("manifests/{}", image.digest),
        format!("manifests/{sig}"),
        "manifests/v1".to_string(),
        format!("blobs/{}", image.layer),
    ] {
        let r = fx.req("DELETE", &format!("/v2/{repo}/{target}"), &beta, &[], b"");
        assert_eq!(r.status, 403, "beta's key DELETE {target}: {}", r.text());
        assert_eq!(r.code(), "DENIED");
    }
    assert_manifest(&fx, repo, "v1", &acme, &image);
    assert_eq!(tags(&fx, repo, &acme), ["v1"]);

    for secret in [&beta, &beta_license] {
        let r = referrers(&fx, repo, &image.digest, secret, None);
        assert!(
            [401, 403, 404].contains(&r.status),
            "beta lists acme's referrers ({}): {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains(&sig), "{}", r.text());
    }
    // Acme's own key still sees the signature: the refusals above were about beta.
    let listed = referrer_list(&referrers(&fx, repo, &image.digest, &acme, None));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["digest"], sig.as_str());
}
