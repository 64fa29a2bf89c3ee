//! Manifests by digest: immutable, byte-exact with their media type, in the small-object
//! store and a small memory cache. Which repository may see one is `links`'s business.

use std::sync::Arc;

use bytes::Bytes;

use crate::oci::Digest;
use crate::storage::{ObjectKey, ObjectStore};

#[derive(Debug)]
pub struct StoredManifest {
    pub bytes: Bytes,
    pub media_type: String,
}

pub struct ManifestStore {
    objects: Arc<dyn ObjectStore>,
    mem: moka::sync::Cache<Digest, Arc<StoredManifest>>,
}

impl ManifestStore {
    pub fn new(objects: Arc<dyn ObjectStore>) -> ManifestStore {
        ManifestStore {
            objects,
            mem: moka::sync::Cache::builder()
                .weigher(|_, m: &Arc<StoredManifest>| m.bytes.len().min(u32::MAX as usize) as u32)
                .max_capacity(64 * 1024 * 1024)
                .build(),
        }
    }

    pub async fn get(&self, d: &Digest) -> Option<Arc<StoredManifest>> {
        if let Some(m) = self.mem.get(d) {
            return Some(m);
        }
        let bytes = self
            .objects
            .get(&ObjectKey::Manifest(d.clone()))
            .await
            .ok()?;
        let media_type = self
            .objects
            .get(&ObjectKey::ManifestMediaType(d.clone()))
            .await
            .ok()?;
        let media_type = String::from_utf8(media_type.to_vec()).ok()?;
        // Files are renamed in only after verification, but a re-check costs little for
        // something this small and guards against a damaged disk.
        if Digest::sha256_of(&bytes) != *d {
            tracing::warn!(digest = %d, "cached manifest is damaged; ignoring it");
            return None;
        }
        let m = Arc::new(StoredManifest { bytes, media_type });
        self.mem.insert(d.clone(), m.clone());
        Some(m)
    }

    /// Deletes a manifest's bytes (collection, once nothing links it).
    pub async fn delete(&self, d: &Digest) -> Result<(), crate::storage::StorageError> {
        self.mem.invalidate(d);
        for key in [
            ObjectKey::Manifest(d.clone()),
            ObjectKey::ManifestMediaType(d.clone()),
        ] {
            match self.objects.delete(&key).await {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Stores a manifest whose bytes the caller has verified against `d`.
    pub async fn put(
        &self,
        d: &Digest,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<(), crate::storage::StorageError> {
        // The media type first: bytes without one are not served.
        self.objects
            .put(
                &ObjectKey::ManifestMediaType(d.clone()),
                Bytes::copy_from_slice(media_type.as_bytes()),
            )
            .await?;
        self.objects
            .put(&ObjectKey::Manifest(d.clone()), bytes.clone())
            .await?;
        self.mem.insert(
            d.clone(),
            Arc::new(StoredManifest {
                bytes,
                media_type: media_type.to_string(),
            }),
        );
        Ok(())
    }
}
