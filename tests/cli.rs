//! The command line's shape: the global `--config` is accepted before and after the
//! subcommand, in both spellings, and a bad file still fails with exit code 2 naming the key.

mod support;

use std::time::Duration;

use support::berth::{run_cli, CliRun};

const TIMEOUT: Duration = Duration::from_secs(20);

fn config_file(dir: &std::path::Path, name: &str, listen: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "server: {{ listen: \"{listen}\", hostname: images.acme.test }}\n\
             cache: {{ dir: \"{}\" }}\n\
             upstreams:\n\
             \x20 - {{ name: up, url: \"http://127.0.0.1:1\", host: upstream.test }}\n\
             apps:\n\
             \x20 - {{ slug: acme, upstreams: [up] }}\n\
             licenses:\n\
             \x20 - {{ id: lic-cli-0123456789, app: acme, customer: Acme }}\n",
            dir.join("cache").display()
        ),
    )
    .expect("write config");
    path.to_str().expect("utf-8 path").to_string()
}

fn run(args: &[&str]) -> CliRun {
    run_cli(args, &[], None, TIMEOUT)
}

#[test]
fn global_config_is_accepted_before_and_after_the_subcommand() {
    let dir = support::tempdir();
    let good = config_file(dir.path(), "good.yaml", "127.0.0.1:1");
    let ok = format!("{good}: ok (1 upstreams, 1 apps, 1 licenses)\n");
    for args in [
        vec!["check-config", "--config", &good],
        vec!["check-config", "-c", &good],
        vec!["--config", &good, "check-config"],
        vec!["-c", &good, "check-config"],
    ] {
        let r = run(&args);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
        assert_eq!(r.stdout, ok, "{args:?}");
    }

    // A subcommand with flags of its own, and a nested one, read the same global value.
    let r = run(&[
        "--config",
        &good,
        "rewrite",
        "--app",
        "acme",
        "--image",
        "upstream.test/acme/api:1",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "images.acme.test/proxy/acme/upstream.test/acme/api:1\n"
    );
    std::fs::create_dir(dir.path().join("cache")).expect("cache dir");
    let r = run(&["-c", &good, "cache", "stats"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.starts_with(&format!(
            "cache:      {}\n",
            dir.path().join("cache").display()
        )),
        "{}",
        r.stdout
    );

    // Given on both sides, the one after the subcommand wins (clap's rule for globals).
    let bad = config_file(dir.path(), "bad.yaml", "not-an-address");
    let r = run(&["--config", &bad, "check-config", "--config", &good]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, ok);

    // An invalid file named before the subcommand fails like one named after it.
    for args in [
        vec!["--config", &bad, "check-config"],
        vec!["check-config", "--config", &bad],
    ] {
        let r = run(&args);
        assert_eq!(r.code, Some(2), "{args:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        assert!(
            r.stderr
                .starts_with("berth: invalid configuration: server.listen"),
            "{args:?}: {}",
            r.stderr
        );
    }
}
