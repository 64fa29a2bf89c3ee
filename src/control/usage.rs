//! Usage reports: who pulled which images and versions, how often and how many bytes, per
//! license or key, read from the store's pull records (`berth usage`, `/api/v1/usage`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{rfc3339, Control, ControlError};
use crate::config::Config;
use crate::state::UsageQuery;

/// What to report on.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageFilter {
    /// A license or key id.
    pub license: Option<String>,
    pub app: Option<String>,
    /// Only pulls at or after this time.
    #[serde(skip)]
    pub since: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub since: Option<String>,
    pub subjects: Vec<SubjectUsage>,
}

/// One license's (or key's) usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectUsage {
    pub id: String,
    /// `license` or `apikey`.
    pub kind: String,
    /// The customer's name (or the key's); empty for a license no longer known.
    pub name: String,
    pub app: String,
    pub pulls: u64,
    pub bytes: u64,
    pub last_pull: Option<String>,
    pub images: Vec<ImageUsage>,
}

/// One image and reference (a tag, or a digest pulled by digest) of a subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUsage {
    pub image: String,
    pub reference: String,
    /// The digest the last pull resolved to.
    pub digest: String,
    pub pulls: u64,
    pub last_pull: String,
}

impl Control {
    pub async fn usage(
        &self,
        config: &Config,
        filter: &UsageFilter,
    ) -> Result<UsageReport, ControlError> {
        let q = UsageQuery {
            subject: filter.license.clone(),
            app: filter.app.clone(),
            since: filter.since,
        };
        let pulls = self.store.pulls(&q).await?;
        let transfer = self.store.transfer(&q).await?;
        let contents = self.store.load().await?;
        let name_of = |id: &str| -> (String, String) {
            if let Some(r) = contents.licenses.iter().find(|r| r.license.id == id) {
                return ("license".into(), r.license.customer.clone());
            }
            if let Some(k) = contents.keys.iter().find(|k| k.key.id == id) {
                return ("apikey".into(), k.key.name.clone());
            }
            match config.tenants.license(id) {
                Some(l) => ("license".into(), l.customer.clone()),
                None => ("license".into(), String::new()),
            }
        };
        // (subject, app) → usage; (image, reference) → per-image numbers.
        type Images = BTreeMap<(String, String), (String, u64, SystemTime)>;
        type Totals = (u64, u64, Option<SystemTime>, Images);
        let mut by: BTreeMap<(String, String), Totals> = BTreeMap::new();
        for p in &pulls {
            let e = by
                .entry((p.subject.clone(), p.app.clone()))
                .or_insert_with(|| (0, 0, None, BTreeMap::new()));
            e.0 += 1;
            e.2 = Some(e.2.map_or(p.time, |t| t.max(p.time)));
            let i =
                e.3.entry((p.image.clone(), p.reference.clone()))
                    .or_insert_with(|| (p.digest.clone(), 0, p.time));
            i.1 += 1;
            if p.time >= i.2 {
                i.0 = p.digest.clone();
                i.2 = p.time;
            }
        }
        for t in &transfer {
            let e = by
                .entry((t.subject.clone(), t.app.clone()))
                .or_insert_with(|| (0, 0, None, BTreeMap::new()));
            e.1 += t.bytes;
        }
        let subjects = by
            .into_iter()
            .map(|((id, app), (count, bytes, last, images))| {
                let (kind, name) = name_of(&id);
                SubjectUsage {
                    id,
                    kind,
                    name,
                    app,
                    pulls: count,
                    bytes,
                    last_pull: last.map(rfc3339),
                    images: images
                        .into_iter()
                        .map(|((image, reference), (digest, n, at))| ImageUsage {
                            image,
                            reference,
                            digest,
                            pulls: n,
                            last_pull: rfc3339(at),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(UsageReport {
            since: filter.since.map(rfc3339),
            subjects,
        })
    }
}
