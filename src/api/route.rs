//! The route parser: turns a request path into a typed `Route` before anything else looks
//! at it. Pure: no I/O, no config. The names and references it yields are `oci::repo`
//! types, which the layers below take without knowing about HTTP paths.

use crate::error::Error;
use crate::oci::repo::{HostedPath, MirrorPath, Reference, RepoPath};
use crate::oci::Digest;

/// What a mirror request asks of its repository: the pull endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorOp {
    Manifest(Reference),
    Blob(Digest),
    Tags,
    Referrers(Digest),
}

impl MirrorOp {
    /// The route it is for a repository of the caller's app.
    pub fn route(self, repo: RepoPath) -> Route {
        match self {
            MirrorOp::Manifest(reference) => Route::Manifest { repo, reference },
            MirrorOp::Blob(digest) => Route::Blob { repo, digest },
            MirrorOp::Tags => Route::Tags { repo },
            MirrorOp::Referrers(digest) => Route::Referrers { repo, digest },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check (and docker login's probe).
    Base,
    Manifest {
        repo: RepoPath,
        reference: Reference,
    },
    Blob {
        repo: RepoPath,
        digest: Digest,
    },
    Tags {
        repo: RepoPath,
    },
    Referrers {
        repo: RepoPath,
        digest: Digest,
    },
    /// A hosted repository's manifest (pull with GET/HEAD, push with PUT).
    HostedManifest {
        repo: HostedPath,
        reference: Reference,
    },
    HostedBlob {
        repo: HostedPath,
        digest: Digest,
    },
    HostedTags {
        repo: HostedPath,
    },
    /// The referrers of a manifest in a hosted repository.
    HostedReferrers {
        repo: HostedPath,
        digest: Digest,
    },
    /// `GET /v2/_catalog`: the hosted repositories the caller may see.
    Catalog,
    /// `POST /v2/<app>/<repository>/blobs/uploads/`: begins an upload (or mounts, or
    /// uploads monolithically with `?digest=`).
    UploadStart {
        repo: HostedPath,
    },
    /// `/v2/<app>/<repository>/blobs/uploads/<id>`: PATCH, PUT, GET, DELETE of an upload.
    Upload {
        repo: HostedPath,
        id: String,
    },
    /// A pull sent to berth as a node's registry mirror (`?ns=<host>`, or Docker Hub's
    /// `registry-mirrors`): served from the caller's app's upstream for that registry.
    Mirror {
        mirror: MirrorPath,
        op: MirrorOp,
    },
    /// Push to proxied repositories, delete, catalog: not offered.
    Unsupported(&'static str),
    NotFound,
}

/// What a path without `proxy/` names, decided with berth's own names: the apps (an app's
/// slug as the first component is its hosted content) and berth's host name (a mirror
/// request whose `ns` is berth itself is a plain request).
pub struct Spaces<'a, F: Fn(&str) -> bool> {
    pub own_host: &'a str,
    pub is_app: F,
}

/// Parses a request: its method (`pull` for GET and HEAD), path and query. The one
/// precedence rule of berth's names, in order:
/// 1. `/v2/proxy/<app>/<host>/<repository>/…` is pulled through (any `ns` is ignored: it is
///    what containerd adds to an `override_path` mirror);
/// 2. a pull with `?ns=<host>` is a registry mirror request for `<host>/<repository>`;
/// 3. `/v2/<app>/<repository>/…`, where `<app>` is an app's slug, is hosted content;
/// 4. any other pull is Docker's `registry-mirrors`: a Docker Hub repository.
pub fn parse_request<F: Fn(&str) -> bool>(
    pull: bool,
    path: &str,
    query: Option<&str>,
    spaces: &Spaces<'_, F>,
) -> Result<Route, Error> {
    if pull {
        if let Some(r) = mirror(path, query, spaces)? {
            return Ok(r);
        }
    }
    parse_for(pull, path)
}

/// The mirror request a pull is (rules 2 and 4 of [`parse_request`]), if it is one.
fn mirror<F: Fn(&str) -> bool>(
    path: &str,
    query: Option<&str>,
    spaces: &Spaces<'_, F>,
) -> Result<Option<Route>, Error> {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Ok(None);
    };
    if rest == "_catalog" || rest.starts_with("proxy/") {
        return Ok(None);
    }
    let ns = ns_of(query).filter(|h| !h.eq_ignore_ascii_case(spaces.own_host));
    let host = match ns {
        Some(h) => h,
        None if !(spaces.is_app)(rest.split('/').next().unwrap_or("")) => {
            crate::oci::name::DOCKER_HUB.to_string()
        }
        None => return Ok(None),
    };
    let Some((name, tail)) = split(rest) else {
        return Ok(None);
    };
    let op = match tail {
        Tail::Uploads(_) => return Ok(None),
        Tail::Tags => MirrorOp::Tags,
        Tail::Manifest(r) => MirrorOp::Manifest(Reference::parse(r).map_err(|e| match e {
            Error::TagInvalid(m) => Error::ManifestUnknown(m),
            e => e,
        })?),
        Tail::Blob(d) => MirrorOp::Blob(digest(d)?),
        Tail::Referrers(d) => MirrorOp::Referrers(digest(d)?),
    };
    Ok(Some(Route::Mirror {
        mirror: MirrorPath::new(&host, name)?,
        op,
    }))
}

/// The `ns` query parameter: the registry the node's image reference names.
pub fn ns_of(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// As [`parse`], for a request: a pull (GET, HEAD) of a manifest whose reference is no
/// valid tag or digest asks for a manifest that does not exist, 404 `MANIFEST_UNKNOWN` as
/// the spec says (a push of one is a bad tag, 400).
pub fn parse_for(pull: bool, path: &str) -> Result<Route, Error> {
    match parse(path) {
        Err(Error::TagInvalid(m)) if pull && path.contains("/manifests/") => {
            Err(Error::ManifestUnknown(m))
        }
        r => r,
    }
}

/// What follows a repository name in a path.
enum Tail<'a> {
    Tags,
    /// `/blobs/uploads` and what follows it.
    Uploads(&'a str),
    Manifest(&'a str),
    Blob(&'a str),
    Referrers(&'a str),
}

/// Splits `<name>/<endpoint>`. A repository may itself hold a component named like an
/// endpoint word (`acme/manifests/manifests/v1`), so the endpoint is found from the right.
fn split(rest: &str) -> Option<(&str, Tail<'_>)> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some((name, Tail::Tags));
    }
    if let Some((name, tail)) = rest.split_once("/blobs/uploads") {
        return Some((name, Tail::Uploads(tail)));
    }
    if let Some((name, r)) = rest.rsplit_once("/manifests/") {
        return Some((name, Tail::Manifest(r)));
    }
    if let Some((name, d)) = rest.rsplit_once("/blobs/") {
        return Some((name, Tail::Blob(d)));
    }
    if let Some((name, d)) = rest.rsplit_once("/referrers/") {
        return Some((name, Tail::Referrers(d)));
    }
    None
}

fn digest(d: &str) -> Result<Digest, Error> {
    d.parse()
        .map_err(|_| Error::DigestInvalid(format!("{d:?} is not a valid digest")))
}

/// Parses the path of a request. Errors are client errors (4xx) about the name or reference.
pub fn parse(path: &str) -> Result<Route, Error> {
    if path == "/v2" || path == "/v2/" {
        return Ok(Route::Base);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Ok(Route::NotFound);
    };
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let Some((name, tail)) = split(rest) else {
        return Ok(Route::NotFound);
    };
    // The first component says the space: `proxy/…` is pulled through, anything else is
    // `<app>/<repository>`, hosted.
    if rest.starts_with("proxy/") {
        return Ok(match tail {
            Tail::Uploads(_) => Route::Unsupported("proxied repositories are pull-only"),
            Tail::Tags => Route::Tags {
                repo: RepoPath::parse(name)?,
            },
            Tail::Manifest(r) => {
                let reference = Reference::parse(r)?;
                Route::Manifest {
                    repo: RepoPath::parse(name)?,
                    reference,
                }
            }
            Tail::Blob(d) => {
                let digest = digest(d)?;
                Route::Blob {
                    repo: RepoPath::parse(name)?,
                    digest,
                }
            }
            Tail::Referrers(d) => {
                let digest = digest(d)?;
                Route::Referrers {
                    repo: RepoPath::parse(name)?,
                    digest,
                }
            }
        });
    }
    Ok(match tail {
        Tail::Tags => Route::HostedTags {
            repo: HostedPath::parse(name)?,
        },
        Tail::Uploads(tail) => {
            let repo = HostedPath::parse(name)?;
            match tail {
                "" | "/" => Route::UploadStart { repo },
                _ => {
                    let id = tail.strip_prefix('/').unwrap_or("");
                    if !valid_upload_id(id) {
                        return Err(Error::BlobUploadUnknown(format!("{id:?} is no upload")));
                    }
                    Route::Upload {
                        repo,
                        id: id.to_string(),
                    }
                }
            }
        }
        Tail::Manifest(r) => {
            let reference = Reference::parse(r)?;
            Route::HostedManifest {
                repo: HostedPath::parse(name)?,
                reference,
            }
        }
        Tail::Blob(d) => {
            let digest = digest(d)?;
            Route::HostedBlob {
                repo: HostedPath::parse(name)?,
                digest,
            }
        }
        Tail::Referrers(d) => {
            let digest = digest(d)?;
            Route::HostedReferrers {
                repo: HostedPath::parse(name)?,
                digest,
            }
        }
    })
}

/// Upload ids are berth's own (hex of random bytes); anything else names no upload.
fn valid_upload_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn repo() -> RepoPath {
        RepoPath {
            app: "acme".into(),
            host: "quay.io".into(),
            repository: "acme/api".into(),
        }
    }

    #[test]
    fn parses_pull_routes() {
        assert_eq!(parse("/v2/").unwrap(), Route::Base);
        assert_eq!(parse("/v2").unwrap(), Route::Base);
        assert_eq!(
            parse("/v2/proxy/acme/quay.io/acme/api/manifests/1.2").unwrap(),
            Route::Manifest {
                repo: repo(),
                reference: Reference::Tag("1.2".into())
            }
        );
        assert_eq!(
            parse(&format!("/v2/proxy/acme/quay.io/acme/api/blobs/{D}")).unwrap(),
            Route::Blob {
                repo: repo(),
                digest: D.parse().unwrap()
            }
        );
        assert_eq!(
            parse("/v2/proxy/acme/quay.io/acme/api/tags/list").unwrap(),
            Route::Tags { repo: repo() }
        );
        assert!(matches!(
            parse(&format!("/v2/proxy/acme/quay.io/acme/api/referrers/{D}")).unwrap(),
            Route::Referrers { .. }
        ));
        // A repository may itself contain a "manifests" component.
        assert_eq!(
            parse("/v2/proxy/acme/quay.io/acme/manifests/manifests/v1").unwrap(),
            Route::Manifest {
                repo: RepoPath {
                    repository: "acme/manifests".into(),
                    ..repo()
                },
                reference: Reference::Tag("v1".into())
            }
        );
        assert_eq!(
            parse("/v2/proxy/acme/localhost:5000/x/manifests/v1").unwrap(),
            Route::Manifest {
                repo: RepoPath {
                    app: "acme".into(),
                    host: "localhost:5000".into(),
                    repository: "x".into()
                },
                reference: Reference::Tag("v1".into())
            }
        );
    }

    #[test]
    fn rejects_bad_input() {
        let bad_names = [
            "/v2/proxy/acme/quay.io/../api/manifests/1",
            "/v2/proxy/acme/quay.io//api/manifests/1",
            "/v2/proxy/acme/quay.io/Acme/manifests/1",
            "/v2/proxy/acme/quay.io/manifests/1",
            "/v2/proxy/ac%2e/quay.io/a/manifests/1",
            "/v2/proxy/acme/Quay.io/a/manifests/1",
        ];
        for p in bad_names {
            assert!(
                matches!(parse(p), Err(Error::NameInvalid(_))),
                "{p}: {:?}",
                parse(p)
            );
        }
        let long = format!(
            "/v2/proxy/acme/quay.io/{}/manifests/1",
            "a/".repeat(150) + "a"
        );
        assert!(matches!(parse(&long), Err(Error::NameInvalid(_))));
        assert!(matches!(
            parse("/v2/proxy/acme/quay.io/a/blobs/sha256:abc"),
            Err(Error::DigestInvalid(_))
        ));
        assert!(matches!(
            parse("/v2/proxy/acme/quay.io/a/manifests/sha256:zz"),
            Err(Error::DigestInvalid(_))
        ));
        assert!(matches!(
            parse("/v2/proxy/acme/quay.io/a/manifests/-bad"),
            Err(Error::TagInvalid(_))
        ));
        assert!(matches!(
            parse("/v2/redis/manifests/7"),
            Err(Error::NameUnknown(_))
        ));
        assert_eq!(parse("/other").unwrap(), Route::NotFound);
        assert!(parse("/v2/proxy/acme/reg.example_5000/a/manifests/1").is_ok());
        assert!(parse("/v2/proxy/acme/reg_example/a/manifests/1").is_err());
        assert!(matches!(
            parse("/v2/proxy/acme/quay.io/a/blobs/uploads/"),
            Ok(Route::Unsupported(_))
        ));
    }

    fn hosted() -> HostedPath {
        HostedPath {
            app: "acme".into(),
            repository: "team/worker".into(),
        }
    }

    #[test]
    fn parses_hosted_routes() {
        assert_eq!(
            parse("/v2/acme/team/worker/manifests/1.0").unwrap(),
            Route::HostedManifest {
                repo: hosted(),
                reference: Reference::Tag("1.0".into())
            }
        );
        assert_eq!(
            parse(&format!("/v2/acme/team/worker/manifests/{D}")).unwrap(),
            Route::HostedManifest {
                repo: hosted(),
                reference: Reference::Digest(D.parse().unwrap())
            }
        );
        assert_eq!(
            parse(&format!("/v2/acme/team/worker/blobs/{D}")).unwrap(),
            Route::HostedBlob {
                repo: hosted(),
                digest: D.parse().unwrap()
            }
        );
        assert_eq!(
            parse("/v2/acme/team/worker/tags/list").unwrap(),
            Route::HostedTags { repo: hosted() }
        );
        for p in [
            "/v2/acme/team/worker/blobs/uploads/",
            "/v2/acme/team/worker/blobs/uploads",
        ] {
            assert_eq!(
                parse(p).unwrap(),
                Route::UploadStart { repo: hosted() },
                "{p}"
            );
        }
        assert_eq!(
            parse("/v2/acme/team/worker/blobs/uploads/0a1b-c2").unwrap(),
            Route::Upload {
                repo: hosted(),
                id: "0a1b-c2".into()
            }
        );
        // A hosted repository named like a route word is still a repository.
        assert_eq!(
            parse("/v2/acme/blobs/manifests/v1").unwrap(),
            Route::HostedManifest {
                repo: HostedPath {
                    app: "acme".into(),
                    repository: "blobs".into()
                },
                reference: Reference::Tag("v1".into())
            }
        );
        // Proxied pushes stay refused, proxied pulls stay proxied.
        assert!(matches!(
            parse("/v2/proxy/acme/quay.io/a/blobs/uploads/x"),
            Ok(Route::Unsupported(_))
        ));
        assert!(matches!(
            parse("/v2/proxy/acme/quay.io/a/manifests/1"),
            Ok(Route::Manifest { .. })
        ));
    }

    #[test]
    fn rejects_bad_hosted_input() {
        for p in [
            "/v2/Acme/worker/manifests/1",
            "/v2/acme/../manifests/1",
            "/v2/acme//worker/manifests/1",
            "/v2/acme/Worker/tags/list",
        ] {
            assert!(
                matches!(parse(p), Err(Error::NameInvalid(_))),
                "{p}: {:?}",
                parse(p)
            );
        }
        for p in [
            "/v2/acme/worker/blobs/uploads/../x",
            "/v2/acme/worker/blobs/uploads/a/b",
            "/v2/acme/worker/blobs/uploads/a%20b",
        ] {
            assert!(
                matches!(parse(p), Err(Error::BlobUploadUnknown(_))),
                "{p}: {:?}",
                parse(p)
            );
        }
        assert!(matches!(
            parse("/v2/acme/worker/blobs/sha256:zz"),
            Err(Error::DigestInvalid(_))
        ));
        assert!(matches!(
            parse(&format!("/v2/acme/worker/referrers/{D}")),
            Ok(Route::HostedReferrers { .. })
        ));
        assert_eq!(parse("/v2/_catalog").unwrap(), Route::Catalog);
        // A pull of a manifest by a reference that is no tag is of a missing manifest; a
        // push of one is a bad tag.
        assert!(matches!(
            parse_for(true, "/v2/acme/worker/manifests/.INVALID_MANIFEST_NAME"),
            Err(Error::ManifestUnknown(_))
        ));
        assert!(matches!(
            parse_for(false, "/v2/acme/worker/manifests/.INVALID_MANIFEST_NAME"),
            Err(Error::TagInvalid(_))
        ));
    }

    #[test]
    fn mirror_requests_follow_the_precedence_rule() {
        let is_app = |s: &str| s == "acme";
        let spaces = Spaces {
            own_host: "images.acme.test",
            is_app,
        };
        let p = |pull, path: &str, q| parse_request(pull, path, q, &spaces);
        let mirror = |host: &str, repository: &str| MirrorPath {
            host: host.into(),
            repository: repository.into(),
        };
        // ns names the registry, whatever the first component is.
        assert_eq!(
            p(true, "/v2/acme/api/manifests/1.2", Some("ns=quay.io")).unwrap(),
            Route::Mirror {
                mirror: mirror("quay.io", "acme/api"),
                op: MirrorOp::Manifest(Reference::Tag("1.2".into()))
            }
        );
        assert_eq!(
            p(
                true,
                "/v2/app/tags/list",
                Some("n=2&ns=registry.local:5000")
            )
            .unwrap(),
            Route::Mirror {
                mirror: mirror("registry.local:5000", "app"),
                op: MirrorOp::Tags
            }
        );
        assert!(matches!(
            p(true, &format!("/v2/library/redis/blobs/{D}"), Some("ns=index.docker.io")),
            Ok(Route::Mirror { mirror: m, op: MirrorOp::Blob(_) }) if m == mirror("docker.io", "library/redis")
        ));
        // An app's slug without ns is hosted; another name without ns is Docker Hub.
        assert!(matches!(
            p(true, "/v2/acme/api/manifests/1", None),
            Ok(Route::HostedManifest { .. })
        ));
        assert!(matches!(
            p(true, "/v2/library/redis/manifests/7", None),
            Ok(Route::Mirror { mirror: m, .. }) if m == mirror("docker.io", "library/redis")
        ));
        // berth's own name as ns, proxy/ paths (override_path) and pushes are not mirrored.
        assert!(matches!(
            p(
                true,
                "/v2/acme/api/manifests/1",
                Some("ns=Images.Acme.Test")
            ),
            Ok(Route::HostedManifest { .. })
        ));
        assert!(matches!(
            p(
                true,
                "/v2/proxy/acme/quay.io/a/manifests/1",
                Some("ns=quay.io")
            ),
            Ok(Route::Manifest { .. })
        ));
        assert!(matches!(
            p(false, "/v2/acme/api/manifests/1", Some("ns=quay.io")),
            Ok(Route::HostedManifest { .. })
        ));
        assert!(matches!(
            p(true, "/v2/_catalog", Some("ns=quay.io")),
            Ok(Route::Catalog)
        ));
        // Bad input stays a client error: a bad host, name, tag or digest.
        assert!(matches!(
            p(true, "/v2/a/manifests/1", Some("ns=quay.io%2Fx")),
            Err(Error::NameInvalid(_))
        ));
        assert!(matches!(
            p(true, "/v2/A/manifests/1", Some("ns=quay.io")),
            Err(Error::NameInvalid(_))
        ));
        assert!(matches!(
            p(true, "/v2/a/manifests/-x", Some("ns=quay.io")),
            Err(Error::ManifestUnknown(_))
        ));
        assert!(matches!(
            p(true, "/v2/a/blobs/sha256:zz", Some("ns=quay.io")),
            Err(Error::DigestInvalid(_))
        ));
    }
}
