//! Integration tests of hosted garbage collection (`berth gc`): the real berth serving, and
//! `berth gc` run as a separate process beside it on the same cache dir and state db (every
//! test here collects while `berth serve` runs); images of random blobs, several MiB, made
//! per test and pushed with the real skopeo or raw HTTP, pulled back with skopeo or hashed
//! as they stream. Blob bytes are checked on disk under `cache.dir/sha256/<hex>`.
//!
//! Not here: the online schedule (`hosted.gc.interval`): the config refuses intervals under
//! 1m, so a test of it would wait over a minute; the collection it runs is the same
//! `Hosted::collect` these tests drive through `berth gc`.

#[path = "support/http.rs"]
mod http;
#[path = "support/push.rs"]
mod push;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use push::{fresh_seed, Fx, Img, MIB};

fn manifests(report: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = report["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("no manifests in {report}"))
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn num(report: &serde_json::Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

/// `bytes_freed` is exactly `want`.
fn assert_bytes(report: &serde_json::Value, want: u64, msg: &str) {
    assert_eq!(
        report["bytes_freed"].as_u64(),
        Some(want),
        "{msg}: {report}"
    );
}

fn delete(fx: &Fx, repo: &str, reference: &str) {
    let r = fx.req(
        "DELETE",
        &format!("/v2/acme/{repo}/manifests/{reference}"),
        &fx.key,
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "DELETE {repo}:{reference}: {}", r.text());
}

/// Two repositories: in `one`, tag `a` is deleted (its manifest stays, untagged); in `two`,
/// manifest `c` is deleted by digest. Both share a layer with images that stay tagged. A dry
/// run says what would go and changes nothing; the real run frees exactly that.
#[test]
fn dry_run_reports_and_keeps_then_the_real_run_frees_exactly_that() {
    let fx = Fx::start("", "");
    let shared = (fresh_seed(), 3 * MIB);
    let a = Img::build("a", &[shared, (fresh_seed(), 2 * MIB)]);
    let b = Img::build("b", &[shared, (fresh_seed(), MIB + 17)]);
    let c = Img::build("c", &[shared, (fresh_seed(), 2 * MIB + 5)]);
    let d = Img::build("d", &[(fresh_seed(), MIB)]);
    fx.push_skopeo_ok("one", &a);
    fx.push_skopeo_ok("one", &b);
    fx.push_raw("two", &c, "c");
    fx.push_raw("two", &d, "d");
    // Blobs only `a` and only `c` use: the config and the unshared layer of each.
    let gone: Vec<(String, u64)> = vec![
        a.config.clone(),
        a.layers[1].clone(),
        c.config.clone(),
        c.layers[1].clone(),
    ];
    let want_bytes: u64 = gone.iter().map(|(_, s)| s).sum();
    delete(&fx, "one", "a");
    delete(&fx, "two", &c.manifest);

    let before = fx.stored_blobs();
    let dry = fx.gc(&["--dry-run", "--grace", "0s", "--delete-untagged"]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(
        manifests(&dry),
        [format!("acme/one@{}", a.manifest)],
        "{dry}"
    );
    // Five links: also the shared layer's in `two`, where nothing references it any more
    // (its bytes stay: `one`'s b uses them).
    assert_eq!(num(&dry, "blob_links"), 5, "{dry}");
    assert_eq!(num(&dry, "blobs_freed"), 4, "{dry}");
    assert_bytes(&dry, want_bytes, &dry.to_string());
    assert_eq!(fx.stored_blobs(), before, "a dry run deleted blob files");
    for (digest, size) in &gone {
        assert!(
            fx.blob_file(digest).is_file(),
            "{digest} left the disk in a dry run"
        );
        let repo = if a.blobs().iter().any(|(d, _)| d == digest) {
            "one"
        } else {
            "two"
        };
        assert!(
            fx.blob_pulls(repo, digest, *size),
            "{digest} no longer pulls from {repo} after a dry run"
        );
    }
    fx.pull_raw("one", &a.manifest, &a)
        .expect("the untagged manifest after a dry run");

    let real = fx.gc(&["--grace", "0s", "--delete-untagged"]);
    assert_eq!(real["dry_run"], false, "{real}");
    assert_eq!(manifests(&real), manifests(&dry), "{real}");
    assert_eq!(num(&real, "blob_links"), 5, "{real}");
    assert_eq!(num(&real, "blobs_freed"), 4, "{real}");
    assert_bytes(&real, want_bytes, &real.to_string());
    for (digest, _) in &gone {
        assert!(
            !fx.blob_file(digest).exists(),
            "{digest} still on disk after gc"
        );
    }
    let mut left: Vec<String> = before
        .iter()
        .filter(|d| !gone.iter().any(|(g, _)| g == *d))
        .cloned()
        .collect();
    left.sort();
    assert_eq!(
        fx.stored_blobs(),
        left,
        "gc deleted other blob files than those"
    );
    let r = fx.req(
        "GET",
        &format!("/v2/acme/one/manifests/{}", a.manifest),
        &fx.key,
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "the collected manifest: {}", r.text());
    fx.pull_skopeo_ok("one", "b", &b);
    fx.pull_skopeo_ok("two", "d", &d);
    // The shared layer, still used by b, stays (c's deletion took only c's own blobs).
    assert!(fx.blob_file(&shared_digest(&b)).is_file());

    let again = fx.gc(&["--grace", "0s", "--delete-untagged"]);
    assert_eq!(
        num(&again, "blobs_freed"),
        0,
        "a second run found more: {again}"
    );
    assert!(manifests(&again).is_empty(), "{again}");
}

/// `berth gc --json` prints the report as JSON (the CLI's own flag; README and `berth gc
/// --help` offer it).
#[test]
fn gc_json_prints_the_report() {
    let fx = Fx::start("", "");
    let run = fx.gc_json(&["--dry-run"]);
    assert_eq!(
        run.code,
        Some(0),
        "berth gc --json: {}{}",
        run.stdout,
        run.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("a JSON report");
    for f in [
        "dry_run",
        "repositories",
        "manifests",
        "blob_links",
        "blobs_freed",
        "bytes_freed",
    ] {
        assert!(!v[f].is_null(), "no {f} in {v}");
    }
}

/// An upload in progress on the server survives a `berth gc` run beside it: the collection
/// process must not clean the server's staging directory (`cache.dir/tmp`).
#[test]
fn an_upload_in_progress_survives_a_gc_run() {
    let fx = Fx::start("", "");
    let dir = support::tempdir();
    std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
    let (digest, size) = push::write_random(dir.path(), fresh_seed(), 2 * MIB);
    let data = std::fs::read(dir.path().join("blobs/sha256").join(&digest[7..])).unwrap();
    let r = fx.req("POST", "/v2/acme/up/blobs/uploads/", &fx.key, &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    let loc = r.header("location").unwrap().to_string();
    let half = data.len() / 2;
    let range = format!("0-{}", half - 1);
    let r = fx.req(
        "PATCH",
        &loc,
        &fx.key,
        &[("Content-Range", &range)],
        &data[..half],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let report = fx.gc(&[]);
    assert_eq!(num(&report, "blobs_freed"), 0, "{report}");
    let range = format!("{half}-{}", data.len() - 1);
    let r = fx.req(
        "PATCH",
        &loc,
        &fx.key,
        &[("Content-Range", &range)],
        &data[half..],
    );
    assert_eq!(
        r.status,
        202,
        "the rest of the upload after gc ran: {}",
        r.text()
    );
    let r = fx.req("PUT", &format!("{loc}?digest={digest}"), &fx.key, &[], b"");
    assert_eq!(
        r.status,
        201,
        "finishing an upload begun before gc ran: {}\nberth log tail:\n{}",
        r.text(),
        push::tail(&fx.berth.logs(), 5)
    );
    assert!(fx.blob_pulls("up", &digest, size));
}

fn shared_digest(img: &Img) -> String {
    img.layers[0].0.clone()
}

/// The bytes of a manifest deleted by digest (not collected by gc, deleted by the API) are
/// freed by the next collection too: nothing links them any more.
#[test]
fn a_manifest_deleted_by_digest_has_its_bytes_freed() {
    let fx = Fx::start("", "");
    let c = Img::build("c", &[(fresh_seed(), MIB)]);
    fx.push_raw("two", &c, "c");
    assert!(
        fx.manifest_file(&c.manifest).is_file(),
        "where berth keeps manifests"
    );
    delete(&fx, "two", &c.manifest);
    let report = fx.gc(&["--grace", "0s", "--delete-untagged"]);
    assert_eq!(num(&report, "blobs_freed"), 2, "{report}");
    assert!(
        !fx.manifest_file(&c.manifest).exists(),
        "the bytes of a manifest no repository links stay on disk after gc: {report}"
    );
}

/// A layer mounted from `src` into `dst` survives the deletion of `src`'s manifest: only what
/// `src` alone used is freed.
#[test]
fn blobs_shared_by_a_mount_survive_the_deletion_in_one_repository() {
    let fx = Fx::start("", "");
    let shared = (fresh_seed(), 4 * MIB);
    let first = Img::build("1", &[shared, (fresh_seed(), 2 * MIB)]);
    let second = Img::build("2", &[shared, (fresh_seed(), MIB)]);
    fx.push_skopeo_ok("src", &first);
    let layer = &first.layers[0].0;
    let r = fx.req(
        "POST",
        &format!("/v2/acme/dst/blobs/uploads/?mount={layer}&from=acme/src"),
        &fx.key,
        &[],
        b"",
    );
    assert_eq!(r.status, 201, "mount: {}", r.text());
    // skopeo finds the layer already there (HEAD) and pushes the rest.
    fx.push_skopeo_ok("dst", &second);
    delete(&fx, "src", &first.manifest);
    let report = fx.gc(&["--grace", "0s"]);
    let want: u64 = first.config.1 + first.layers[1].1;
    assert_bytes(&report, want, &report.to_string());
    assert_eq!(num(&report, "blobs_freed"), 2, "{report}");
    assert!(fx.blob_file(layer).is_file(), "the mounted layer was freed");
    assert!(!fx.blob_file(&first.layers[1].0).exists());
    assert!(!fx.blob_file(&first.config.0).exists());
    fx.pull_skopeo_ok("dst", "2", &second);
    // In src the layer is unlinked (nothing there references it): unknown there now.
    let (status, _, _) = fx.get_blob("src", layer);
    assert_eq!(status, 404, "src still serves a layer gc unlinked from it");
}

/// A tag moved to another image leaves the old manifest untagged: kept (pullable by digest)
/// by default, removed with `--delete-untagged`.
#[test]
fn untagged_manifests_are_kept_by_default_and_removed_on_request() {
    let fx = Fx::start("", "");
    let old = Img::build("latest", &[(fresh_seed(), 3 * MIB)]);
    let new = Img::build("latest", &[(fresh_seed(), 2 * MIB)]);
    fx.push_skopeo_ok("app", &old);
    fx.push_skopeo_ok("app", &new);
    let kept = fx.gc(&["--grace", "0s"]);
    assert!(manifests(&kept).is_empty(), "{kept}");
    assert_eq!(num(&kept, "blobs_freed"), 0, "{kept}");
    fx.pull_skopeo_ok("app", &old.manifest, &old);
    fx.pull_skopeo_ok("app", "latest", &new);

    let removed = fx.gc(&["--grace", "0s", "--delete-untagged"]);
    assert_eq!(
        manifests(&removed),
        [format!("acme/app@{}", old.manifest)],
        "{removed}"
    );
    let want: u64 = old.blobs().iter().map(|(_, s)| s).sum();
    assert_bytes(&removed, want, &removed.to_string());
    for (d, _) in old.blobs() {
        assert!(
            !fx.blob_file(&d).exists(),
            "{d} of the untagged image is still on disk"
        );
    }
    assert!(
        fx.pull_skopeo("app", &old.manifest, &old).is_err(),
        "the removed manifest still pulls"
    );
    fx.pull_skopeo_ok("app", "latest", &new);
}

/// A blob uploaded a moment ago and referenced by nothing is in its grace period (default 1h):
/// kept; with `--grace 0s` it goes.
#[test]
fn grace_protects_a_fresh_unreferenced_blob() {
    let fx = Fx::start("", "");
    let dir = support::tempdir();
    std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
    let (digest, size) = push::write_random(dir.path(), fresh_seed(), 3 * MIB + 1);
    let path = dir.path().join("blobs/sha256").join(&digest[7..]);
    let r = fx.upload_file("loose", &fx.key, &path, &digest);
    assert_eq!(r.status, 201, "{}", r.text());

    let graced = fx.gc(&[]);
    assert_eq!(num(&graced, "blobs_freed"), 0, "{graced}");
    assert_eq!(num(&graced, "blob_links"), 0, "{graced}");
    assert!(fx.blob_file(&digest).is_file());
    assert!(fx.blob_pulls("loose", &digest, size));

    let now = fx.gc(&["--grace", "0s"]);
    assert_eq!(num(&now, "blob_links"), 1, "{now}");
    assert_eq!(num(&now, "blobs_freed"), 1, "{now}");
    assert_bytes(&now, size, &now.to_string());
    assert!(!fx.blob_file(&digest).exists());
    let (status, _, _) = fx.get_blob("loose", &digest);
    assert_eq!(status, 404);
}

/// The fixture, the images (repository, image), each push's outcome, the blobs gc freed.
type LoopRun = (
    Arc<Fx>,
    Arc<Vec<(String, Img)>>,
    Vec<Result<usize, String>>,
    u64,
);

/// Runs `berth gc --grace <grace> --delete-untagged` in a loop while N skopeo pushes go on in
/// parallel (sharing a base layer, half into one repository), each push tried up to
/// `attempts` times. Returns the fixture, the images, each push's outcome, and the blobs the
/// loop freed.
fn push_during_gc_loop(fx: Arc<Fx>, grace: &str, attempts: usize) -> LoopRun {
    const N: usize = 10;
    let base = (fresh_seed(), 2 * MIB);
    let images: Vec<(String, Img)> = (0..N)
        .map(|i| {
            let repo = if i % 2 == 0 {
                "shared".to_string()
            } else {
                format!("r{i}")
            };
            (
                repo,
                Img::build(
                    &format!("t{i}"),
                    &[base, (fresh_seed(), MIB + i as u64 * 4099)],
                ),
            )
        })
        .collect();
    let images = Arc::new(images);
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let collector = {
        let (fx, stop, runs, grace) = (fx.clone(), stop.clone(), runs.clone(), grace.to_string());
        std::thread::spawn(move || {
            let mut freed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = fx.gc(&["--grace", &grace, "--delete-untagged"]);
                freed += num(&r, "blobs_freed");
                runs.fetch_add(1, Ordering::Relaxed);
            }
            freed
        })
    };
    let retries = Arc::new(AtomicUsize::new(0));
    let pushers: Vec<_> = (0..N)
        .map(|i| {
            let (fx, images, retries) = (fx.clone(), images.clone(), retries.clone());
            std::thread::spawn(move || {
                let (repo, img) = &images[i];
                let mut last = String::new();
                for attempt in 0..attempts {
                    let out = fx.push_skopeo(repo, img);
                    if out.status.success() {
                        return Ok(attempt);
                    }
                    retries.fetch_add(1, Ordering::Relaxed);
                    last = String::from_utf8_lossy(&out.stderr).to_string();
                }
                Err(format!(
                    "push {i} failed {attempts} times, last: {}",
                    last.trim()
                ))
            })
        })
        .collect();
    let results: Vec<_> = pushers.into_iter().map(|p| p.join().unwrap()).collect();
    // A few more collections after the last push.
    let seen = runs.load(Ordering::Relaxed);
    assert!(support::wait_until(Duration::from_secs(60), || runs
        .load(Ordering::Relaxed)
        >= seen + 2));
    stop.store(true, Ordering::Relaxed);
    let freed = collector.join().unwrap();
    eprintln!(
        "grace {grace}: {} collections ran ({freed} blobs freed) during {N} pushes; {} attempts failed; {} pushes never succeeded",
        runs.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed),
        results.iter().filter(|r| r.is_err()).count()
    );
    assert!(
        runs.load(Ordering::Relaxed) >= 3,
        "gc hardly ran during the pushes"
    );
    (fx, images, results, freed)
}

/// No request of the run failed inside berth (a 500): a refused push is a client's matter.
fn assert_no_internal_errors(fx: &Fx) {
    let logs = fx.berth.logs();
    let bad: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("status=500") || l.contains("internal error"))
        .take(5)
        .collect();
    assert!(
        bad.is_empty(),
        "berth failed requests during gc:\n{}",
        bad.join("\n")
    );
}

/// With `--grace 0s` a collection may take a blob a push uploaded but has not referenced yet
/// (that is what no grace means), so a push may be refused (MANIFEST_BLOB_UNKNOWN) — but
/// never half-stored: every push that succeeded pulls back complete, no request fails inside
/// berth, and once the loop stops every image pushes and pulls.
#[test]
fn concurrent_pushes_during_gc_with_no_grace_lose_nothing() {
    let (fx, images, results, _) = push_during_gc_loop(Arc::new(Fx::start("", "")), "0s", 3);
    for ((repo, img), r) in images.iter().zip(&results) {
        if r.is_ok() {
            fx.pull_skopeo_ok(repo, &img.tag, img);
        }
    }
    assert_no_internal_errors(&fx);
    for (repo, img) in images.iter() {
        fx.push_skopeo_ok(repo, img);
    }
    for (repo, img) in images.iter() {
        fx.pull_skopeo_ok(repo, &img.tag, img);
    }
    let r = fx.gc(&["--grace", "0s", "--delete-untagged"]);
    assert_eq!(num(&r, "blobs_freed"), 0, "{r}");
}

/// With a grace longer than a push takes (10s), a gc loop that is busy freeing older deleted
/// content runs beside 10 parallel skopeo pushes: every push succeeds and pulls back complete,
/// and the old content is freed meanwhile.
#[test]
fn concurrent_pushes_during_gc_with_grace_all_succeed() {
    let fx = Fx::start("", "");
    // Deleted content, older than the grace when the loop starts: the loop's work.
    let mut old_blobs = 0u64;
    for i in 0..6 {
        let img = Img::build("old", &[(fresh_seed(), MIB + i)]);
        fx.push_raw(&format!("old{i}"), &img, "old");
        delete(&fx, &format!("old{i}"), &img.manifest);
        old_blobs += 2;
    }
    std::thread::sleep(Duration::from_secs(11));
    let (fx, images, results, freed) = push_during_gc_loop(Arc::new(fx), "10s", 2);
    for ((repo, img), r) in images.iter().zip(&results) {
        if r.is_ok() {
            fx.pull_skopeo_ok(repo, &img.tag, img);
        }
    }
    assert_no_internal_errors(&fx);
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "pushes failed: {failed:?}");
    assert_eq!(
        freed, old_blobs,
        "the loop freed other than the old deleted content"
    );
}

/// `kill -9` of a collection at several moments: every tagged image still pulls complete, and
/// a second collection finishes the job: it frees what the first left (its bytes_freed is what
/// left the disk) and only the blobs of tagged images stay.
#[test]
fn kill_9_during_gc_leaves_a_consistent_store() {
    let fx = Fx::start("", "");
    const REPOS: usize = 12;
    let mut live: Vec<(String, Img)> = Vec::new();
    for (round, delay_ms) in [5u64, 10, 15, 20, 25, 40].into_iter().enumerate() {
        let base = (fresh_seed(), 512 * 1024);
        for i in 0..REPOS {
            let repo = format!("k{round}-{i}");
            let keep = Img::build("keep", &[base, (fresh_seed(), 256 * 1024 + i as u64)]);
            let drop = Img::build("drop", &[base, (fresh_seed(), 384 * 1024 + i as u64)]);
            let moved = Img::build("keep", &[(fresh_seed(), 128 * 1024)]);
            fx.push_raw(&repo, &moved, "keep");
            fx.push_raw(&repo, &keep, "keep"); // `moved` is now untagged
            fx.push_raw(&repo, &drop, "drop");
            delete(&fx, &repo, &drop.manifest);
            live.push((repo, keep));
        }
        let before = fx.stored_blobs();
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args([
                "--config",
                fx.config(),
                "gc",
                "--grace",
                "0s",
                "--delete-untagged",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn berth gc");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let killed = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        let mid = fx.stored_blobs();
        eprintln!(
            "round {round}: kill -9 after {delay_ms} ms (kill {killed}, gc {status}): {} of {} blob files left",
            mid.len(),
            before.len()
        );
        for (repo, img) in &live {
            if let Err(e) = fx.pull_raw(repo, "keep", img) {
                panic!("after kill -9 at {delay_ms} ms: {e}");
            }
        }
        let sizes: BTreeMap<String, u64> = mid
            .iter()
            .map(|d| (d.clone(), std::fs::metadata(fx.blob_file(d)).unwrap().len()))
            .collect();
        let t = Instant::now();
        let second = fx.gc(&["--grace", "0s", "--delete-untagged"]);
        eprintln!(
            "round {round}: the second gc took {:?}: {second}",
            t.elapsed()
        );
        let want: BTreeSet<String> = live
            .iter()
            .flat_map(|(_, img)| img.blobs().into_iter().map(|(d, _)| d))
            .collect();
        let now: BTreeSet<String> = fx.stored_blobs().into_iter().collect();
        assert_eq!(
            now.difference(&want).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "blobs nothing references remain after the second gc: {second}"
        );
        assert_eq!(
            want.difference(&now).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "blobs of tagged images are gone"
        );
        let freed: u64 = sizes
            .iter()
            .filter(|(d, _)| !now.contains(*d))
            .map(|(_, s)| s)
            .sum();
        assert_bytes(&second, freed, &second.to_string());
        for (repo, img) in &live {
            fx.pull_raw(repo, "keep", img).expect("after the second gc");
        }
        let third = fx.gc(&["--grace", "0s", "--delete-untagged"]);
        assert_eq!(
            num(&third, "blobs_freed"),
            0,
            "a third gc found more: {third}"
        );
    }
}
