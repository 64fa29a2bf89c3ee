//! The audit log: one JSON line per manifest pull (who, what, which digest, from where),
//! so a vendor can answer "which customers pulled version 1.2?", and its reader for
//! `berth audit`. Records name a license by its fingerprint and customer, never by its id:
//! the id is the customer's password.

use std::io::{BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRecord {
    pub time: String,
    /// The license's fingerprint (`config::fingerprint` of its id).
    #[serde(default)]
    pub fingerprint: String,
    /// Only read: records written by older versions carried the license id itself. It is
    /// turned into the fingerprint on reading and never written or printed again.
    #[serde(default, rename = "license", skip_serializing)]
    pub legacy_id: Option<String>,
    pub customer: String,
    pub app: String,
    /// `host/repository` as the vendor's upstream names it.
    pub image: String,
    /// The tag or digest asked for.
    pub reference: String,
    pub digest: String,
    pub client: String,
    pub user_agent: String,
}

impl PullRecord {
    pub fn now_rfc3339() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }
}

pub struct AuditLog {
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    /// Opens (creating it 0600) the log for appending. A log left readable by others by an
    /// older berth is narrowed to 0600: it names customers and, in old records, license ids.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let mode = file.metadata()?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(
                path = %path.display(),
                was = format!("{mode:o}"),
                "audit log was readable by others; narrowed to 0600"
            );
        }
        Ok(AuditLog {
            file: Mutex::new(file),
        })
    }

    /// Appends one line; a single `write` per record keeps lines whole under O_APPEND.
    pub fn record(&self, r: &PullRecord) {
        let Ok(mut line) = serde_json::to_vec(r) else {
            return;
        };
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}

/// Which records `berth audit` prints.
#[derive(Debug, Default)]
pub struct Filter {
    /// A license id or fingerprint; matched by fingerprint, so records of a license no
    /// longer in the config are found too.
    pub license: Option<String>,
    /// `host/repository`, optionally with `:tag` or `@digest`.
    pub image: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &PullRecord) -> bool {
        if let Some(l) = &self.license {
            if *l != r.fingerprint && crate::config::fingerprint(l) != r.fingerprint {
                return false;
            }
        }
        match &self.image {
            None => true,
            Some(i) => {
                if let Some((name, d)) = i.split_once('@') {
                    name == r.image && (d == r.digest || d == r.reference)
                } else if let Some((name, tag)) =
                    i.rsplit_once(':').filter(|(_, t)| !t.contains('/'))
                {
                    (name == r.image && tag == r.reference) || *i == r.image
                } else {
                    *i == r.image
                }
            }
        }
    }
}

/// Reads the log, skipping lines that are not records (a torn last line after a crash).
pub fn read(path: &Path, filter: &Filter) -> std::io::Result<Vec<PullRecord>> {
    let f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        if let Ok(mut r) = serde_json::from_str::<PullRecord>(&line) {
            if let Some(id) = r.legacy_id.take() {
                if r.fingerprint.is_empty() {
                    r.fingerprint = crate::config::fingerprint(&id);
                }
            }
            if filter.matches(&r) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(license: &str, image: &str, reference: &str) -> PullRecord {
        PullRecord {
            time: PullRecord::now_rfc3339(),
            fingerprint: crate::config::fingerprint(license),
            legacy_id: None,
            customer: "C".into(),
            app: "acme".into(),
            image: image.into(),
            reference: reference.into(),
            digest: "sha256:abc".into(),
            client: "127.0.0.1:1".into(),
            user_agent: "skopeo".into(),
        }
    }

    #[test]
    fn write_read_filter() {
        let dir = std::env::temp_dir().join(format!("berth-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.record(&rec("L1", "quay.io/acme/api", "1.2"));
        log.record(&rec("L2", "quay.io/acme/api", "1.3"));
        log.record(&rec("L1", "quay.io/acme/web", "1.2"));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"torn")
            .unwrap();
        let all = read(&path, &Filter::default()).unwrap();
        assert_eq!(all.len(), 3);
        let by_license = read(
            &path,
            &Filter {
                license: Some("L1".into()),
                image: None,
            },
        )
        .unwrap();
        assert_eq!(by_license.len(), 2);
        let v12 = read(
            &path,
            &Filter {
                license: None,
                image: Some("quay.io/acme/api:1.2".into()),
            },
        )
        .unwrap();
        assert_eq!(v12.len(), 1);
        assert_eq!(v12[0].fingerprint, crate::config::fingerprint("L1"));
        let api = read(
            &path,
            &Filter {
                license: None,
                image: Some("quay.io/acme/api".into()),
            },
        )
        .unwrap();
        assert_eq!(api.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn private_file_and_legacy_records_lose_the_id() {
        let dir = std::env::temp_dir().join(format!("berth-audit-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        // A log an older berth wrote: world-readable, with the license id in `license`.
        std::fs::write(
            &path,
            "{\"time\":\"t\",\"license\":\"CANARY-legacy-1\",\"customer\":\"C\",\"app\":\"a\",\"image\":\"q/r\",\"reference\":\"1\",\"digest\":\"d\",\"client\":\"c\",\"user_agent\":\"u\"}\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = AuditLog::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        log.record(&rec("CANARY-new-1", "q/r", "2"));
        let by_id = read(
            &path,
            &Filter {
                license: Some("CANARY-legacy-1".into()),
                image: None,
            },
        )
        .unwrap();
        assert_eq!(by_id.len(), 1);
        let out = serde_json::to_string(&by_id[0]).unwrap();
        assert!(!out.contains("CANARY"), "{out}");
        assert!(out.contains(&crate::config::fingerprint("CANARY-legacy-1")));
        let text = std::fs::read_to_string(&path).unwrap();
        let new_line = text.lines().nth(1).unwrap();
        assert!(!new_line.contains("CANARY"), "{new_line}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
