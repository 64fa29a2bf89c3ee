//! End to end with the real Docker engine: `docker login`, `docker pull` and `docker run`
//! of an image served through berth. Skips (with a SKIP line) when there is no engine.

mod support;

use support::berth::Berth;
use support::docker::{ok, run, static_busybox, Cleanup};
use support::registry::{Registry, RegistryAuth};

const GOOD: &str = "LICENSE-good-0001";

#[test]
fn docker_pulls_and_runs_through_berth() {
    if !run(30, "docker", &["info"], None).status.success() {
        eprintln!("SKIP: no Docker engine");
        return;
    }
    let Some(busybox) = static_busybox() else {
        eprintln!("SKIP: no static busybox (apt-get install -y busybox-static)");
        return;
    };
    let password = format!("vendor-pw-{}", std::process::id());
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: "vendor".into(),
        password: password.clone(),
    });

    let ctx = support::tempdir();
    std::fs::copy(&busybox, ctx.path().join("busybox")).expect("copy busybox");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"echo\", \"hello\"]\n",
    )
    .unwrap();
    let local_tag = format!("berth-test-busybox:{}", std::process::id());
    let port = support::free_port();
    let pulled = format!("127.0.0.1:{port}/proxy/acme/upstream.test/acme/busybox:1");
    let _cleanup = Cleanup(vec![local_tag.clone(), pulled.clone()]);
    ok(
        &run(
            300,
            "docker",
            &[
                "build",
                "-q",
                "-t",
                &local_tag,
                ctx.path().to_str().unwrap(),
            ],
            None,
        ),
        "docker build",
    );
    let archive = ctx.path().join("image.tar");
    ok(
        &run(
            120,
            "docker",
            &["save", "-o", archive.to_str().unwrap(), &local_tag],
            None,
        ),
        "docker save",
    );
    ok(
        &run(
            120,
            "skopeo",
            &[
                "--insecure-policy",
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("vendor:{password}"),
                &format!("docker-archive:{}", archive.display()),
                &format!("docker://{}/acme/busybox:1", reg.host()),
            ],
            None,
        ),
        "skopeo push to the upstream",
    );

    let cache = support::tempdir();
    let config = format!(
        "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\" }}
cache: {{ dir: \"{}\" }}
upstreams:
  - {{ name: up, url: \"{}\", host: upstream.test, username: vendor, password: \"${{UPSTREAM_PASSWORD}}\" }}
apps: [ {{ slug: acme, upstreams: [up] }} ]
licenses: [ {{ id: {GOOD}, app: acme, customer: Big Bank }} ]
",
        cache.path().display(),
        reg.url()
    );
    let berth = Berth::start_on(port, &config, &[("UPSTREAM_PASSWORD", &password)]);

    // A private DOCKER_CONFIG keeps the login out of the machine's own config.
    let docker_config = support::tempdir();
    let dc = Some(docker_config.path());
    let login = run(
        60,
        "docker",
        &[
            "login",
            &format!("127.0.0.1:{port}"),
            "-u",
            GOOD,
            "-p",
            GOOD,
        ],
        dc,
    );
    ok(&login, "docker login");
    let pull = run(180, "docker", &["pull", &pulled], dc);
    let pull_out = ok(&pull, &format!("docker pull\nberth log:\n{}", berth.logs()));
    let out = ok(
        &run(
            120,
            "docker",
            &["run", "--rm", &pulled, "/bin/busybox", "echo", "hello"],
            dc,
        ),
        "docker run",
    );
    assert_eq!(out.trim(), "hello", "docker pull said: {pull_out}");
    // The engine really came through berth with the license (logged by its fingerprint).
    let log = berth.logs();
    let fp = &support::sha256_hex(GOOD.as_bytes())[..32];
    assert!(
        log.lines()
            .any(|l| l.contains("/manifests/1") && l.contains("status=200") && l.contains(fp)),
        "no licensed manifest pull in berth's log:\n{log}"
    );
    assert!(
        !std::fs::read_to_string(docker_config.path().join("config.json"))
            .unwrap_or_default()
            .is_empty(),
        "docker login did not write the private DOCKER_CONFIG"
    );
}
