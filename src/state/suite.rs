//! The behaviour every state store has, as one test suite: `state_suite!(make)` in a
//! backend's tests, where `make` is an `async fn() -> (Guard, Store)` giving an empty,
//! migrated store (the guard keeps its file or server alive).

use std::time::{Duration, SystemTime};

use super::*;
use crate::tenancy::{Action, ApiKey, Glob, License, Origin};

pub(crate) fn license(id: &str, hasher: &SecretHasher, secret: &str) -> LicenseRow {
    LicenseRow {
        license: License {
            id: id.into(),
            app: "acme".into(),
            customer: "Big Bank".into(),
            expires: Some(from_millis(to_millis(SystemTime::now()) + 3_600_000)),
            revoked: false,
            images: vec![Glob::new("quay.io/acme/*").unwrap()],
            rate_limit: None,
            origin: Origin::Store,
            rotated: None,
        },
        secret_hash: hasher.hash(secret),
        created: from_millis(to_millis(SystemTime::now())),
    }
}

pub(crate) fn key(id: &str, hasher: &SecretHasher, secret: &str) -> KeyRow {
    KeyRow {
        key: ApiKey {
            id: id.into(),
            name: "ci-main".into(),
            apps: vec!["acme".into(), "beta".into()],
            actions: vec![Action::Pull, Action::Push],
            expires: None,
            revoked: false,
        },
        key_hash: hasher.hash(secret),
        created: from_millis(to_millis(SystemTime::now())),
        last_used: None,
    }
}

pub(crate) async fn licenses_round_trip_and_move_the_generation(s: &dyn Store) {
    assert_eq!(s.schema_version().await.unwrap(), 4);
    let g0 = s.generation().await.unwrap();
    let row = license("lic_a", s.hasher(), "secret-a");
    s.insert_license(&row).await.unwrap();
    let g1 = s.generation().await.unwrap();
    assert_ne!(g0, g1);
    // The same id again is a conflict, and nothing changed.
    let again = s.insert_license(&row).await;
    assert!(matches!(again, Err(StateError::Conflict(_))), "{again:?}");
    let c = s.load().await.unwrap();
    assert_eq!(c.generation, g1);
    assert_eq!(c.licenses.len(), 1);
    let got = &c.licenses[0];
    assert_eq!(got.license.id, "lic_a");
    assert_eq!(got.license.customer, "Big Bank");
    assert_eq!(got.license.expires, row.license.expires);
    assert_eq!(got.license.images[0].as_str(), "quay.io/acme/*");
    assert_eq!(got.license.origin, Origin::Store);
    assert_eq!(got.secret_hash, s.hasher().hash("secret-a"));
    assert_eq!(got.created, row.created);

    let change = LicenseChange {
        expires: Some(None),
        revoked: Some(true),
        secret_hash: Some(s.hasher().hash("secret-b")),
        customer: Some("Bigger Bank".into()),
        rotated: Some(from_millis(1_700_000_000_123)),
    };
    assert!(s.update_license("lic_a", &change).await.unwrap());
    assert!(!s.update_license("lic_nope", &change).await.unwrap());
    let c = s.load().await.unwrap();
    assert_ne!(c.generation, g1);
    let got = &c.licenses[0];
    assert!(got.license.revoked);
    assert_eq!(got.license.expires, None);
    assert_eq!(got.license.customer, "Bigger Bank");
    assert_eq!(got.secret_hash, s.hasher().hash("secret-b"));
    assert_eq!(got.license.rotated, Some(from_millis(1_700_000_000_123)));
}

pub(crate) async fn keys_and_admin_tokens(s: &dyn Store) {
    let row = key("key_a", s.hasher(), "berth_key_x");
    s.insert_key(&row).await.unwrap();
    let g = s.generation().await.unwrap();
    assert!(s.revoke_key("key_a").await.unwrap());
    assert!(!s.revoke_key("key_nope").await.unwrap());
    assert_ne!(s.generation().await.unwrap(), g);
    let t = AdminTokenRow {
        id: "adm_a".into(),
        name: "ops".into(),
        token_hash: s.hasher().hash("berth_adm_x"),
        created: from_millis(to_millis(SystemTime::now())),
        revoked: false,
    };
    s.insert_admin_token(&t).await.unwrap();
    let c = s.load().await.unwrap();
    assert_eq!(c.keys.len(), 1);
    let k = &c.keys[0];
    assert!(k.key.revoked);
    assert_eq!(k.key.apps, vec!["acme", "beta"]);
    assert_eq!(k.key.actions, vec![Action::Pull, Action::Push]);
    assert_eq!(k.key_hash, s.hasher().hash("berth_key_x"));
    assert_eq!(c.admin_tokens.len(), 1);
    assert_eq!(c.admin_tokens[0].name, "ops");
    assert!(s.revoke_admin_token("adm_a").await.unwrap());
    assert!(s.load().await.unwrap().admin_tokens[0].revoked);
}

pub(crate) async fn the_audit_trail_pages_in_order(s: &dyn Store) {
    for i in 0..5 {
        s.append_audit(&AuditEntry {
            seq: 0,
            time: from_millis(1_000 * i),
            actor: "ops".into(),
            action: "license.create".into(),
            target: format!("lic_{i}"),
            detail: "{}".into(),
        })
        .await
        .unwrap();
    }
    let first = s.audit(0, 3).await.unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first[0].target, "lic_0");
    assert!(first.windows(2).all(|w| w[0].seq < w[1].seq));
    let rest = s.audit(first[2].seq, 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
        ["lic_3", "lic_4"]
    );
    assert_eq!(rest[1].time, from_millis(4_000));
}

pub(crate) async fn usage_is_recorded_and_filtered(s: &dyn Store) {
    s.insert_key(&key("key_u", s.hasher(), "k")).await.unwrap();
    let g = s.generation().await.unwrap();
    let day = Duration::from_secs(86_400);
    let t0 = day_of(SystemTime::now()) - day * 2;
    let pull = |subject: &str, app: &str, at: SystemTime, reference: &str| PullEvent {
        time: at,
        subject: subject.into(),
        app: app.into(),
        image: "quay.io/acme/api".into(),
        reference: reference.into(),
        digest: "sha256:aa".into(),
        client: "10.0.0.1".into(),
        user_agent: "docker/27".into(),
    };
    let transfer = |subject: &str, at: SystemTime, bytes: u64| Transfer {
        subject: subject.into(),
        app: "acme".into(),
        image: "quay.io/acme/api".into(),
        day: day_of(at),
        bytes,
    };
    let used = t0 + day;
    s.record_usage(&UsageBatch {
        pulls: vec![
            pull("lic_a", "acme", t0, "1.0"),
            pull("lic_b", "acme", t0 + day, "1.1"),
            pull("lic_a", "beta", t0 + day * 2, "2.0"),
        ],
        transfer: vec![transfer("lic_a", t0, 100), transfer("lic_a", t0, 50)],
        keys_used: vec![("key_u".into(), used)],
    })
    .await
    .unwrap();
    s.record_usage(&UsageBatch {
        transfer: vec![transfer("lic_a", t0, 25), transfer("lic_a", t0 + day, 7)],
        ..UsageBatch::default()
    })
    .await
    .unwrap();
    // Usage does not move the generation (directories need not reload for it) but a
    // key's last use is read with it.
    assert_eq!(s.generation().await.unwrap(), g);
    let k = s.load().await.unwrap().keys;
    assert_eq!(k[0].last_used, Some(used));

    let all = s.pulls(&UsageQuery::default()).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0], pull("lic_a", "acme", t0, "1.0"));
    let q = UsageQuery {
        subject: Some("lic_a".into()),
        ..UsageQuery::default()
    };
    assert_eq!(s.pulls(&q).await.unwrap().len(), 2);
    let q = UsageQuery {
        app: Some("acme".into()),
        since: Some(t0 + day),
        ..UsageQuery::default()
    };
    let got = s.pulls(&q).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].subject, "lic_b");

    let bytes = s
        .transfer(&UsageQuery {
            subject: Some("lic_a".into()),
            ..UsageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        bytes.iter().map(|t| t.bytes).collect::<Vec<_>>(),
        [175, 7],
        "{bytes:?}"
    );
    // A `since` inside a day includes that day's bytes.
    let later = s
        .transfer(&UsageQuery {
            since: Some(t0 + day + Duration::from_secs(3_600)),
            ..UsageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    let mut last = s.last_pulls().await.unwrap();
    last.sort();
    assert_eq!(
        last,
        vec![("lic_a".into(), t0 + day * 2), ("lic_b".into(), t0 + day)]
    );
}

pub(crate) async fn the_directory_follows_the_store(s: &dyn Store) {
    let d = Directory::load(s).await.unwrap();
    assert!(d.license_by_secret("secret-d").is_none());
    assert!(!d.refresh(s).await.unwrap());
    s.insert_license(&license("lic_d", s.hasher(), "secret-d"))
        .await
        .unwrap();
    s.insert_key(&key("key_d", s.hasher(), "berth_key_d"))
        .await
        .unwrap();
    assert!(d.refresh(s).await.unwrap());
    assert_eq!(d.license_by_secret("secret-d").unwrap().id, "lic_d");
    assert!(
        d.license_by_secret("lic_d").is_none(),
        "the id is no password"
    );
    assert_eq!(d.license("lic_d").unwrap().customer, "Big Bank");
    assert_eq!(d.key_by_secret("berth_key_d").unwrap().id, "key_d");
    assert!(d.key_by_secret("secret-d").is_none());
    s.update_license(
        "lic_d",
        &LicenseChange {
            revoked: Some(true),
            ..LicenseChange::default()
        },
    )
    .await
    .unwrap();
    assert!(d.refresh(s).await.unwrap());
    assert!(d.license("lic_d").unwrap().revoked);
}

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

pub(crate) fn manifest(d: &str, blobs: &[String], tag: Option<&str>) -> hosted::NewManifest {
    hosted::NewManifest {
        row: hosted::ManifestRow {
            digest: d.to_string(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            artifact_type: Some("application/vnd.oci.image.config.v1+json".into()),
            subject: None,
            size: 500,
            annotations: None,
            touched: SystemTime::now(),
        },
        blobs: blobs.to_vec(),
        children: Vec::new(),
        tag: tag.map(str::to_string),
        tag_mutable: true,
    }
}

pub(crate) async fn hosted_pushes_are_checked_and_listed(s: &dyn Store) {
    let (b1, b2) = (digest(1), digest(2));
    let m = manifest(&digest(10), &[b1.clone(), b2.clone()], Some("1.0"));
    // Nothing linked yet: refused, and nothing created.
    assert_eq!(
        s.put_manifest("acme", "worker", &m).await.unwrap(),
        hosted::PutManifest::BlobUnknown(b1.clone())
    );
    assert!(!s.repo_exists("acme", "worker").await.unwrap());
    s.link_blob("acme", "worker", &b1, 100).await.unwrap();
    s.link_blob("acme", "worker", &b2, 200).await.unwrap();
    assert_eq!(s.blob("acme", "worker", &b1).await.unwrap(), Some(100));
    assert_eq!(s.blob("acme", "other", &b1).await.unwrap(), None);
    assert_eq!(s.blob("beta", "worker", &b1).await.unwrap(), None);
    assert!(s.app_has_blob("acme", &b1).await.unwrap());
    assert!(!s.app_has_blob("beta", &b1).await.unwrap());
    assert_eq!(
        s.put_manifest("acme", "worker", &m).await.unwrap(),
        hosted::PutManifest::Stored
    );
    let got = s.tagged("acme", "worker", "1.0").await.unwrap().unwrap();
    assert_eq!(got.digest, digest(10));
    assert_eq!(got.size, 500);
    assert_eq!(
        s.manifest("acme", "worker", &digest(10)).await.unwrap(),
        Some(got)
    );
    assert_eq!(
        s.manifest("beta", "worker", &digest(10)).await.unwrap(),
        None
    );
    assert!(s.repo_exists("acme", "worker").await.unwrap());
    // An index whose child is not in the repository is refused.
    let mut index = manifest(&digest(11), &[], Some("multi"));
    index.children = vec![digest(12)];
    assert_eq!(
        s.put_manifest("acme", "worker", &index).await.unwrap(),
        hosted::PutManifest::ManifestUnknown(digest(12))
    );
    index.children = vec![digest(10)];
    assert_eq!(
        s.put_manifest("acme", "worker", &index).await.unwrap(),
        hosted::PutManifest::Stored
    );
    // Tags in byte order ("B" before "a"), paged.
    for t in ["a", "B", "1.1"] {
        let m = manifest(&digest(10), std::slice::from_ref(&b1), Some(t));
        s.put_manifest("acme", "worker", &m).await.unwrap();
    }
    assert_eq!(
        s.tags("acme", "worker", None, 100).await.unwrap(),
        ["1.0", "1.1", "B", "a", "multi"]
    );
    assert_eq!(
        s.tags("acme", "worker", Some("1.1"), 2).await.unwrap(),
        ["B", "a"]
    );
    // Bytes: each blob once however many repositories link it, plus manifests.
    s.link_blob("acme", "other", &b1, 100).await.unwrap();
    assert_eq!(s.app_bytes("acme").await.unwrap(), 100 + 200 + 500 + 500);
    assert_eq!(s.app_bytes("beta").await.unwrap(), 0);
    let mut all = s.hosted_blobs().await.unwrap();
    all.sort();
    assert_eq!(all, [(b1.clone(), 100), (b2.clone(), 200)]);
    assert!(s.linked_anywhere(&b1).await.unwrap());
    assert!(s.linked_anywhere(&digest(10)).await.unwrap());
    assert!(!s.linked_anywhere(&digest(99)).await.unwrap());
}

pub(crate) async fn hosted_tags_can_be_immutable(s: &dyn Store) {
    let b = digest(1);
    s.link_blob("acme", "api", &b, 10).await.unwrap();
    let mut m = manifest(&digest(20), std::slice::from_ref(&b), Some("v1"));
    m.tag_mutable = false;
    assert_eq!(
        s.put_manifest("acme", "api", &m).await.unwrap(),
        hosted::PutManifest::Stored
    );
    // The same digest again is fine; another one is refused and the tag stays.
    assert_eq!(
        s.put_manifest("acme", "api", &m).await.unwrap(),
        hosted::PutManifest::Stored
    );
    let mut other = manifest(&digest(21), std::slice::from_ref(&b), Some("v1"));
    other.tag_mutable = false;
    assert_eq!(
        s.put_manifest("acme", "api", &other).await.unwrap(),
        hosted::PutManifest::TagImmutable(digest(20))
    );
    assert_eq!(
        s.tagged("acme", "api", "v1").await.unwrap().unwrap().digest,
        digest(20)
    );
    assert_eq!(s.manifest("acme", "api", &digest(21)).await.unwrap(), None);
}

pub(crate) async fn hosted_deletes_update_tags_and_referrers(s: &dyn Store) {
    let b = digest(1);
    s.link_blob("acme", "api", &b, 10).await.unwrap();
    s.put_manifest(
        "acme",
        "api",
        &manifest(&digest(30), std::slice::from_ref(&b), Some("1")),
    )
    .await
    .unwrap();
    s.put_manifest(
        "acme",
        "api",
        &manifest(&digest(30), std::slice::from_ref(&b), Some("2")),
    )
    .await
    .unwrap();
    let mut sig = manifest(&digest(31), std::slice::from_ref(&b), None);
    sig.row.subject = Some(digest(30));
    sig.row.artifact_type = Some("application/vnd.example.sig".into());
    s.put_manifest("acme", "api", &sig).await.unwrap();
    let refs = s.referrers("acme", "api", &digest(30)).await.unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].digest, digest(31));
    assert_eq!(
        refs[0].artifact_type.as_deref(),
        Some("application/vnd.example.sig")
    );
    assert!(s
        .referrers("beta", "api", &digest(30))
        .await
        .unwrap()
        .is_empty());
    // A tag goes alone.
    assert!(s.delete_tag("acme", "api", "1").await.unwrap());
    assert!(!s.delete_tag("acme", "api", "1").await.unwrap());
    assert_eq!(s.tags("acme", "api", None, 10).await.unwrap(), ["2"]);
    assert_eq!(s.tags_of("acme", "api", &digest(30)).await.unwrap(), ["2"]);
    assert!(s
        .tags_of("beta", "api", &digest(30))
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .manifest("acme", "api", &digest(30))
        .await
        .unwrap()
        .is_some());
    // A manifest takes its tags along; a referrer goes from the listing with it.
    assert!(s.delete_manifest("acme", "api", &digest(31)).await.unwrap());
    assert!(s
        .referrers("acme", "api", &digest(30))
        .await
        .unwrap()
        .is_empty());
    assert!(s.delete_manifest("acme", "api", &digest(30)).await.unwrap());
    assert!(!s.delete_manifest("acme", "api", &digest(30)).await.unwrap());
    assert!(s.tags("acme", "api", None, 10).await.unwrap().is_empty());
    assert!(s.tagged("acme", "api", "2").await.unwrap().is_none());
    assert!(s.unlink_blob("acme", "api", &b).await.unwrap());
    assert!(!s.unlink_blob("acme", "api", &b).await.unwrap());
    assert_eq!(s.blob("acme", "api", &b).await.unwrap(), None);
    // What the deletes released is there for collection, until it forgets it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let now = SystemTime::now();
    let mut released = s.released(now).await.unwrap();
    released.sort();
    assert_eq!(
        released,
        [(b.clone(), false), (digest(30), true), (digest(31), true)]
    );
    assert!(s
        .released(now - Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());
    s.forget_released(&[b.clone(), digest(30)], now)
        .await
        .unwrap();
    assert_eq!(s.released(now).await.unwrap(), [(digest(31), true)]);
}

pub(crate) async fn the_hosted_catalog_pages_in_byte_order(s: &dyn Store) {
    for (app, repo) in [
        ("acme", "x"),
        ("acme-b", "y"),
        ("acme", "a/b"),
        ("beta", "z"),
        ("acme", "Z"),
    ] {
        s.link_blob(app, repo, &digest(1), 1).await.unwrap();
    }
    assert_eq!(
        s.catalog(None, None, 100).await.unwrap(),
        ["acme-b/y", "acme/Z", "acme/a/b", "acme/x", "beta/z"]
    );
    let acme = ["acme".to_string()];
    assert_eq!(
        s.catalog(Some(&acme), None, 2).await.unwrap(),
        ["acme/Z", "acme/a/b"]
    );
    assert_eq!(
        s.catalog(Some(&acme), Some("acme/a/b"), 2).await.unwrap(),
        ["acme/x"]
    );
    let two = ["beta".to_string(), "acme-b".to_string()];
    assert_eq!(
        s.catalog(Some(&two), None, 10).await.unwrap(),
        ["acme-b/y", "beta/z"]
    );
    assert!(s.catalog(Some(&[]), None, 10).await.unwrap().is_empty());
}

pub(crate) async fn collection_deletes_only_what_is_still_unreferenced(s: &dyn Store) {
    let (b1, b2) = (digest(1), digest(2));
    s.link_blob("acme", "api", &b1, 10).await.unwrap();
    s.link_blob("acme", "api", &b2, 20).await.unwrap();
    s.put_manifest(
        "acme",
        "api",
        &manifest(&digest(40), std::slice::from_ref(&b1), Some("t")),
    )
    .await
    .unwrap();
    s.put_manifest(
        "acme",
        "api",
        &manifest(&digest(41), std::slice::from_ref(&b2), None),
    )
    .await
    .unwrap();
    let repos = s.gc_repos(Some("acme")).await.unwrap();
    assert_eq!(repos.len(), 1);
    let r = &repos[0];
    assert_eq!((r.app.as_str(), r.repo.as_str()), ("acme", "api"));
    assert_eq!(r.tags, [("t".to_string(), digest(40))]);
    assert_eq!(r.manifests.len(), 2);
    assert_eq!(r.manifests[0].refs, std::slice::from_ref(&b1));
    assert_eq!(r.blobs.len(), 2);
    assert!(s.gc_repos(Some("beta")).await.unwrap().is_empty());
    // Before the cutoff: nothing is old enough.
    let past = SystemTime::now() - Duration::from_secs(60);
    let all_m = [digest(40), digest(41)];
    let all_b = [b1.clone(), b2.clone()];
    let none = s
        .gc_delete("acme", "api", &all_m, &all_b, past)
        .await
        .unwrap();
    assert_eq!(none, hosted::GcDeleted::default());
    // After it: the tagged manifest and the blob a remaining manifest references stay.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let future = SystemTime::now() + Duration::from_secs(60);
    let done = s
        .gc_delete("acme", "api", &all_m, &all_b, future)
        .await
        .unwrap();
    assert_eq!(done.manifests, [digest(41)]);
    assert_eq!(done.blobs, std::slice::from_ref(&b2));
    assert!(s.blob("acme", "api", &b1).await.unwrap().is_some());
    assert!(!s.linked_anywhere(&b2).await.unwrap());
    // Once empty, the repository leaves the catalog.
    s.delete_manifest("acme", "api", &digest(40)).await.unwrap();
    let done = s
        .gc_delete("acme", "api", &[], std::slice::from_ref(&b1), future)
        .await
        .unwrap();
    assert_eq!(done.blobs, [b1]);
    assert!(s.catalog(None, None, 10).await.unwrap().is_empty());
}

/// Runs the suite against the store `make` opens.
#[macro_export]
macro_rules! state_suite {
    ($make:ident) => {
        mod suite {
            use super::*;

            #[tokio::test]
            async fn licenses_round_trip_and_move_the_generation() {
                let (_g, s) = $make().await;
                $crate::state::suite::licenses_round_trip_and_move_the_generation(&s).await;
            }

            #[tokio::test]
            async fn keys_and_admin_tokens() {
                let (_g, s) = $make().await;
                $crate::state::suite::keys_and_admin_tokens(&s).await;
            }

            #[tokio::test]
            async fn the_audit_trail_pages_in_order() {
                let (_g, s) = $make().await;
                $crate::state::suite::the_audit_trail_pages_in_order(&s).await;
            }

            #[tokio::test]
            async fn usage_is_recorded_and_filtered() {
                let (_g, s) = $make().await;
                $crate::state::suite::usage_is_recorded_and_filtered(&s).await;
            }

            #[tokio::test]
            async fn the_directory_follows_the_store() {
                let (_g, s) = $make().await;
                $crate::state::suite::the_directory_follows_the_store(&s).await;
            }

            #[tokio::test]
            async fn hosted_pushes_are_checked_and_listed() {
                let (_g, s) = $make().await;
                $crate::state::suite::hosted_pushes_are_checked_and_listed(&s).await;
            }

            #[tokio::test]
            async fn hosted_tags_can_be_immutable() {
                let (_g, s) = $make().await;
                $crate::state::suite::hosted_tags_can_be_immutable(&s).await;
            }

            #[tokio::test]
            async fn hosted_deletes_update_tags_and_referrers() {
                let (_g, s) = $make().await;
                $crate::state::suite::hosted_deletes_update_tags_and_referrers(&s).await;
            }

            #[tokio::test]
            async fn the_hosted_catalog_pages_in_byte_order() {
                let (_g, s) = $make().await;
                $crate::state::suite::the_hosted_catalog_pages_in_byte_order(&s).await;
            }

            #[tokio::test]
            async fn collection_deletes_only_what_is_still_unreferenced() {
                let (_g, s) = $make().await;
                $crate::state::suite::collection_deletes_only_what_is_still_unreferenced(&s).await;
            }
        }
    };
}
