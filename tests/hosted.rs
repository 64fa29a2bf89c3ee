//! Integration tests of the hosted registry: the real berth, images pushed into it with the
//! real skopeo and an API key (created through the library on the server's own state
//! file), pulled back out with a license; uploads by hand; isolation between apps.

#[path = "support/http.rs"]
mod http;
mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use berth::config::Config;
use berth::control::usage::UsageFilter;
use berth::control::{Actor, Control, NewKey, NewLicense};
use berth::settings::StateConfig;
use http::Resp;
use support::berth::Berth;
use support::docker::{ok, run, static_busybox, Cleanup};
use support::image::{push_image, push_index, read_oci_layout, skopeo_copy_to_oci, ImageSpec};
use support::registry::{Registry, RegistryAuth};

const WAIT: Duration = Duration::from_secs(10);

struct Fx {
    reg: Registry,
    berth: Berth,
    _cache: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    control: Control,
}

fn fixture() -> Fx {
    fixture_with("")
}

/// `extra` is appended to the config (more sections).
fn fixture_with(extra: &str) -> Fx {
    let reg = Registry::start(RegistryAuth::None);
    let cache = support::tempdir();
    let port = support::free_port();
    let yaml = format!(
        "server:\n  listen: \"127.0.0.1:{port}\"\n  hostname: \"127.0.0.1:{port}\"\n\
         cache: {{ dir: \"{}\" }}\n\
         upstreams: [ {{ name: up, url: \"{}\", host: upstream.test }} ]\n\
         apps: [ {{ slug: acme, upstreams: [up] }}, {{ slug: beta, upstreams: [up] }} ]\n{extra}",
        cache.path().display(),
        reg.url()
    );
    let berth = Berth::start_on(port, &yaml, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = Config::load(&berth.config_path).expect("berth's config");
    let StateConfig::Sqlite(db) = &config.state else {
        panic!("expected the default SQLite state")
    };
    let store: Arc<dyn berth::state::Store> = Arc::new(
        rt.block_on(berth::state::sqlite::SqliteStore::open(db))
            .expect("open the server's state.db"),
    );
    Fx {
        reg,
        berth,
        _cache: cache,
        rt,
        control: Control::new(store),
    }
}

fn basic(secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("api:{secret}")))
}

impl Fx {
    fn config(&self) -> Config {
        Config::load(&self.berth.config_path).expect("berth's config")
    }

    /// An API key of `app` with `actions`: (id, key), once berth knows it.
    fn key(&self, app: &str, actions: &[&str]) -> (String, String) {
        let created = self
            .rt
            .block_on(self.control.create_key(
                &self.config(),
                &Actor("test".into()),
                NewKey {
                    name: format!("ci-{app}"),
                    apps: vec![app.into()],
                    actions: actions.iter().map(|a| a.to_string()).collect(),
                    expires: None,
                },
            ))
            .expect("create a key");
        self.until_known(&created.key);
        (created.view.id, created.key)
    }

    fn license(&self, app: &str) -> String {
        self.license_with_id(app).1
    }

    /// A license of `app`: (public id, secret), once berth knows it.
    fn license_with_id(&self, app: &str) -> (String, String) {
        let created = self
            .rt
            .block_on(self.control.create_license(
                &self.config(),
                &Actor("test".into()),
                NewLicense {
                    app: app.into(),
                    customer: format!("{app} customer"),
                    expires: None,
                    images: vec![],
                },
            ))
            .expect("create a license");
        self.until_known(&created.secret);
        (created.license.id, created.secret)
    }

    fn until_known(&self, secret: &str) {
        let auth = basic(secret);
        assert!(
            support::wait_until(WAIT, || {
                http::get(self.berth.port, "/v2/", &[("Authorization", &auth)]).status == 200
            }),
            "berth does not know a new credential within {WAIT:?}"
        );
    }

    fn req(
        &self,
        method: &str,
        path: &str,
        secret: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let auth = basic(secret);
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(extra);
        http::request(self.berth.port, method, path, &h, body)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.berth.port)
    }
}

fn skopeo(args: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .args(["--insecure-policy"])
        .args(args)
        .output()
        .expect("run skopeo")
}

fn spec(seed: u64, sizes: &[u64]) -> ImageSpec {
    ImageSpec {
        layer_sizes: sizes.to_vec(),
        seed,
    }
}

#[test]
fn skopeo_pushes_into_berth_and_a_license_pulls_it_back_identical() {
    let fx = fixture();
    let image = push_image(
        &fx.reg,
        None,
        "src/single",
        "1.0",
        &spec(11, &[90_000, 1_200_000]),
    );
    let index = push_index(
        &fx.reg,
        None,
        "src/multi",
        "2.0",
        &[
            ("linux", "amd64", spec(12, &[70_000])),
            ("linux", "arm64", spec(13, &[50_000, 3_000])),
        ],
    );
    let (_, key) = fx.key("acme", &["push", "pull"]);
    let dest_creds = format!("api:{key}");
    for (src, dest, all) in [
        (
            format!("docker://{}/src/single:1.0", fx.reg.host()),
            format!("docker://{}/acme/team/single:1.0", fx.host()),
            false,
        ),
        (
            format!("docker://{}/src/multi:2.0", fx.reg.host()),
            format!("docker://{}/acme/multi:2.0", fx.host()),
            true,
        ),
    ] {
        let mut args = vec![
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--preserve-digests",
            "--dest-creds",
            &dest_creds,
        ];
        if all {
            args.push("--all");
        }
        args.push(&src);
        args.push(&dest);
        let out = skopeo(&args);
        assert!(
            out.status.success(),
            "skopeo copy into berth: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            fx.berth.logs()
        );
    }

    let (license_id, license) = fx.license_with_id("acme");
    let creds = format!("x:{license}");
    let dir = support::tempdir();
    let out = skopeo_copy_to_oci(
        &format!("docker://{}/acme/team/single:1.0", fx.host()),
        Some(&creds),
        dir.path(),
        &["--preserve-digests"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = read_oci_layout(dir.path());
    assert_eq!(back.manifest_digest, image.manifest_digest);
    let mut want = vec![image.manifest_digest.clone(), image.config_digest.clone()];
    want.extend(image.layers.iter().map(|(d, _)| d.clone()));
    want.sort();
    assert_eq!(back.blob_digests, want);

    let dir = support::tempdir();
    let out = skopeo_copy_to_oci(
        &format!("docker://{}/acme/multi:2.0", fx.host()),
        Some(&creds),
        dir.path(),
        &["--preserve-digests", "--all"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = read_oci_layout(dir.path());
    assert_eq!(back.manifest_digest, index.index_digest);
    let mut want = vec![index.index_digest.clone()];
    for c in &index.children {
        want.push(c.manifest_digest.clone());
        want.push(c.config_digest.clone());
        want.extend(c.layers.iter().map(|(d, _)| d.clone()));
    }
    want.sort();
    want.dedup();
    assert_eq!(back.blob_digests, want);

    // The pulls count in usage like proxied ones, under the name customers pull.
    let filter = UsageFilter {
        license: Some(license_id.clone()),
        ..UsageFilter::default()
    };
    let single = format!("{}/acme/team/single", fx.host());
    let mut seen = None;
    let counted = support::wait_until(WAIT, || {
        let report = fx
            .rt
            .block_on(fx.control.usage(&fx.config(), &filter))
            .expect("usage report");
        seen = report.subjects.into_iter().next();
        seen.as_ref().is_some_and(|u| {
            u.bytes >= image.layers.iter().map(|(_, n)| *n).sum::<u64>()
                && u.images
                    .iter()
                    .any(|i| i.image == single && i.reference == "1.0" && i.pulls == 1)
        })
    });
    assert!(counted, "hosted pulls not in usage: {seen:?}");

    // Tags, sorted and paged.
    let r = fx.req("GET", "/v2/acme/team/single/tags/list", &license, &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tags"], serde_json::json!(["1.0"]));

    // Isolation: app beta's key and license see nothing of acme, also by digest.
    let (_, beta_key) = fx.key("beta", &["push", "pull"]);
    let beta_license = fx.license("beta");
    let layer = &image.layers[0].0;
    for secret in [&beta_key, &beta_license] {
        let r = fx.req(
            "GET",
            &format!("/v2/acme/team/single/blobs/{layer}"),
            secret,
            &[],
            b"",
        );
        assert_eq!(r.status, 403, "{}", r.text());
        // Under its own app's name the digest is not linked: unknown.
        let r = fx.req(
            "GET",
            &format!("/v2/beta/team/single/blobs/{layer}"),
            secret,
            &[],
            b"",
        );
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.code(), "BLOB_UNKNOWN");
        let r = fx.req(
            "GET",
            "/v2/acme/team/single/manifests/1.0",
            secret,
            &[],
            b"",
        );
        assert_eq!(r.status, 403, "{}", r.text());
    }
    // Beta's key cannot push into acme, nor mount from it.
    let r = fx.req(
        "POST",
        "/v2/acme/team/single/blobs/uploads/",
        &beta_key,
        &[],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = fx.req(
        "POST",
        &format!("/v2/beta/stolen/blobs/uploads/?mount={layer}&from=acme/team/single"),
        &beta_key,
        &[],
        b"",
    );
    assert_eq!(
        r.status,
        202,
        "a cross-app mount falls back to an upload: {}",
        r.text()
    );
    // A license pushes nothing.
    let r = fx.req(
        "POST",
        "/v2/acme/team/single/blobs/uploads/",
        &license,
        &[],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // Acme's key mounts within acme.
    let r = fx.req(
        "POST",
        &format!("/v2/acme/other/blobs/uploads/?mount={layer}&from=acme/team/single"),
        &key,
        &[],
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = fx.req(
        "HEAD",
        &format!("/v2/acme/other/blobs/{layer}"),
        &key,
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn chunked_uploads_by_hand() {
    let fx = fixture();
    let (key_id, key) = fx.key("acme", &["push", "pull"]);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = format!("sha256:{}", support::sha256_hex(&data));

    let r = fx.req("POST", "/v2/acme/chunks/blobs/uploads/", &key, &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    let location = r.header("location").unwrap().to_string();
    assert!(
        location.starts_with("/v2/acme/chunks/blobs/uploads/"),
        "{location}"
    );
    assert!(r.header("docker-upload-uuid").is_some());
    assert_eq!(r.header("range"), Some("0-0"));
    let parts = [&data[..100_000], &data[100_000..250_000], &data[250_000..]];
    let mut offset = 0usize;
    for (i, p) in parts.iter().enumerate() {
        let range = format!("{}-{}", offset, offset + p.len() - 1);
        let r = fx.req("PATCH", &location, &key, &[("Content-Range", &range)], p);
        assert_eq!(r.status, 202, "{}", r.text());
        offset += p.len();
        assert_eq!(r.header("range").unwrap(), format!("0-{}", offset - 1));
        if i == 0 {
            // A chunk that does not start where the upload ends.
            let r = fx.req(
                "PATCH",
                &location,
                &key,
                &[("Content-Range", "5-9")],
                b"hello",
            );
            assert_eq!(r.status, 416, "{}", r.text());
        }
    }
    let r = fx.req("GET", &location, &key, &[], b"");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("range").unwrap(), format!("0-{}", data.len() - 1));
    let r = fx.req(
        "PUT",
        &format!("{location}?digest={digest}"),
        &key,
        &[],
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    let r = fx.req(
        "GET",
        &format!("/v2/acme/chunks/blobs/{digest}"),
        &key,
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);
    // The finished upload is gone.
    let r = fx.req("GET", &location, &key, &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");

    // A wrong digest: 400, nothing kept under either digest.
    let other = b"other bytes".to_vec();
    let real = format!("sha256:{}", support::sha256_hex(&other));
    let wrong = format!("sha256:{}", support::sha256_hex(b"not these"));
    let r = fx.req("POST", "/v2/acme/chunks/blobs/uploads/", &key, &[], b"");
    let loc = r.header("location").unwrap().to_string();
    let r = fx.req("PUT", &format!("{loc}?digest={wrong}"), &key, &[], &other);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.code(), "DIGEST_INVALID");
    for d in [&real, &wrong] {
        let r = fx.req(
            "HEAD",
            &format!("/v2/acme/chunks/blobs/{d}"),
            &key,
            &[],
            b"",
        );
        assert_eq!(r.status, 404, "{d}");
    }
    // Monolithic POST.
    let r = fx.req(
        "POST",
        &format!("/v2/acme/chunks/blobs/uploads/?digest={real}"),
        &key,
        &[],
        &other,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // A manifest referencing a blob not in the repository is refused.
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": real, "size": other.len() },
        "layers": [ { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": wrong, "size": 9 } ],
    });
    let r = fx.req(
        "PUT",
        "/v2/acme/chunks/manifests/v1",
        &key,
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        manifest.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
    // An artifact with a subject: stored, and the subject named in OCI-Subject.
    let subject = format!("sha256:{}", support::sha256_hex(b"the signed image"));
    let artifact = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.signature",
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": real, "size": other.len() },
        "layers": [],
        "subject": { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": 10 },
    })
    .to_string();
    // Content-Type must agree with the body's mediaType.
    let r = fx.req(
        "PUT",
        "/v2/acme/chunks/manifests/sig",
        &key,
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        artifact.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.code(), "MANIFEST_INVALID");
    let r = fx.req(
        "PUT",
        "/v2/acme/chunks/manifests/sig",
        &key,
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        artifact.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("oci-subject"), Some(subject.as_str()));
    let digest = format!("sha256:{}", support::sha256_hex(artifact.as_bytes()));
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    let r = fx.req(
        "GET",
        &format!("/v2/acme/chunks/manifests/{digest}"),
        &key,
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, artifact.as_bytes());

    // Another subject (even of the same app) cannot continue someone's upload.
    let (_, other_key) = fx.key("acme", &["push", "pull"]);
    let r = fx.req("POST", "/v2/acme/chunks/blobs/uploads/", &key, &[], b"");
    let loc = r.header("location").unwrap().to_string();
    let r = fx.req("PATCH", &loc, &other_key, &[], b"abc");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");

    // A revoked key is refused at its next PATCH, mid-upload.
    let r = fx.req("POST", "/v2/acme/chunks/blobs/uploads/", &key, &[], b"");
    let loc = r.header("location").unwrap().to_string();
    let r = fx.req("PATCH", &loc, &key, &[("Content-Range", "0-2")], b"abc");
    assert_eq!(r.status, 202);
    fx.rt
        .block_on(fx.control.revoke_key(&Actor("test".into()), &key_id))
        .expect("revoke");
    assert!(
        support::wait_until(WAIT, || {
            fx.req("PATCH", &loc, &key, &[("Content-Range", "3-5")], b"def")
                .status
                == 401
        }),
        "a revoked key went on uploading"
    );
}

#[test]
fn idle_uploads_expire() {
    let fx = fixture_with("hosted: { upload_timeout: 1s }\n");
    let (_, key) = fx.key("acme", &["push"]);
    let r = fx.req("POST", "/v2/acme/idle/blobs/uploads/", &key, &[], b"");
    let loc = r.header("location").unwrap().to_string();
    let r = fx.req("PATCH", &loc, &key, &[], b"abc");
    assert_eq!(r.status, 202);
    let r = fx.req("GET", &loc, &key, &[], b"");
    assert_eq!(r.status, 204, "alive while in use");
    std::thread::sleep(Duration::from_millis(2500));
    let r = fx.req("GET", &loc, &key, &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A 200 MiB blob in one PATCH goes to staging as it arrives: berth's peak RSS grows by
/// far less than the blob.
#[test]
fn a_200_mib_push_keeps_memory_flat() {
    let fx = fixture();
    let (_, key) = fx.key("acme", &["push", "pull"]);
    let mut data = vec![0u8; 200 << 20];
    let mut x: u32 = 1;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let digest = format!("sha256:{}", support::sha256_hex(&data));
    let before = vm_hwm_kib(fx.berth.pid());
    let r = fx.req("POST", "/v2/acme/big/blobs/uploads/", &key, &[], b"");
    let loc = r.header("location").unwrap().to_string();
    let r = fx.req("PATCH", &loc, &key, &[], &data);
    assert_eq!(r.status, 202, "{}", r.text());
    let r = fx.req("PUT", &format!("{loc}?digest={digest}"), &key, &[], b"");
    assert_eq!(r.status, 201, "{}", r.text());
    let after = vm_hwm_kib(fx.berth.pid());
    eprintln!("berth VmHWM before {before} KiB, after a 200 MiB push {after} KiB");
    assert!(
        after - before < 48 * 1024,
        "peak RSS grew by {} KiB during a 200 MiB push",
        after - before
    );
    let r = fx.req(
        "HEAD",
        &format!("/v2/acme/big/blobs/{digest}"),
        &key,
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("209715200"));
}

#[test]
fn an_app_named_proxy_is_refused() {
    let dir = support::tempdir();
    let path = dir.path().join("berth.yaml");
    std::fs::write(
        &path,
        format!(
            "server: {{ listen: \"127.0.0.1:0\", hostname: x.test }}\ncache: {{ dir: \"{}\" }}\n\
             upstreams: [ {{ name: up, url: \"http://127.0.0.1:1\" }} ]\n\
             apps: [ {{ slug: proxy, upstreams: [up] }} ]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let run = support::berth::run_cli(
        &["check-config", "--config", path.to_str().unwrap()],
        &[],
        None,
        WAIT,
    );
    assert_ne!(run.code, Some(0), "{}", run.stdout);
    assert!(run.stderr.contains("apps[0].slug"), "{}", run.stderr);
    assert!(run.stderr.contains("reserved"), "{}", run.stderr);
}

// ---- the Docker engine (skips without one) -------------------------------------------

#[test]
fn docker_pushes_into_berth_and_a_customer_pulls_and_runs_it() {
    if !run(30, "docker", &["info"], None).status.success() {
        eprintln!("SKIP: no Docker engine");
        return;
    }
    let Some(busybox) = static_busybox() else {
        eprintln!("SKIP: no static busybox (apt-get install -y busybox-static)");
        return;
    };
    let fx = fixture();
    let (_, key) = fx.key("acme", &["push", "pull"]);
    let license = fx.license("acme");
    let ctx = support::tempdir();
    std::fs::copy(&busybox, ctx.path().join("busybox")).expect("copy busybox");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"echo\", \"hello\"]\n",
    )
    .unwrap();
    let pushed = format!("{}/acme/tools/busybox:{}", fx.host(), std::process::id());
    let _cleanup = Cleanup(vec![pushed.clone()]);
    ok(
        &run(
            300,
            "docker",
            &["build", "-q", "-t", &pushed, ctx.path().to_str().unwrap()],
            None,
        ),
        "docker build",
    );
    let vendor = support::tempdir();
    let vc = Some(vendor.path());
    ok(
        &run(
            60,
            "docker",
            &["login", &fx.host(), "-u", "api", "-p", &key],
            vc,
        ),
        "docker login with the key",
    );
    ok(
        &run(300, "docker", &["push", &pushed], vc),
        &format!("docker push\nberth log:\n{}", fx.berth.logs()),
    );
    ok(
        &run(60, "docker", &["rmi", "-f", &pushed], None),
        "docker rmi",
    );
    let customer = support::tempdir();
    let cc = Some(customer.path());
    ok(
        &run(
            60,
            "docker",
            &["login", &fx.host(), "-u", "customer", "-p", &license],
            cc,
        ),
        "docker login with the license",
    );
    ok(
        &run(180, "docker", &["pull", &pushed], cc),
        &format!("docker pull\nberth log:\n{}", fx.berth.logs()),
    );
    let out = ok(
        &run(
            120,
            "docker",
            &["run", "--rm", &pushed, "/bin/busybox", "echo", "hello"],
            cc,
        ),
        "docker run",
    );
    assert_eq!(out.trim(), "hello");
    // The customer's login cannot push.
    let denied = run(120, "docker", &["push", &pushed], cc);
    assert!(!denied.status.success(), "a license pushed");
}
