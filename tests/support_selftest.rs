//! Self-tests of the integration harness in tests/support against real tools.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::fake::{FakeBody, FakeResponse, FakeServer};
use support::image::{push_image, push_index, read_oci_layout, skopeo_copy_to_oci, ImageSpec};
use support::registry::{Registry, RegistryAuth};
use support::token::TokenRealm;

fn assert_pull_matches(src: &str, creds: Option<&str>, img: &support::image::TestImage) {
    let dest = support::tempdir();
    // Without --preserve-digests skopeo gzips uncompressed layers on the way
    // into an oci: layout, changing every layer and manifest digest.
    let out = skopeo_copy_to_oci(src, creds, dest.path(), &["--preserve-digests"]);
    assert!(
        out.status.success(),
        "skopeo pull failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled = read_oci_layout(dest.path());
    assert_eq!(pulled.manifest_digest, img.manifest_digest);
    let mut want: Vec<String> = img.layers.iter().map(|(d, _)| d.clone()).collect();
    want.push(img.config_digest.clone());
    want.push(img.manifest_digest.clone());
    want.sort();
    assert_eq!(pulled.blob_digests, want);
}

#[test]
fn htpasswd_registry_push_pull_and_count() {
    let t = Instant::now();
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: "alice".into(),
        password: "s3cret".into(),
    });
    let spec = ImageSpec {
        layer_sizes: vec![8 << 20, 100_000, 1_000],
        seed: 7,
    };
    let img = push_image(&reg, Some(("alice", "s3cret")), "team/app", "v1", &spec);
    assert_eq!(img.layers.len(), 3);
    assert!(img.layers[0].1 >= 8 << 20);

    // Without credentials the registry must refuse.
    let anon = skopeo_copy_to_oci(&img.docker_ref(&reg), None, support::tempdir().path(), &[]);
    assert!(!anon.status.success(), "anonymous pull unexpectedly worked");

    assert_pull_matches(&img.docker_ref(&reg), Some("alice:s3cret"), &img);
    for (digest, _) in &img.layers {
        assert!(
            reg.count_requests("GET", &format!("/v2/team/app/blobs/{digest}")) >= 1,
            "no blob GET for {digest} in log:\n{}",
            reg.log()
        );
    }
    assert!(reg.count_requests("PUT", "/v2/team/app/manifests/v1") >= 1);
    eprintln!("htpasswd selftest took {:?}", t.elapsed());
}

#[test]
fn registry_restart_and_shared_storage() {
    let mut reg = Registry::start(RegistryAuth::None);
    let img = push_image(
        &reg,
        None,
        "lib/tiny",
        "latest",
        &ImageSpec {
            layer_sizes: vec![2048],
            seed: 1,
        },
    );
    let port = reg.port;
    reg.restart();
    assert_eq!(reg.port, port);
    assert_pull_matches(&img.docker_ref(&reg), None, &img);
    let twin = Registry::start_with_storage(reg.storage_dir(), RegistryAuth::None);
    assert_pull_matches(&img.docker_ref(&twin), None, &img);
}

#[test]
fn token_realm_registry_push_pull() {
    let t = Instant::now();
    let realm = TokenRealm::start("bob", "hunter2", 300);
    let reg = Registry::start(realm.registry_auth());
    let img = push_image(
        &reg,
        Some(("bob", "hunter2")),
        "secure/app",
        "1.0",
        &ImageSpec {
            layer_sizes: vec![300_000, 5_000],
            seed: 42,
        },
    );
    assert_pull_matches(&img.docker_ref(&reg), Some("bob:hunter2"), &img);
    let bad = skopeo_copy_to_oci(
        &img.docker_ref(&reg),
        Some("bob:wrong"),
        support::tempdir().path(),
        &[],
    );
    assert!(!bad.status.success(), "pull with bad password worked");

    let reqs = realm.requests();
    assert!(!reqs.is_empty());
    assert!(realm.token_count() >= 2, "expected push and pull tokens");
    let issued: Vec<_> = reqs
        .iter()
        .filter(|r| {
            r.header("authorization")
                .is_some_and(|a| a.starts_with("Basic "))
        })
        .collect();
    assert!(!issued.is_empty(), "realm never saw Basic auth: {reqs:?}");
    for r in &reqs {
        assert_eq!(r.query("service").as_deref(), Some(realm.service.as_str()));
    }
    assert!(
        reqs.iter()
            .flat_map(|r| r.query_all("scope"))
            .any(|s| s.starts_with("repository:secure/app:") && s.contains("push")),
        "no push scope requested: {reqs:?}"
    );
    eprintln!("token selftest took {:?}", t.elapsed());
}

/// Raw HTTP/1.1 GET returning (declared Content-Length, body bytes actually
/// received before EOF or error): a raw socket shows a cut exactly.
fn raw_get(port: u16, path: &str) -> (usize, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&all[..split]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (len, all[split..].to_vec())
}

#[test]
fn fake_server_file_faults() {
    let dir = support::tempdir();
    let path = dir.path().join("blob");
    let mut data = vec![0u8; 300_000];
    support::image::SplitMix64(3).fill(&mut data);
    std::fs::write(&path, &data).unwrap();

    let p = path.clone();
    let fake = FakeServer::start(move |req| {
        let body = FakeBody::File {
            path: p.clone(),
            drop_after: (req.path() == "/drop").then_some(100_000),
            corrupt_at: (req.path() == "/corrupt").then_some(200_001),
            stall_after: (req.path() == "/stall").then_some((1_000, Duration::from_millis(300))),
        };
        FakeResponse {
            status: 200,
            headers: vec![],
            body,
        }
    });

    let (len, body) = raw_get(fake.port, "/whole");
    assert_eq!((len, body.as_slice()), (data.len(), data.as_slice()));

    let (len, body) = raw_get(fake.port, "/drop");
    assert_eq!(
        len,
        data.len(),
        "content-length must promise the whole file"
    );
    assert_eq!(
        body.len(),
        100_000,
        "connection should be cut after 100000 bytes"
    );
    assert_eq!(body, data[..100_000]);

    let (_, body) = raw_get(fake.port, "/corrupt");
    assert_eq!(body.len(), data.len());
    let diffs: Vec<usize> = (0..data.len()).filter(|&i| body[i] != data[i]).collect();
    assert_eq!(diffs, vec![200_001]);

    let t = Instant::now();
    let (_, body) = raw_get(fake.port, "/stall");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(body, data);

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[1].uri, "/drop");
    assert_eq!(reqs[1].header("host"), Some("x"));
}

#[test]
fn fake_server_proxies_to_real_registry() {
    let reg = Registry::start(RegistryAuth::None);
    let img = push_image(
        &reg,
        None,
        "lib/proxied",
        "t",
        &ImageSpec {
            layer_sizes: vec![4096, 70_000],
            seed: 9,
        },
    );
    let origin = reg.url();
    let fake = FakeServer::start(move |req| FakeResponse::proxy_to(&origin, req));
    let src = format!("docker://127.0.0.1:{}/lib/proxied:t", fake.port);
    assert_pull_matches(&src, None, &img);
    assert!(fake.count("GET", &img.layers[1].0) >= 1);
    assert!(fake.count("GET", "/manifests/t") + fake.count("HEAD", "/manifests/t") >= 1);
}

#[test]
fn index_push_with_shared_layer() {
    let reg = Registry::start(RegistryAuth::None);
    let amd = ImageSpec {
        layer_sizes: vec![50_000, 10_000],
        seed: 5,
    };
    let arm = ImageSpec {
        layer_sizes: vec![50_000, 20_000],
        seed: 5,
    };
    let idx = push_index(
        &reg,
        None,
        "multi/app",
        "v2",
        &[("linux", "amd64", amd), ("linux", "arm64", arm)],
    );
    let [a, b] = &idx.children[..] else {
        panic!("two children expected")
    };
    assert_eq!(a.layers[0], b.layers[0], "same seed+size+index must share");
    assert_ne!(a.layers[1].0, b.layers[1].0);
    assert_ne!(a.manifest_digest, b.manifest_digest);

    let dest = support::tempdir();
    let src = format!("docker://{}/multi/app:v2", reg.host());
    let out = skopeo_copy_to_oci(&src, None, dest.path(), &["--all", "--preserve-digests"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled = read_oci_layout(dest.path());
    assert_eq!(pulled.manifest_digest, idx.index_digest);
    for child in [a, b] {
        assert!(pulled.blob_digests.contains(&child.manifest_digest));
        assert!(pulled.blob_digests.contains(&child.config_digest));
    }
    assert_eq!(reg.count_requests("PUT", "/v2/multi/app/manifests/v2"), 1);
}

fn raw_status(port: u16, path: &str, bearer: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or("").to_string()
}

#[test]
fn minted_tokens_and_expiry() {
    let realm = TokenRealm::start("u", "p", 60);
    let reg = Registry::start(realm.registry_auth());
    let img = push_image(
        &reg,
        Some(("u", "p")),
        "m/t",
        "1",
        &ImageSpec {
            layer_sizes: vec![512],
            seed: 2,
        },
    );
    let path = format!("/v2/m/t/manifests/{}", img.manifest_digest);
    let good = realm.mint(&["repository:m/t:pull"], 60);
    assert!(raw_status(reg.port, &path, &good).contains(" 200 "));
    let other_repo = realm.mint(&["repository:other:pull"], 60);
    assert!(raw_status(reg.port, &path, &other_repo).contains(" 401 "));
    let expired = realm.mint(&["repository:m/t:pull"], -120);
    assert!(raw_status(reg.port, &path, &expired).contains(" 401 "));
}
