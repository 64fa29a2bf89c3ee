//! Synthetic OCI images built on disk and moved with the real `skopeo`.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use ring::digest::{Context, SHA256};
use serde_json::json;

use super::registry::Registry;
use super::{hex, sha256_hex, tempdir};

pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// Layer `i` is a pure function of (`seed`, `i`, `layer_sizes[i]`), so two specs
/// agreeing on those produce byte-identical (shared) layers.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub layer_sizes: Vec<u64>,
    pub seed: u64,
}

#[derive(Clone, Debug)]
pub struct TestImage {
    pub repo: String,
    pub tag: String,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest_size: u64,
    pub config_digest: String,
    /// (digest, size) of each layer blob, in manifest order.
    pub layers: Vec<(String, u64)>,
    pub layout_dir: PathBuf,
    _layout: Arc<tempfile::TempDir>,
}

impl TestImage {
    /// Reference for skopeo against `reg`: `docker://127.0.0.1:PORT/REPO:TAG`.
    pub fn docker_ref(&self, reg: &Registry) -> String {
        format!("docker://{}/{}:{}", reg.host(), self.repo, self.tag)
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.layout_dir, digest)
    }
}

#[derive(Clone, Debug)]
pub struct TestIndex {
    pub repo: String,
    pub tag: String,
    pub index_digest: String,
    pub children: Vec<TestImage>,
    pub layout_dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutContents {
    pub manifest_digest: String,
    /// Every blob in the layout (manifests and configs included), sorted.
    pub blob_digests: Vec<String>,
}

pub fn push_image(
    reg: &Registry,
    creds: Option<(&str, &str)>,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> TestImage {
    let dir = Arc::new(tempdir());
    init_layout(dir.path());
    let img = write_image(&dir, repo, tag, spec, "linux", "amd64");
    let desc = json!({
        "mediaType": MANIFEST_MEDIA_TYPE,
        "digest": img.manifest_digest,
        "size": img.manifest_size,
        "annotations": { "org.opencontainers.image.ref.name": tag },
    });
    write_index_json(dir.path(), desc);
    skopeo_push(reg, creds, dir.path(), repo, tag, false);
    assert_pushed_digest(reg, creds, repo, tag, &img.manifest_digest);
    img
}

/// A multi-platform OCI index; children get the index's tag for reference only
/// (in the registry they are reachable by digest).
pub fn push_index(
    reg: &Registry,
    creds: Option<(&str, &str)>,
    repo: &str,
    tag: &str,
    platforms: &[(&str, &str, ImageSpec)],
) -> TestIndex {
    let dir = Arc::new(tempdir());
    init_layout(dir.path());
    let children: Vec<TestImage> = platforms
        .iter()
        .map(|(os, arch, spec)| write_image(&dir, repo, tag, spec, os, arch))
        .collect();
    let manifests: Vec<_> = children
        .iter()
        .zip(platforms)
        .map(|(c, (os, arch, _))| {
            json!({
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": c.manifest_digest,
                "size": c.manifest_size,
                "platform": { "architecture": arch, "os": os },
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": manifests,
    });
    let (index_digest, index_size) = write_blob_bytes(dir.path(), &to_bytes(&index));
    write_index_json(
        dir.path(),
        json!({
            "mediaType": INDEX_MEDIA_TYPE,
            "digest": index_digest,
            "size": index_size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }),
    );
    skopeo_push(reg, creds, dir.path(), repo, tag, true);
    assert_pushed_digest(reg, creds, repo, tag, &index_digest);
    TestIndex {
        repo: repo.to_string(),
        tag: tag.to_string(),
        index_digest,
        layout_dir: dir.path().to_path_buf(),
        children,
    }
}

/// `skopeo copy SRC oci:DEST_DIR`. TLS verification is off unless `extra_args`
/// mention `--src-tls-verify`; `creds` is `user:password`.
///
/// skopeo 1.9 gzips uncompressed layers when writing an oci: layout, so pass
/// `--preserve-digests` in `extra_args` to get the registry's digests back.
pub fn skopeo_copy_to_oci(
    src: &str,
    creds: Option<&str>,
    dest_dir: &Path,
    extra_args: &[&str],
) -> Output {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy"]);
    if !extra_args.iter().any(|a| a.starts_with("--src-tls-verify")) {
        cmd.arg("--src-tls-verify=false");
    }
    if let Some(c) = creds {
        cmd.args(["--src-creds", c]);
    }
    cmd.args(extra_args)
        .arg(src)
        .arg(format!("oci:{}", dest_dir.display()));
    cmd.output()
        .expect("run skopeo (apt-get install -y skopeo)")
}

/// Reads `index.json` and re-hashes every blob, panicking on any blob whose
/// content does not match its file name.
pub fn read_oci_layout(dir: &Path) -> LayoutContents {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("read index.json"))
            .expect("parse index.json");
    let manifest_digest = index["manifests"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|d| d["digest"].as_str())
        .unwrap_or_else(|| panic!("no manifest in {}/index.json: {index}", dir.display()))
        .to_string();
    let mut blob_digests = Vec::new();
    let blobs = dir.join("blobs/sha256");
    for entry in std::fs::read_dir(&blobs).expect("read blobs/sha256") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let actual = hash_file(&path);
        assert_eq!(
            actual,
            name,
            "blob {} content hash mismatch",
            path.display()
        );
        blob_digests.push(format!("sha256:{name}"));
    }
    blob_digests.sort();
    LayoutContents {
        manifest_digest,
        blob_digests,
    }
}

pub fn hash_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).expect("read blob");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(h.finish().as_ref())
}

pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    layout.join("blobs/sha256").join(hex)
}

fn init_layout(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("create layout");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
}

fn write_index_json(dir: &Path, desc: serde_json::Value) {
    let index = json!({ "schemaVersion": 2, "manifests": [desc] });
    std::fs::write(dir.join("index.json"), to_bytes(&index)).expect("write index.json");
}

fn to_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialize json")
}

fn write_image(
    dir: &Arc<tempfile::TempDir>,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
    os: &str,
    arch: &str,
) -> TestImage {
    let layers: Vec<(String, u64)> = spec
        .layer_sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| write_layer(dir.path(), spec.seed, i as u64, size))
        .collect();
    let config = json!({
        "architecture": arch,
        "os": os,
        "config": {},
        "rootfs": {
            "type": "layers",
            // Uncompressed layers: the diff_id is the blob digest itself.
            "diff_ids": layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
        },
    });
    let (config_digest, config_size) = write_blob_bytes(dir.path(), &to_bytes(&config));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size },
        "layers": layers.iter().map(|(d, s)| json!({
            "mediaType": LAYER_MEDIA_TYPE, "digest": d, "size": s,
        })).collect::<Vec<_>>(),
    });
    let (manifest_digest, manifest_size) = write_blob_bytes(dir.path(), &to_bytes(&manifest));
    TestImage {
        repo: repo.to_string(),
        tag: tag.to_string(),
        manifest_digest,
        manifest_media_type: MANIFEST_MEDIA_TYPE.to_string(),
        manifest_size,
        config_digest,
        layers,
        layout_dir: dir.path().to_path_buf(),
        _layout: Arc::clone(dir),
    }
}

fn write_blob_bytes(layout: &Path, data: &[u8]) -> (String, u64) {
    let digest = format!("sha256:{}", sha256_hex(data));
    std::fs::write(blob_path(layout, &digest), data).expect("write blob");
    (digest, data.len() as u64)
}

/// Writes a ustar archive holding one regular file of `size` pseudo-random
/// bytes, hashing as it streams so a 200 MiB layer never sits in memory.
fn write_layer(layout: &Path, seed: u64, index: u64, size: u64) -> (String, u64) {
    let tmp = layout.join(format!("blobs/sha256/.tmp-{seed}-{index}-{size}"));
    let mut out = HashingWriter {
        inner: BufWriter::with_capacity(1 << 16, File::create(&tmp).expect("create layer")),
        hash: Context::new(&SHA256),
        len: 0,
    };
    out.write_all(&tar_header(&format!("layer-{index}.bin"), size))
        .expect("write tar header");
    let mut rng =
        SplitMix64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ size.rotate_left(17));
    let mut buf = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        out.write_all(&buf[..n]).expect("write layer");
        left -= n as u64;
    }
    let pad = (512 - size % 512) % 512;
    // Padding to the record boundary plus the two zero end-of-archive blocks.
    out.write_all(&vec![0u8; pad as usize + 1024])
        .expect("write tar trailer");
    out.inner.flush().expect("flush layer");
    let digest = format!("sha256:{}", hex(out.hash.finish().as_ref()));
    std::fs::rename(&tmp, blob_path(layout, &digest)).expect("rename layer blob");
    (digest, out.len)
}

fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put =
        |h: &mut [u8; 512], off: usize, val: &[u8]| h[off..off + val.len()].copy_from_slice(val);
    assert!(
        name.len() < 100 && size < 8 << 30,
        "tar entry too big for ustar"
    );
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, b"0000644\0");
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, b"00000000000\0"); // mtime 0 keeps layers reproducible
    put(&mut h, 148, b"        ");
    h[156] = b'0';
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

struct HashingWriter<W: Write> {
    inner: W,
    // ring's assembly SHA-256 stays fast in unoptimised test builds; sha2 does not.
    hash: Context,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Fast, seedable, good enough that layers don't compress or collide.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

fn skopeo_push(
    reg: &Registry,
    creds: Option<(&str, &str)>,
    layout: &Path,
    repo: &str,
    tag: &str,
    all: bool,
) {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]);
    if all {
        cmd.arg("--all");
    }
    if let Some((u, p)) = creds {
        cmd.args(["--dest-creds", &format!("{u}:{p}")]);
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{repo}:{tag}", reg.host()));
    let out = cmd
        .output()
        .expect("run skopeo (apt-get install -y skopeo)");
    assert!(
        out.status.success(),
        "skopeo push of {repo}:{tag} failed: {}\n{}\nregistry log tail:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&reg.log(), 30)
    );
}

/// Guards against skopeo silently rewriting the manifest on push.
fn assert_pushed_digest(
    reg: &Registry,
    creds: Option<(&str, &str)>,
    repo: &str,
    tag: &str,
    want: &str,
) {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "inspect",
        "--raw",
        "--tls-verify=false",
    ]);
    if let Some((u, p)) = creds {
        cmd.args(["--creds", &format!("{u}:{p}")]);
    }
    cmd.arg(format!("docker://{}/{repo}:{tag}", reg.host()));
    let out = cmd.output().expect("run skopeo inspect");
    assert!(
        out.status.success(),
        "skopeo inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = format!("sha256:{}", sha256_hex(&out.stdout));
    assert_eq!(
        got, want,
        "registry holds a different manifest than we built"
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `len` pseudo-random bytes from `seed` (artifact payloads that do not compress).
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SplitMix64(seed).fill(&mut v);
    v
}
