//! The route parser: turns a request path into a typed `Route` before anything else looks
//! at it. Pure: no I/O, no config. The names and references it yields are `oci::repo`
//! types, which the layers below take without knowing about HTTP paths.

use crate::error::Error;
use crate::oci::repo::{Reference, RepoPath};
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
    /// Push, delete, catalog: a pull-through proxy has no such thing.
    Unsupported(&'static str),
    NotFound,
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
        return Ok(Route::Unsupported("the catalog is not offered"));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::Tags {
            repo: RepoPath::parse(name)?,
        });
    }
    if let Some((name, _)) = rest.split_once("/blobs/uploads") {
        let _ = name;
        return Ok(Route::Unsupported("berth is a pull-only proxy"));
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let repo = RepoPath::parse(name)?;
        return Ok(Route::Manifest {
            repo,
            reference: Reference::parse(reference)?,
        });
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        let repo = RepoPath::parse(name)?;
        let digest = digest
            .parse()
            .map_err(|_| Error::DigestInvalid(format!("{digest:?} is not a valid digest")))?;
        return Ok(Route::Blob { repo, digest });
    }
    if let Some((name, digest)) = rest.rsplit_once("/referrers/") {
        let repo = RepoPath::parse(name)?;
        let digest = digest
            .parse()
            .map_err(|_| Error::DigestInvalid(format!("{digest:?} is not a valid digest")))?;
        return Ok(Route::Referrers { repo, digest });
    }
    Ok(Route::NotFound)
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
            parse("/v2/library/redis/manifests/7"),
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
}
