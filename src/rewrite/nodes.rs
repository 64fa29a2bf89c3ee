//! Node configuration for pulling through berth as a registry mirror: the files a
//! customer's container runtime reads (containerd's `hosts.toml`, CRI-O's and podman's
//! `registries.conf`, k3s/RKE2's `registries.yaml`, Docker's `daemon.json`), so a cluster
//! pulls `quay.io/acme/api:1.2` through berth without any spec being rewritten. Pure:
//! the CLI (`berth mirror-config`) gathers the app's registries and writes the files.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::upstream_component;
use crate::oci::name::DOCKER_HUB;

/// Which runtime the files are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `certs.d/<registry>/hosts.toml`, one per registry (containerd 1.5 and later, also
    /// under Kubernetes with the CRI plugin's `config_path`).
    Containerd,
    /// `registries.conf` mirror entries and an `auth.json` (CRI-O, podman, buildah, skopeo).
    CriO,
    /// `registries.yaml` (k3s and RKE2, which write containerd's hosts.toml from it).
    K3s,
    /// `daemon.json` `registry-mirrors` and the client's `config.json` login (Docker Hub only).
    Docker,
}

/// How containerd asks berth for an image (containerd only: the other runtimes have one
/// form each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `GET /v2/acme/api/manifests/1.2?ns=quay.io`: the registry mirror protocol; berth
    /// finds the app from the login.
    Ns,
    /// `override_path = true` on `<berth>/v2/proxy/<app>/<registry>`: the pull-through path,
    /// for runtimes or proxies in between that drop the query.
    OverridePath,
}

impl std::str::FromStr for Runtime {
    type Err = String;
    fn from_str(s: &str) -> Result<Runtime, String> {
        match s {
            "containerd" => Ok(Runtime::Containerd),
            "cri-o" | "crio" | "podman" => Ok(Runtime::CriO),
            "k3s" | "rke2" => Ok(Runtime::K3s),
            "docker" => Ok(Runtime::Docker),
            _ => Err(format!(
                "unknown runtime {s:?} (containerd, cri-o, k3s, docker)"
            )),
        }
    }
}

impl std::str::FromStr for Style {
    type Err = String;
    fn from_str(s: &str) -> Result<Style, String> {
        match s {
            "ns" => Ok(Style::Ns),
            "override-path" => Ok(Style::OverridePath),
            _ => Err(format!("unknown style {s:?} (ns, override-path)")),
        }
    }
}

/// What the files describe.
pub struct Mirror<'a> {
    /// berth as the nodes reach it: `https://images.vendor.com` (no path; `http://` for a
    /// plain-HTTP lab setup, which the files mark as insecure where the runtime needs it).
    pub url: &'a str,
    pub app: &'a str,
    /// The registries the app serves, as image references name them (`docker.io` for Hub).
    pub registries: &'a [String],
    /// The login (`username`, secret); none leaves credentials to the kubelet's pull
    /// secret, which the runtimes send to the mirror too.
    pub login: Option<(&'a str, &'a str)>,
}

/// One file to write, relative to the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub contents: String,
    /// Holds the license secret: written readable by its owner only.
    pub secret: bool,
}

/// Why no files can be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    #[error("app {0:?} serves no Docker Hub repository: Docker's registry-mirrors mirrors Docker Hub only (use --runtime containerd, cri-o or k3s, or rewrite the specs)")]
    NoDockerHub(String),
    #[error("app {0:?} has no upstream registry to mirror")]
    NoRegistries(String),
    #[error("--url {0:?}: expected http(s)://host[:port] without a path")]
    Url(String),
}

/// The files that make a node's `runtime` pull `m.registries` through berth.
pub fn files(runtime: Runtime, style: Style, m: &Mirror<'_>) -> Result<Vec<File>, MirrorError> {
    let (scheme, authority) = m
        .url
        .split_once("://")
        .filter(|(s, a)| (*s == "https" || *s == "http") && !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| MirrorError::Url(m.url.to_string()))?;
    let insecure = scheme == "http";
    if m.registries.is_empty() {
        return Err(MirrorError::NoRegistries(m.app.to_string()));
    }
    let auth = m.login.map(|(u, p)| STANDARD.encode(format!("{u}:{p}")));
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let header = format!(
        "# Pulls through berth ({}, app {}); written by `berth mirror-config`.\n",
        m.url, m.app
    );
    Ok(match runtime {
        Runtime::Containerd => m
            .registries
            .iter()
            .map(|r| {
                let server = if r == DOCKER_HUB {
                    "https://registry-1.docker.io".to_string()
                } else {
                    format!("https://{r}")
                };
                let host = match style {
                    Style::Ns => m.url.to_string(),
                    Style::OverridePath => {
                        format!("{}/v2/proxy/{}/{}", m.url, m.app, upstream_component(r))
                    }
                };
                let mut s = header.clone();
                s.push_str(
                    "# containerd tries `server` when berth answers an error or cannot be reached.\n",
                );
                s.push_str(&format!("server = {}\n\n[host.{}]\n", q(&server), q(&host)));
                s.push_str("  capabilities = [\"pull\", \"resolve\"]\n");
                if style == Style::OverridePath {
                    s.push_str("  override_path = true\n");
                }
                if let Some(a) = &auth {
                    s.push_str(&format!(
                        "  [host.{}.header]\n    Authorization = {}\n",
                        q(&host),
                        q(&format!("Basic {a}"))
                    ));
                }
                File {
                    path: format!("{r}/hosts.toml"),
                    contents: s,
                    secret: auth.is_some(),
                }
            })
            .collect(),
        Runtime::CriO => {
            let mut s = header.clone();
            for r in m.registries {
                s.push_str(&format!(
                    "\n[[registry]]\nprefix = {}\nlocation = {}\n\n[[registry.mirror]]\nlocation = {}\n",
                    q(r),
                    q(r),
                    q(&format!("{authority}/proxy/{}/{}", m.app, upstream_component(r)))
                ));
                if insecure {
                    s.push_str("insecure = true\n");
                }
            }
            let mut out = vec![File {
                path: "registries.conf".into(),
                contents: s,
                secret: false,
            }];
            if let Some(a) = &auth {
                out.push(File {
                    path: "auth.json".into(),
                    contents: auth_json(authority, a),
                    secret: true,
                });
            }
            out
        }
        Runtime::K3s => {
            let mut s = header.clone();
            s.push_str("mirrors:\n");
            for r in m.registries {
                s.push_str(&format!("  {}:\n    endpoint:\n      - {}\n", q(r), q(m.url)));
            }
            if let Some((u, p)) = m.login {
                s.push_str(&format!(
                    "configs:\n  {}:\n    auth:\n      username: {}\n      password: {}\n",
                    q(authority),
                    q(u),
                    q(p)
                ));
            }
            vec![File {
                path: "registries.yaml".into(),
                contents: s,
                secret: m.login.is_some(),
            }]
        }
        Runtime::Docker => {
            if !m.registries.iter().any(|r| r == DOCKER_HUB) {
                return Err(MirrorError::NoDockerHub(m.app.to_string()));
            }
            let mut daemon = serde_json::json!({ "registry-mirrors": [m.url] });
            if insecure {
                daemon["insecure-registries"] = serde_json::json!([authority]);
            }
            let mut out = vec![File {
                path: "daemon.json".into(),
                contents: format!("{daemon:#}\n"),
                secret: false,
            }];
            // dockerd sends the credentials of Docker Hub's index to its mirrors; `docker
            // login` would check them against Docker Hub itself, so the entry is written.
            if let Some(a) = &auth {
                out.push(File {
                    path: "config.json".into(),
                    contents: auth_json("https://index.docker.io/v1/", a),
                    secret: true,
                });
            }
            out
        }
    })
}

/// A `config.json`/`auth.json` with one login.
fn auth_json(key: &str, auth: &str) -> String {
    format!(
        "{:#}\n",
        serde_json::json!({ "auths": { key: { "auth": auth } } })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror<'a>(registries: &'a [String], login: Option<(&'a str, &'a str)>) -> Mirror<'a> {
        Mirror {
            url: "https://images.vendor.test",
            app: "acme",
            registries,
            login,
        }
    }

    #[test]
    fn containerd_gets_one_hosts_file_per_registry() {
        let regs = vec![
            "quay.io".to_string(),
            "docker.io".into(),
            "r.local:5000".into(),
        ];
        let f = files(
            Runtime::Containerd,
            Style::Ns,
            &mirror(&regs, Some(("lic", "s3cret"))),
        )
        .unwrap();
        let paths: Vec<&str> = f.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "quay.io/hosts.toml",
                "docker.io/hosts.toml",
                "r.local:5000/hosts.toml"
            ]
        );
        assert!(f[0].contents.contains("server = \"https://quay.io\"\n"));
        assert!(f[0]
            .contents
            .contains("[host.\"https://images.vendor.test\"]\n"));
        assert!(f[1]
            .contents
            .contains("server = \"https://registry-1.docker.io\""));
        let basic = format!("Basic {}", STANDARD.encode("lic:s3cret"));
        assert!(f[0]
            .contents
            .contains(&format!("Authorization = \"{basic}\"")));
        assert!(f.iter().all(|f| f.secret));
        let f = files(
            Runtime::Containerd,
            Style::OverridePath,
            &mirror(&regs, None),
        )
        .unwrap();
        assert!(f[2]
            .contents
            .contains("[host.\"https://images.vendor.test/v2/proxy/acme/r.local_5000\"]\n"));
        assert!(f[2].contents.contains("override_path = true"));
        assert!(!f[2].contents.contains("Authorization") && !f[2].secret);
    }

    #[test]
    fn other_runtimes_and_refusals() {
        let regs = vec!["quay.io".to_string()];
        let m = Mirror {
            url: "http://127.0.0.1:5000",
            ..mirror(&regs, Some(("lic", "s3cret")))
        };
        let f = files(Runtime::CriO, Style::Ns, &m).unwrap();
        assert!(f[0].contents.contains(
            "[[registry.mirror]]\nlocation = \"127.0.0.1:5000/proxy/acme/quay.io\"\ninsecure = true\n"
        ));
        assert_eq!(f[1].path, "auth.json");
        assert!(f[1].contents.contains("\"127.0.0.1:5000\""));
        let f = files(Runtime::K3s, Style::Ns, &m).unwrap();
        assert!(f[0]
            .contents
            .contains("  \"quay.io\":\n    endpoint:\n      - \"http://127.0.0.1:5000\"\n"));
        assert!(f[0].contents.contains("password: \"s3cret\""));
        assert_eq!(
            files(Runtime::Docker, Style::Ns, &m),
            Err(MirrorError::NoDockerHub("acme".into()))
        );
        let hub = vec!["docker.io".to_string()];
        let f = files(
            Runtime::Docker,
            Style::Ns,
            &Mirror {
                registries: &hub,
                ..m
            },
        )
        .unwrap();
        assert!(f[0].contents.contains("\"insecure-registries\""));
        assert!(f[1].contents.contains("https://index.docker.io/v1/"));
        for url in ["images.vendor.test", "https://x/y", "ftp://x"] {
            assert!(matches!(
                files(
                    Runtime::K3s,
                    Style::Ns,
                    &Mirror {
                        url,
                        ..mirror(&regs, None)
                    }
                ),
                Err(MirrorError::Url(_))
            ));
        }
    }
}
