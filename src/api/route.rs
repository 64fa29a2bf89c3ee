//! The route parser: turns a request path into a typed `Route` before anything else looks
//! at it. Pure: no I/O, no config. The names and references it yields are `oci::repo`
//! types, which the layers below take without knowing about HTTP paths.

use crate::error::Error;
use crate::oci::repo::{HostedPath, Reference, RepoPath};
use crate::oci::Digest;

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
    /// Push to proxied repositories, delete, catalog: not offered.
    Unsupported(&'static str),
    NotFound,
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
    // The first component says the space: `proxy/…` is pulled through, anything else is
    // `<app>/<repository>`, hosted.
    let proxied = rest.starts_with("proxy/");
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(if proxied {
            Route::Tags {
                repo: RepoPath::parse(name)?,
            }
        } else {
            Route::HostedTags {
                repo: HostedPath::parse(name)?,
            }
        });
    }
    if let Some((name, tail)) = rest.split_once("/blobs/uploads") {
        if proxied {
            return Ok(Route::Unsupported("proxied repositories are pull-only"));
        }
        let repo = HostedPath::parse(name)?;
        return match tail {
            "" | "/" => Ok(Route::UploadStart { repo }),
            _ => {
                let id = tail.strip_prefix('/').unwrap_or("");
                if !valid_upload_id(id) {
                    return Err(Error::BlobUploadUnknown(format!("{id:?} is no upload")));
                }
                Ok(Route::Upload {
                    repo,
                    id: id.to_string(),
                })
            }
        };
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let reference = Reference::parse(reference)?;
        return Ok(if proxied {
            Route::Manifest {
                repo: RepoPath::parse(name)?,
                reference,
            }
        } else {
            Route::HostedManifest {
                repo: HostedPath::parse(name)?,
                reference,
            }
        });
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        let digest = digest
            .parse()
            .map_err(|_| Error::DigestInvalid(format!("{digest:?} is not a valid digest")))?;
        return Ok(if proxied {
            Route::Blob {
                repo: RepoPath::parse(name)?,
                digest,
            }
        } else {
            Route::HostedBlob {
                repo: HostedPath::parse(name)?,
                digest,
            }
        });
    }
    if let Some((name, digest)) = rest.rsplit_once("/referrers/") {
        let digest = digest
            .parse()
            .map_err(|_| Error::DigestInvalid(format!("{digest:?} is not a valid digest")))?;
        return Ok(if proxied {
            Route::Referrers {
                repo: RepoPath::parse(name)?,
                digest,
            }
        } else {
            Route::HostedReferrers {
                repo: HostedPath::parse(name)?,
                digest,
            }
        });
    }
    Ok(Route::NotFound)
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
}
