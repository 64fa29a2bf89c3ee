//! Integration tests of the hosted registry's per-app policies with the real berth: the
//! storage quota (`apps[].hosted.quota`, each blob counted once per app), immutable tags
//! (`apps[].hosted.immutable_tags`), and the `delete` action of API keys. Blobs are random,
//! several MiB, made per test; pushed by raw HTTP (streamed from disk) and with skopeo.

#[path = "support/http.rs"]
mod http;
#[path = "support/push.rs"]
mod push;
mod support;

use std::time::Duration;

use push::{fresh_seed, Fx, Img, MIB};

fn upload(fx: &Fx, repo: &str, (digest, _): &(String, u64), img: &Img) -> http::Resp {
    fx.upload_file(repo, &fx.key, &img.blob_path(digest), digest)
}

fn assert_denied(r: &http::Resp, what: &str) -> String {
    assert_eq!(r.status, 403, "{what}: {}", r.text());
    assert_eq!(r.code(), "DENIED", "{what}: {}", r.text());
    r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

/// 10 MiB quota: 6 MiB pushes, another 6 MiB layer is refused naming quota and usage; the
/// refusal holds after the manifest's deletion (its blobs stay linked until gc) and lifts
/// after `berth gc`.
#[test]
fn a_push_past_the_quota_is_refused_until_gc_frees_room() {
    let fx = Fx::start(", hosted: { quota: 10MiB }", "");
    let first = Img::build("1", &[(fresh_seed(), 6 * MIB)]);
    fx.push_raw("one", &first, "1");
    let second = Img::build("2", &[(fresh_seed(), 6 * MIB)]);
    let r = upload(&fx, "two", &second.layers[0], &second);
    let msg = assert_denied(&r, "a 6 MiB layer on top of 6 MiB under a 10 MiB quota");
    assert!(msg.contains("quota"), "{msg}");
    assert!(
        msg.contains("10.0 MiB"),
        "the message names the quota: {msg}"
    );
    assert!(
        msg.contains("6.0 MiB"),
        "the message names the usage: {msg}"
    );
    let (status, _, _) = fx.get_blob("two", &second.layers[0].0);
    assert_eq!(status, 404, "a refused blob was kept");
    assert!(
        !fx.blob_file(&second.layers[0].0).exists(),
        "a refused blob is on disk"
    );

    let r = fx.req(
        "DELETE",
        &format!("/v2/acme/one/manifests/{}", first.manifest),
        &fx.key,
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let r = upload(&fx, "two", &second.layers[0], &second);
    assert_denied(&r, "before gc the deleted image's blobs still count");

    // `berth usage` shows what the app holds against its quota.
    let run = support::berth::run_cli(
        &["--config", fx.config(), "--json", "usage", "--app", "acme"],
        &[],
        None,
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(0), "berth usage: {}", run.stderr);
    let usage: serde_json::Value = serde_json::from_str(&run.stdout).expect("usage JSON");
    let hosted = &usage["hosted"][0];
    assert_eq!(hosted["app"], "acme", "{usage}");
    assert_eq!(hosted["quota_bytes"], 10 * MIB, "{usage}");
    assert!(hosted["used_bytes"].as_u64().unwrap() >= 6 * MIB, "{usage}");

    let report = fx.gc(&["--grace", "0s"]);
    assert_eq!(report["blobs_freed"], 2, "{report}");
    fx.push_raw("two", &second, "2");
    fx.pull_skopeo_ok("two", "2", &second);
}

/// A blob already in the app is counted once: mounting it into another repository, or pushing
/// its bytes again into another repository, adds nothing, so 3 MiB more still fit under 10
/// MiB next to 6 MiB.
#[test]
fn a_blob_already_in_the_app_does_not_count_twice() {
    let fx = Fx::start(", hosted: { quota: 10MiB }", "");
    let first = Img::build("1", &[(fresh_seed(), 6 * MIB)]);
    fx.push_raw("one", &first, "1");
    let layer = &first.layers[0];
    let r = fx.req(
        "POST",
        &format!(
            "/v2/acme/mounted/blobs/uploads/?mount={}&from=acme/one",
            layer.0
        ),
        &fx.key,
        &[],
        b"",
    );
    assert_eq!(r.status, 201, "mount within the app: {}", r.text());
    // Pushed again into the repository that has it.
    let r = upload(&fx, "one", layer, &first);
    assert_eq!(r.status, 201, "the same blob again into one: {}", r.text());
    let small = Img::build("3", &[(fresh_seed(), 3 * MIB)]);
    fx.push_raw("three", &small, "3");
    // Pushed again (uploaded, not mounted) into yet another repository: 6 + 3 MiB are stored,
    // the app holds no new byte.
    let r = upload(&fx, "again", layer, &first);
    assert_eq!(
        r.status,
        201,
        "the bytes of a blob the app already holds, uploaded into another repository: {}",
        r.text()
    );
}

/// `immutable_tags: ["v*"]`: v1 takes the same manifest again but no other, is not deleted,
/// nor is its manifest by digest; `latest` moves.
#[test]
fn immutable_tags_cannot_be_moved_or_deleted() {
    let fx = Fx::start(", hosted: { immutable_tags: [\"v*\"] }", "");
    let one = Img::build("v1", &[(fresh_seed(), 2 * MIB)]);
    let two = Img::build("v1", &[(fresh_seed(), 3 * MIB)]);
    fx.push_skopeo_ok("app", &one);
    fx.push_skopeo_ok("app", &one);
    for (d, _) in two.blobs() {
        let r = fx.upload_file("app", &fx.key, &two.blob_path(&d), &d);
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = fx.put_manifest("app", &one, "v1");
    assert_eq!(r.status, 201, "the same manifest to v1 again: {}", r.text());
    let r = fx.put_manifest("app", &two, "v1");
    let msg = assert_denied(&r, "another manifest to v1");
    assert!(msg.contains("immutable"), "{msg}");
    let out = fx.push_skopeo("app", &two);
    assert!(!out.status.success(), "skopeo moved v1");

    // latest is not covered: it moves.
    let r = fx.put_manifest("app", &one, "latest");
    assert_eq!(r.status, 201, "{}", r.text());
    let r = fx.put_manifest("app", &two, "latest");
    assert_eq!(r.status, 201, "moving latest: {}", r.text());
    fx.pull_raw("app", "latest", &two).unwrap();

    let r = fx.req("DELETE", "/v2/acme/app/manifests/v1", &fx.key, &[], b"");
    assert_denied(&r, "DELETE of tag v1");
    let r = fx.req(
        "DELETE",
        &format!("/v2/acme/app/manifests/{}", one.manifest),
        &fx.key,
        &[],
        b"",
    );
    assert_denied(&r, "DELETE of the manifest v1 points at");
    fx.pull_raw("app", "v1", &one).unwrap();
    fx.pull_skopeo_ok("app", "v1", &one);
    // The tag latest, not immutable, is deleted; the manifest it pointed at stays.
    let r = fx.req("DELETE", "/v2/acme/app/manifests/latest", &fx.key, &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    fx.pull_raw("app", &two.manifest, &two).unwrap();
}

/// Deleting needs the key's `delete` action: 403 without, 202 with.
#[test]
fn deleting_needs_the_delete_action() {
    let fx = Fx::start("", "");
    let img = Img::build("1", &[(fresh_seed(), 2 * MIB)]);
    fx.push_raw("app", &img, "1");
    let no_delete = fx.key_with("push,pull");
    let manifest = format!("/v2/acme/app/manifests/{}", img.manifest);
    let blob = format!("/v2/acme/app/blobs/{}", img.layers[0].0);
    for path in [&manifest, &blob, &"/v2/acme/app/manifests/1".to_string()] {
        let r = fx.req("DELETE", path, &no_delete, &[], b"");
        assert_eq!(r.status, 403, "DELETE {path} without delete: {}", r.text());
    }
    fx.pull_raw("app", "1", &img).unwrap();
    let r = fx.req("DELETE", &manifest, &fx.key, &[], b"");
    assert_eq!(r.status, 202, "DELETE with delete: {}", r.text());
    let r = fx.req("GET", &manifest, &fx.key, &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = fx.req("GET", "/v2/acme/app/manifests/1", &fx.key, &[], b"");
    assert_eq!(
        r.status,
        404,
        "the tag went with its manifest: {}",
        r.text()
    );
    let r = fx.req("DELETE", &blob, &fx.key, &[], b"");
    assert_eq!(r.status, 202, "DELETE of a blob with delete: {}", r.text());
    let (status, _, _) = fx.get_blob("app", &img.layers[0].0);
    assert_eq!(status, 404);
}
