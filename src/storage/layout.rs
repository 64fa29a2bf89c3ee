//! Every storage key berth uses, named once. Callers build typed keys ([`ObjectKey`],
//! [`ObjectPrefix`], a blob's [`Digest`]); only this module turns them into the relative
//! paths a backend stores them under (a file under `cache.dir` for the filesystem backend,
//! an object name under a bucket prefix for an object store). The paths are today's
//! on-disk format and must stay so: an existing cache directory is served as it is.
//!
//! ```text
//! sha256/<hex>                                   blobs (verified, then renamed in)
//! manifests/sha256/<hex>                         manifest bytes, byte-exact
//! manifests/sha256/<hex>.type                    their media type
//! repositories/<repo>/_tags/<tag>/<accept>.json tag answers, per repository and Accept set
//! tags/<upstream>/<repository>/<tag>/<accept>.json   tag answers as berth wrote them before
//!                                                the content model (read, then moved)
//! links.log                                      repository links (append-only; the line
//!                                                format is `content::links`'s)
//! pins                                           pinned blobs (append-only, one hex a line)
//! tmp/                                           staged writes (local only)
//! tmp/airgap-*  tmp/.airgap-*                    airgap import staging (local only)
//! lock                                           serve (shared) vs purge (exclusive)
//! token.key                                      the token signing key, unless auth.token_key_file says
//! ```
//!
//! `<repo>` is the content model's repository path (`proxy/<app>/<host>/<repository>`,
//! `content::RepoKey::path`). `_tags` cannot be a repository name component (those never
//! start with `_`), so a path splits back into repository and tag unambiguously.

use std::path::{Path, PathBuf};

use crate::oci::digest::Algorithm;
use crate::oci::Digest;

const BLOBS: &str = "sha256";
const MANIFESTS: &str = "manifests/sha256";
const MEDIA_TYPE_SUFFIX: &str = ".type";
const REPOS: &str = "repositories";
const REPO_TAGS: &str = "_tags";
const LEGACY_TAGS: &str = "tags";
const TAG_SUFFIX: &str = ".json";
const LINKS: &str = "links.log";
const PINS: &str = "pins";
const TMP: &str = "tmp";
const LOCK: &str = "lock";
const READYZ_PROBE: &str = ".readyz";
const STATE_DB: &str = "state.db";
const TOKEN_KEY: &str = "token.key";

/// Staging directories of airgap imports are `tmp/<STAGE_PREFIX>…` (created as
/// `tmp/.<STAGE_PREFIX>…`, locked, then renamed).
pub const STAGE_PREFIX: &str = "airgap-";

/// Where a tag answer lives: one per (repository, tag, Accept set).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagPath {
    /// The repository's path in the content model (`proxy/<app>/<host>/<repository>`).
    pub repo: String,
    pub tag: String,
    /// Short hash of the normalized Accept set.
    pub accept: String,
}

/// Where a tag answer lived before the content model: keyed by upstream name, not by the
/// app's repository. Read (and moved to a [`TagPath`]) so an existing cache keeps working.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LegacyTagPath {
    pub upstream: String,
    pub repository: String,
    pub tag: String,
    pub accept: String,
}

/// A small object: read and written whole (or appended to, for the two logs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectKey {
    /// A manifest's bytes.
    Manifest(Digest),
    /// A manifest's media type, next to its bytes.
    ManifestMediaType(Digest),
    TagAnswer(TagPath),
    LegacyTagAnswer(LegacyTagPath),
    /// The repository links log.
    Links,
    /// The pinned blobs log.
    Pins,
}

/// A set of small objects to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectPrefix {
    /// Every manifest (bytes and media types).
    Manifests,
    /// Every tag answer.
    Tags,
    /// The answers recorded for one tag, whatever their Accept set.
    TagAnswers { repo: String, tag: String },
    /// Every tag answer of the format before the content model.
    LegacyTags,
    /// The old-format answers recorded for one tag.
    LegacyTagAnswers {
        upstream: String,
        repository: String,
        tag: String,
    },
}

/// Blobs are stored under `sha256/` only: other algorithms are passed through, not cached.
pub fn is_storable(d: &Digest) -> bool {
    d.algorithm() == Algorithm::Sha256
}

/// The relative path of a blob.
pub fn blob(d: &Digest) -> String {
    format!("{BLOBS}/{}", d.hex())
}

/// The directory blobs live in (relative).
pub fn blob_dir() -> &'static str {
    BLOBS
}

/// The digest a file name in [`blob_dir`] stands for; `None` for anything else (junk a
/// backend may remove).
pub fn blob_from_name(name: &str) -> Option<Digest> {
    Digest::from_sha256_hex(name)
}

impl ObjectKey {
    /// The relative path the object is stored under.
    pub fn path(&self) -> String {
        match self {
            // The directory says sha256 whatever the algorithm: that is where today's
            // format puts every manifest, so it stays.
            ObjectKey::Manifest(d) => format!("{MANIFESTS}/{}", d.hex()),
            ObjectKey::ManifestMediaType(d) => {
                format!("{MANIFESTS}/{}{MEDIA_TYPE_SUFFIX}", d.hex())
            }
            // Every part was validated by the route parser (no "..", no empty components).
            ObjectKey::TagAnswer(t) => format!(
                "{REPOS}/{}/{REPO_TAGS}/{}/{}{TAG_SUFFIX}",
                t.repo, t.tag, t.accept
            ),
            ObjectKey::LegacyTagAnswer(t) => format!(
                "{LEGACY_TAGS}/{}/{}/{}/{}{TAG_SUFFIX}",
                t.upstream, t.repository, t.tag, t.accept
            ),
            ObjectKey::Links => LINKS.to_string(),
            ObjectKey::Pins => PINS.to_string(),
        }
    }

    /// The key a relative path (as [`ObjectKey::path`] makes them) stands for; `None` for a
    /// path no key has.
    pub fn parse(path: &str) -> Option<ObjectKey> {
        if path == LINKS {
            return Some(ObjectKey::Links);
        }
        if path == PINS {
            return Some(ObjectKey::Pins);
        }
        if let Some(name) = path
            .strip_prefix(MANIFESTS)
            .and_then(|p| p.strip_prefix('/'))
        {
            let (hex, typed) = match name.strip_suffix(MEDIA_TYPE_SUFFIX) {
                Some(h) => (h, true),
                None => (name, false),
            };
            let alg = match hex.len() {
                64 => "sha256",
                128 => "sha512",
                _ => return None,
            };
            let d: Digest = format!("{alg}:{hex}").parse().ok()?;
            return Some(if typed {
                ObjectKey::ManifestMediaType(d)
            } else {
                ObjectKey::Manifest(d)
            });
        }
        if let Some(rest) = path.strip_prefix(REPOS).and_then(|p| p.strip_prefix('/')) {
            let parts: Vec<&str> = rest.split('/').collect();
            // repo (one or more parts) / _tags / tag / accept.json
            let n = parts.len();
            if n < 4 || parts.iter().any(|p| p.is_empty()) || parts[n - 3] != REPO_TAGS {
                return None;
            }
            let accept = parts[n - 1].strip_suffix(TAG_SUFFIX)?;
            return Some(ObjectKey::TagAnswer(TagPath {
                repo: parts[..n - 3].join("/"),
                tag: parts[n - 2].to_string(),
                accept: accept.to_string(),
            }));
        }
        let rest = path.strip_prefix(LEGACY_TAGS)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        // upstream / repository (one or more parts) / tag / accept.json
        if parts.len() < 4 || parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        let accept = parts[parts.len() - 1].strip_suffix(TAG_SUFFIX)?;
        Some(ObjectKey::LegacyTagAnswer(LegacyTagPath {
            upstream: parts[0].to_string(),
            repository: parts[1..parts.len() - 2].join("/"),
            tag: parts[parts.len() - 2].to_string(),
            accept: accept.to_string(),
        }))
    }
}

impl ObjectPrefix {
    /// The relative directory (prefix) the set lives under.
    pub fn path(&self) -> String {
        match self {
            ObjectPrefix::Manifests => MANIFESTS.to_string(),
            ObjectPrefix::Tags => REPOS.to_string(),
            ObjectPrefix::TagAnswers { repo, tag } => format!("{REPOS}/{repo}/{REPO_TAGS}/{tag}"),
            ObjectPrefix::LegacyTags => LEGACY_TAGS.to_string(),
            ObjectPrefix::LegacyTagAnswers {
                upstream,
                repository,
                tag,
            } => format!("{LEGACY_TAGS}/{upstream}/{repository}/{tag}"),
        }
    }

    pub fn contains(&self, key: &ObjectKey) -> bool {
        match (self, key) {
            (ObjectPrefix::Manifests, ObjectKey::Manifest(_) | ObjectKey::ManifestMediaType(_)) => {
                true
            }
            (ObjectPrefix::Tags, ObjectKey::TagAnswer(_)) => true,
            (ObjectPrefix::TagAnswers { repo, tag }, ObjectKey::TagAnswer(t)) => {
                t.repo == *repo && t.tag == *tag
            }
            (ObjectPrefix::LegacyTags, ObjectKey::LegacyTagAnswer(_)) => true,
            (
                ObjectPrefix::LegacyTagAnswers {
                    upstream,
                    repository,
                    tag,
                },
                ObjectKey::LegacyTagAnswer(t),
            ) => t.upstream == *upstream && t.repository == *repository && t.tag == *tag,
            _ => false,
        }
    }
}

/// Directories a local (filesystem) store creates before use, relative.
pub fn local_dirs() -> [&'static str; 4] {
    [BLOBS, TMP, MANIFESTS, REPOS]
}

/// A relative path (from this module) under a local root.
pub fn local(root: &Path, rel: &str) -> PathBuf {
    rel.split('/').fold(root.to_path_buf(), |p, c| p.join(c))
}

/// Where staged writes (and airgap import staging directories) live, on the same
/// filesystem as the blobs so that committing is a rename.
pub fn tmp_dir(root: &Path) -> PathBuf {
    root.join(TMP)
}

/// The lock file: serving processes hold it shared, `cache purge` exclusively.
pub fn lock_file(root: &Path) -> PathBuf {
    root.join(LOCK)
}

/// The embedded control-plane database (licenses, API keys, usage), unless `state` names another.
pub fn state_db(root: &Path) -> PathBuf {
    root.join(STATE_DB)
}

/// Where the token signing key is kept when `auth.token_key_file` is not set.
pub fn token_key(root: &Path) -> PathBuf {
    root.join(TOKEN_KEY)
}

/// The file readiness writes and removes to see that the store takes writes.
pub fn readyz_probe(root: &Path) -> PathBuf {
    tmp_dir(root).join(READYZ_PROBE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_paths() {
        let d = Digest::sha256_of(b"m");
        let keys = [
            ObjectKey::Manifest(d.clone()),
            ObjectKey::ManifestMediaType(d.clone()),
            ObjectKey::TagAnswer(TagPath {
                repo: "proxy/acme/docker.io/library/nginx".into(),
                tag: "1.27".into(),
                accept: "0123456789abcdef".into(),
            }),
            // A tag named like the marker is still a tag.
            ObjectKey::TagAnswer(TagPath {
                repo: "proxy/acme/quay.io/a".into(),
                tag: "_tags".into(),
                accept: "k".into(),
            }),
            ObjectKey::LegacyTagAnswer(LegacyTagPath {
                upstream: "hub".into(),
                repository: "library/nginx".into(),
                tag: "1.27".into(),
                accept: "0123456789abcdef".into(),
            }),
            ObjectKey::Links,
            ObjectKey::Pins,
        ];
        for k in keys {
            assert_eq!(ObjectKey::parse(&k.path()), Some(k.clone()), "{}", k.path());
        }
        assert_eq!(ObjectKey::parse("tags/hub/1.27/x.json"), None);
        assert_eq!(ObjectKey::parse("repositories/proxy/a/b/1.27/x.json"), None);
        assert_eq!(ObjectKey::parse("repositories/_tags/1.27/x.json"), None);
        assert_eq!(ObjectKey::parse("manifests/sha256/zz"), None);
    }

    #[test]
    fn paths_are_todays_format() {
        let d = Digest::sha256_of(b"m");
        let hex = d.hex().to_string();
        assert_eq!(blob(&d), format!("sha256/{hex}"));
        assert_eq!(
            ObjectKey::Manifest(d.clone()).path(),
            format!("manifests/sha256/{hex}")
        );
        assert_eq!(
            ObjectKey::ManifestMediaType(d.clone()).path(),
            format!("manifests/sha256/{hex}.type")
        );
        let t = LegacyTagPath {
            upstream: "u".into(),
            repository: "a/b".into(),
            tag: "t".into(),
            accept: "k".into(),
        };
        assert_eq!(ObjectKey::LegacyTagAnswer(t).path(), "tags/u/a/b/t/k.json");
        let t = TagPath {
            repo: "proxy/acme/quay.io/a/b".into(),
            tag: "t".into(),
            accept: "k".into(),
        };
        assert_eq!(
            ObjectKey::TagAnswer(t).path(),
            "repositories/proxy/acme/quay.io/a/b/_tags/t/k.json"
        );
        assert_eq!(ObjectKey::Links.path(), "links.log");
        assert_eq!(ObjectKey::Pins.path(), "pins");
        assert_eq!(blob_from_name(&hex.to_uppercase()), None);
        assert_eq!(blob_from_name(&hex.to_string()), Some(d));
    }
}
