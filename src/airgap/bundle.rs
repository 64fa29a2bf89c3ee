//! Reading a bundle: one pass over the tar that refuses unsafe entries (`..`, absolute
//! paths, links, devices), hashes every blob as it streams past (optionally copying it into
//! a staging directory), and then checks that everything `index.json` reaches is there with
//! the size its descriptor claims. Nothing is trusted before that pass has finished.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{ANN_APP, ANN_REF_NAME, ANN_UPSTREAM_REF};
use crate::oci::digest::Algorithm;
use crate::oci::manifest::{Descriptor, Manifest, Platform};
use crate::oci::media::{MAX_MANIFEST, OCI_MANIFEST};
use crate::oci::Digest;

/// Why a bundle is refused; the message names the tar entry or digest at fault.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(msg: impl Into<String>) -> BundleError {
    BundleError::Invalid(msg.into())
}

/// Where a verified blob is: its byte range in the tar, and its staged copy if any.
#[derive(Debug, Clone)]
pub struct BlobEntry {
    pub offset: u64,
    pub size: u64,
    pub staged: Option<PathBuf>,
}

pub struct Bundle {
    pub path: PathBuf,
    pub index: Vec<Descriptor>,
    /// Verified blobs by digest (sha256 only).
    pub blobs: HashMap<Digest, BlobEntry>,
}

/// One image of the bundle: an `index.json` entry and everything it reaches.
#[derive(Debug, Clone)]
pub struct Image {
    pub top: Descriptor,
    pub ref_name: Option<String>,
    pub upstream_ref: Option<String>,
    pub app: Option<String>,
    /// Every manifest (the top one and, for an index, its children), children first so a
    /// registry that checks references accepts them in this order.
    pub manifests: Vec<Descriptor>,
    /// Configs and layers with their sizes.
    pub blob_sizes: BTreeMap<Digest, u64>,
    pub platforms: Vec<Platform>,
}

impl Image {
    /// The reference to show: the upstream one, else the layout's name, else the digest.
    pub fn display_ref(&self) -> String {
        self.upstream_ref
            .clone()
            .or_else(|| self.ref_name.clone())
            .unwrap_or_else(|| self.top.digest.to_string())
    }
}

/// Normalizes a tar path, refusing anything that could land outside the layout.
pub fn safe_path(raw: &str) -> Result<String, String> {
    if raw.starts_with('/') {
        return Err("absolute path".into());
    }
    if raw.contains('\\') || raw.contains('\0') {
        return Err("backslash or NUL in path".into());
    }
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("path escapes the layout (`..`)".into()),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

impl Bundle {
    /// Reads and verifies the whole tar. With `stage`, every blob is also copied into that
    /// directory as `<hex>` (same filesystem as the cache, so seeding is a rename).
    pub fn scan(path: &Path, stage: Option<&Path>) -> Result<Bundle, BundleError> {
        let io = |source| BundleError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
        let mut layout_seen = false;
        let mut index_bytes: Option<Vec<u8>> = None;
        let mut blobs: HashMap<Digest, BlobEntry> = HashMap::new();
        // Every regular entry by its normalized name: a tar may repeat a name, and whoever
        // extracts it gets the last copy while a reader may take the first.
        let mut names: HashSet<String> = HashSet::new();
        let mut progress = super::progress::Progress::new();
        let mut verified = 0u64;
        let entries = archive
            .entries()
            .map_err(|e| invalid(format!("{}: not a tar file: {e}", path.display())))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| invalid(format!("{}: unreadable tar: {e}", path.display())))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).to_string();
            let name = safe_path(&raw).map_err(|why| invalid(format!("entry {raw:?}: {why}")))?;
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() {
                continue;
            }
            if kind.is_dir() {
                continue;
            }
            if !(kind.is_file() || kind.is_contiguous()) {
                return Err(invalid(format!(
                    "entry {raw:?}: only regular files and directories are allowed (links and devices are refused)"
                )));
            }
            let size = entry
                .header()
                .size()
                .map_err(|e| invalid(format!("entry {raw:?}: bad size in the tar header: {e}")))?;
            let offset = entry.raw_file_position();
            if !names.insert(name.clone()) {
                return Err(invalid(format!(
                    "entry {raw:?}: appears twice in the bundle ({name:?})"
                )));
            }
            match name.as_str() {
                "oci-layout" => {
                    let bytes = read_small(&mut entry, size, &raw)?;
                    let v: serde_json::Value = serde_json::from_slice(&bytes)
                        .map_err(|e| invalid(format!("entry {raw:?}: not JSON: {e}")))?;
                    if v["imageLayoutVersion"].as_str().is_none() {
                        return Err(invalid(format!("entry {raw:?}: no imageLayoutVersion")));
                    }
                    layout_seen = true;
                }
                "index.json" => index_bytes = Some(read_small(&mut entry, size, &raw)?),
                n if n.starts_with("blobs/") => {
                    let Some(hex) = n.strip_prefix("blobs/sha256/") else {
                        return Err(invalid(format!(
                            "entry {raw:?}: only sha256 blobs are supported"
                        )));
                    };
                    let Some(digest) = Digest::from_sha256_hex(hex) else {
                        return Err(invalid(format!(
                            "entry {raw:?}: a blob's file name must be its 64-digit lowercase sha256"
                        )));
                    };
                    let staged = stage.map(|d| d.join(hex));
                    let mut sink: Box<dyn Write> = match &staged {
                        Some(p) => Box::new(std::io::BufWriter::with_capacity(
                            1 << 20,
                            File::create(p).map_err(|source| BundleError::Io {
                                path: p.clone(),
                                source,
                            })?,
                        )),
                        None => Box::new(std::io::sink()),
                    };
                    let (n_read, actual) = hash_copy(&mut entry, &mut *sink, |done| {
                        progress.status(&format!(
                            "verifying {raw}: {} of {}",
                            super::human(done),
                            super::human(size)
                        ))
                    })
                    .map_err(|e| invalid(format!("entry {raw:?}: unreadable: {e}")))?;
                    sink.flush()
                        .map_err(|e| invalid(format!("entry {raw:?}: staging failed: {e}")))?;
                    drop(sink);
                    if n_read != size {
                        return Err(invalid(format!(
                            "entry {raw:?}: truncated ({n_read} of {size} bytes)"
                        )));
                    }
                    if actual != digest {
                        return Err(invalid(format!(
                            "entry {raw:?}: content does not match its digest (computed {actual})"
                        )));
                    }
                    verified += size;
                    blobs.insert(
                        digest,
                        BlobEntry {
                            offset,
                            size,
                            staged,
                        },
                    );
                }
                // Other files may sit in a layout (the spec allows them); berth ignores them.
                _ => {}
            }
        }
        progress.finish();
        if !layout_seen {
            return Err(invalid(format!(
                "{}: no oci-layout file: not an OCI image layout",
                path.display()
            )));
        }
        let index_bytes =
            index_bytes.ok_or_else(|| invalid(format!("{}: no index.json", path.display())))?;
        #[derive(serde::Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Vec<Descriptor>,
        }
        let index: Index = serde_json::from_slice(&index_bytes)
            .map_err(|e| invalid(format!("entry \"index.json\": {e}")))?;
        tracing::debug!(blobs = blobs.len(), bytes = verified, "bundle verified");
        let b = Bundle {
            path: path.to_path_buf(),
            index: index.manifests,
            blobs,
        };
        // Walk now, so a missing blob is found before anyone acts on the bundle.
        b.images()?;
        Ok(b)
    }

    /// Opens a verified blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> std::io::Result<Box<dyn Read + Send>> {
        let e = self
            .blobs
            .get(digest)
            .ok_or_else(|| std::io::Error::other(format!("blob {digest} not in the bundle")))?;
        if let Some(p) = &e.staged {
            return Ok(Box::new(File::open(p)?));
        }
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(e.offset))?;
        Ok(Box::new(f.take(e.size)))
    }

    /// Reads a manifest-sized blob.
    pub fn read_manifest(&self, d: &Descriptor, of: &str) -> Result<Vec<u8>, BundleError> {
        let e = self.check(d, of)?;
        if e.size > MAX_MANIFEST {
            return Err(invalid(format!(
                "manifest {} of {of} is {} bytes, more than {MAX_MANIFEST}",
                d.digest, e.size
            )));
        }
        let mut buf = Vec::with_capacity(e.size as usize);
        self.open_blob(&d.digest)
            .and_then(|mut r| r.read_to_end(&mut buf))
            .map_err(|e| invalid(format!("blob {} of {of}: {e}", d.digest)))?;
        Ok(buf)
    }

    /// The blob a descriptor names must be present with the size the descriptor claims.
    fn check(&self, d: &Descriptor, of: &str) -> Result<&BlobEntry, BundleError> {
        if d.digest.algorithm() != Algorithm::Sha256 {
            return Err(invalid(format!(
                "{of}: unsupported digest {:?} (sha256 only)",
                d.digest.as_str()
            )));
        }
        let hex = d.digest.hex();
        let e = self.blobs.get(&d.digest).ok_or_else(|| {
            invalid(format!(
                "{of}: blob sha256:{hex} (expected entry \"blobs/sha256/{hex}\") is missing from the bundle"
            ))
        })?;
        if e.size != d.size {
            return Err(invalid(format!(
                "{of}: blob {} is {} bytes but its descriptor says {}",
                d.digest, e.size, d.size
            )));
        }
        Ok(e)
    }

    /// Every image of `index.json` with what it reaches; fails on the first missing blob.
    pub fn images(&self) -> Result<Vec<Image>, BundleError> {
        let mut out = Vec::new();
        for top in &self.index {
            let ref_name = top.annotations.get(ANN_REF_NAME).cloned();
            let upstream_ref = top.annotations.get(ANN_UPSTREAM_REF).cloned();
            let mut img = Image {
                top: top.clone(),
                ref_name: ref_name.clone(),
                upstream_ref: upstream_ref.clone(),
                app: top.annotations.get(ANN_APP).cloned(),
                manifests: Vec::new(),
                blob_sizes: BTreeMap::new(),
                platforms: Vec::new(),
            };
            let of = upstream_ref
                .or(ref_name)
                .unwrap_or_else(|| top.digest.to_string());
            self.walk(top, &of, &mut img, 0)?;
            // Two entries for one reference with different content: which one a tag gets
            // would depend on the reader (an import seeds the last). Refuse, naming both.
            if let Some(first) = out.iter().find(|i: &&Image| {
                i.display_ref() == img.display_ref() && i.top.digest != img.top.digest
            }) {
                return Err(invalid(format!(
                    "index.json: {} appears twice, as {} and as {}",
                    img.display_ref(),
                    first.top.digest,
                    img.top.digest
                )));
            }
            out.push(img);
        }
        Ok(out)
    }

    fn walk(
        &self,
        d: &Descriptor,
        of: &str,
        img: &mut Image,
        depth: u32,
    ) -> Result<(), BundleError> {
        if depth > 4 {
            return Err(invalid(format!("{of}: indexes nested too deeply")));
        }
        let bytes = self.read_manifest(d, of)?;
        let m = Manifest::parse(&bytes)
            .ok_or_else(|| invalid(format!("{of}: manifest {} is not a manifest", d.digest)))?;
        let mut desc = d.clone();
        if desc.media_type.is_empty() {
            desc.media_type = m.media_type.clone().unwrap_or_else(|| OCI_MANIFEST.into());
        }
        if m.is_index(&desc.media_type) {
            for child in &m.manifests {
                if let Some(p) = &child.platform {
                    img.platforms.push(p.clone());
                }
                self.walk(child, of, img, depth + 1)?;
            }
        } else {
            for b in m.config.iter().chain(&m.layers) {
                self.check(b, of)?;
                img.blob_sizes.insert(b.digest.clone(), b.size);
            }
        }
        if !img.manifests.iter().any(|x| x.digest == desc.digest) {
            img.manifests.push(desc);
        }
        Ok(())
    }
}

fn read_small(r: &mut impl Read, size: u64, raw: &str) -> Result<Vec<u8>, BundleError> {
    if size > MAX_MANIFEST {
        return Err(invalid(format!("entry {raw:?}: too large ({size} bytes)")));
    }
    let mut buf = Vec::with_capacity(size as usize);
    r.read_to_end(&mut buf)
        .map_err(|e| invalid(format!("entry {raw:?}: unreadable: {e}")))?;
    if buf.len() as u64 != size {
        return Err(invalid(format!(
            "entry {raw:?}: truncated ({} of {size} bytes)",
            buf.len()
        )));
    }
    Ok(buf)
}

/// Copies while hashing, in 1 MiB steps: memory stays flat whatever the blob's size.
fn hash_copy(
    r: &mut impl Read,
    w: &mut dyn Write,
    mut tick: impl FnMut(u64),
) -> std::io::Result<(u64, Digest)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        n += k as u64;
        tick(n);
    }
    Ok((n, Digest::from_sha256(&h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(safe_path("./blobs//sha256/x").unwrap(), "blobs/sha256/x");
        assert!(safe_path("/etc/passwd").is_err());
        assert!(safe_path("blobs/../../x").is_err());
        assert!(safe_path("..").is_err());
        assert!(safe_path("a\\b").is_err());
    }
}
