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
    assert_eq!(s.schema_version().await.unwrap(), 2);
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
        }
    };
}
