//! The composition root of `berth serve`: builds the service from the config, opens the
//! listeners, and owns the process lifecycle (reload on SIGHUP or a changed file, graceful
//! shutdown on SIGTERM).

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::tenancy::UpstreamAuth;
use crate::{admin, api, server};

/// Why `berth serve` could not start; each names the config key or resource at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("server.listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] api::BuildError),
    #[error("server.admin_listen: cannot listen on {addr}: {source}")]
    AdminListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server.webhook_listen: cannot listen on {addr}: {source}")]
    WebhookListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("state: {0} (check state.sqlite or state.postgres)")]
    State(#[from] crate::state::StateError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the proxy until SIGTERM or ctrl-c. SIGHUP reloads the config file: licenses,
/// upstreams and credentials change for new requests; pulls in flight keep their snapshot.
pub async fn run(config: Config) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};

    let (tls, resolver) = if config.server.tls.is_empty() {
        (None, None)
    } else {
        let (c, r) = server::tls::server_config("server.tls", &config.server.tls)?;
        (Some(c), Some(r))
    };
    // The webhook listener's TLS is its own (certificates of its own, reloaded apart).
    let (webhook_tls, webhook_resolver) = match config.server.webhook_listen {
        Some(_) => {
            let (c, r) =
                server::tls::server_config("server.webhook_tls", &config.server.webhook_tls)?;
            (Some(c), Some(r))
        }
        None => (None, None),
    };
    let resolvers = Resolvers {
        customer: resolver,
        webhook: webhook_resolver,
    };
    let addr = config.server.listen;
    let grace = config.server.shutdown_timeout;
    let admin_addr = config.server.admin_listen;
    let config_webhook = config.server.webhook_listen;
    // Everything the service needs (cache index, token key, audit log) is ready before the
    // port opens: a client that can connect can be served.
    // One metrics registry for the process: each component registers its families as it
    // is built; the admin listener renders it.
    let mut metrics = prometheus_client::registry::Registry::with_prefix("berth");
    // The control plane's store is open and read before the port opens, so the first
    // request already sees every license and key.
    let store = crate::state::open(&config.state).await?;
    let directory = Arc::new(crate::state::Directory::load(&*store).await?);
    let usage = crate::control::usage::Recorder::start(store.clone(), &mut metrics);
    let api = Arc::new(api::Api::new(
        config,
        directory.clone(),
        usage.clone(),
        store.clone(),
        &mut metrics,
    )?);
    // Hosted blobs are pinned before the port opens: eviction never sees one unpinned.
    api.hosted.pin_hosted().await?;
    crate::hosted::gc::start_schedule(&api.hosted, &api.config.current().hosted);
    follow_directory(&api, directory.clone(), store.clone(), &mut metrics);
    let reload_failures = process_metrics(&mut metrics);
    // The admin listener's control plane writes the same store the directory follows, so
    // a license created or revoked there is in force on the customer port within a refresh.
    let admin_edge = Arc::new(admin::Admin::new(
        api.probes.clone(),
        Arc::new(metrics),
        crate::control::Control::new(store.clone()),
        directory,
        api.hosted.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let admin = match admin_addr {
        Some(a) => Some((
            a,
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|source| StartError::AdminListen { addr: a, source })?,
        )),
        None => None,
    };
    // The admission webhook has a listener of its own, never the customer port.
    let webhook = match (config_webhook, webhook_tls) {
        (Some(a), Some(tls)) => Some((
            a,
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|source| StartError::WebhookListen { addr: a, source })?,
            tls,
        )),
        _ => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some((a, l, tls)) = webhook {
        tracing::info!(webhook = %a, "webhook listener: /admission/rewrite");
        tokio::spawn(server::webhook::serve(api.clone(), l, tls, stop_rx.clone()));
    }
    let admin_task = admin.map(|(a, l)| {
        tracing::info!(admin = %a, "admin listener: /metrics /healthz /readyz /api/v1");
        tokio::spawn(server::admin::serve(admin_edge, l, stop_rx.clone()))
    });
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
    tracing::info!(
        listen = %addr,
        hostname = %api.config.current().server.hostname,
        tls = tls.is_some(),
        "berth serving"
    );
    let reloads = Arc::new(Reloads {
        resolvers,
        failures: reload_failures,
        loaded: std::sync::Mutex::new(api.config.current().source.as_deref().and_then(stamp)),
    });
    let reloader = {
        let api = api.clone();
        let reloads = reloads.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reloads.reload(&api);
            }
        })
    };
    let watcher = tokio::spawn(watch_config(api.clone(), reloads));
    warm_up(&api);
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
        }
        let _ = stop_tx.send(true);
        // Probes fail before the customer port closes, so a load balancer stops sending
        // new pulls here while the ones in flight finish.
        if let Some(t) = admin_task {
            let _ = t.await;
        }
    };
    server::serve(api, listener, tls, grace, shutdown).await;
    reloader.abort();
    watcher.abort();
    // What the last pulls recorded is written before the process goes (best effort).
    if tokio::time::timeout(std::time::Duration::from_secs(5), usage.flush())
        .await
        .is_err()
    {
        tracing::warn!("usage not written within 5s at shutdown; the last records are lost");
    }
    Ok(())
}

/// Sets the control plane's gauges now, then whenever the directory moves and once a
/// second (expiry changes states without a write); config licenses from the live config.
fn follow_directory(
    api: &Arc<api::Api>,
    directory: Arc<crate::state::Directory>,
    store: Arc<dyn crate::state::Store>,
    metrics: &mut prometheus_client::registry::Registry,
) {
    let gauges = crate::control::metrics::ControlMetrics::register(metrics);
    let live = api.config.clone();
    let observe = move |snapshot: &crate::state::Snapshot, now| {
        gauges.observe(&live.current().tenants.licenses(), snapshot, now)
    };
    observe(&directory.snapshot(), std::time::SystemTime::now());
    tokio::spawn(directory.follow(store, observe));
}

/// `berth_build_info{version}` and `berth_config_reload_failures_total`, which
/// [`reload`] counts.
fn process_metrics(
    metrics: &mut prometheus_client::registry::Registry,
) -> prometheus_client::metrics::counter::Counter {
    use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
    let info = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
        .set(1);
    metrics.register("build_info", "The running berth's version", info);
    let failures = Counter::default();
    metrics.register(
        "config_reload_failures",
        "Config reloads refused (an invalid file or certificate); the running config kept serving",
        failures.clone(),
    );
    failures
}

/// Checks each upstream's credentials in the background right after start (learning how
/// it authenticates on the way, so the first customer pull does not pay for the 401 round
/// trip): a wrong password is one warning line now, not a failed customer pull later.
/// Never delays readiness nor refuses to start: an upstream may be down for a while.
/// At most `WARM_UP_CONCURRENCY` checks at once, each bounded by the upstream's timeout.
fn warm_up(api: &Arc<api::Api>) {
    const WARM_UP_CONCURRENCY: usize = 4;
    let config = api.config.current();
    if config.cache.offline {
        return;
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(WARM_UP_CONCURRENCY));
    for up in config.tenants.upstreams().to_vec() {
        let api = api.clone();
        let permits = permits.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            let client = api.registry.upstream_client();
            let limit = up.timeout.min(std::time::Duration::from_secs(10));
            // Stored secrets (a password, a JSON key) are what a typo breaks: log in with
            // them. A cloud identity renews its own short-lived login and `berth upstream
            // test` walks its steps; logging in here would only race the first pulls for
            // it, so for those berth learns the scheme, as before.
            let check = async {
                match up.auth {
                    UpstreamAuth::Anonymous
                    | UpstreamAuth::Static(_)
                    | UpstreamAuth::GcpServiceAccount(_) => client.authenticate(&up, "").await,
                    _ => client.learn_scheme(&up).await,
                }
            };
            match tokio::time::timeout(limit, check).await {
                Ok(Ok(())) => tracing::debug!(upstream = %up.name, "upstream credentials accepted"),
                // The error's text names the kind (rejected credentials, cannot connect,
                // plain HTTP); no secret is part of any.
                Ok(Err(e)) => tracing::warn!(upstream = %up.name, error = %e,
                    "upstream check at start failed; pulls through it will fail until fixed: run `berth upstream test {}`", up.name),
                Err(_) => tracing::warn!(upstream = %up.name,
                    "upstream check at start timed out after {limit:?}; run `berth upstream test {}`", up.name),
            }
        });
    }
}

/// What identifies a version of the config file without reading it: mtime and length.
type Stamp = (Option<std::time::SystemTime>, u64);

fn stamp(p: &std::path::Path) -> Option<Stamp> {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// Reloads when the config file changes on disk (an edit, or a ConfigMap update that
/// swaps the symlink). Checks the file's metadata every 2 s: one `stat`, no file contents.
/// A version already loaded (by a SIGHUP sent after the edit) is not loaded again.
async fn watch_config(api: Arc<api::Api>, reloads: Arc<Reloads>) {
    let Some(path) = api.config.current().source.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        let now = stamp(&path);
        let seen = *reloads.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != seen {
            reloads.reload(&api);
        }
    }
}

/// The certificate sets a reload swaps: the customer listener's and the webhook's.
struct Resolvers {
    customer: Option<Arc<server::tls::SniResolver>>,
    webhook: Option<Arc<server::tls::SniResolver>>,
}

/// What SIGHUP and the file watcher share, so the two are one reload: the version of
/// the file last read (its lock also keeps two reloads from running at once).
struct Reloads {
    resolvers: Resolvers,
    failures: prometheus_client::metrics::counter::Counter,
    loaded: std::sync::Mutex<Option<Stamp>>,
}

impl Reloads {
    /// Re-reads the config file (and TLS certificates); an invalid file is refused and the
    /// old config keeps serving. The version read is remembered either way: a refused
    /// file is not retried until it changes again (or SIGHUP asks).
    fn reload(&self, api: &api::Api) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let current = api.config.current();
        let Some(path) = current.source.clone() else {
            return;
        };
        *loaded = stamp(&path);
        reload(api, &self.resolvers, &self.failures);
    }
}

/// Re-reads the config file (and TLS certificates); an invalid file is refused and the old
/// config keeps serving.
fn reload(
    api: &api::Api,
    resolvers: &Resolvers,
    failures: &prometheus_client::metrics::counter::Counter,
) {
    let current = api.config.current();
    let Some(path) = current.source.clone() else {
        return;
    };
    match Config::load(&path) {
        Ok(new) => {
            if new.cache.dir != current.cache.dir {
                tracing::warn!("cache.dir changed: takes effect after a restart");
            }
            if new.server.listen != current.server.listen {
                tracing::warn!("server.listen changed: takes effect after a restart");
            }
            if new.server.webhook_listen != current.server.webhook_listen
                || new.server.max_connections != current.server.max_connections
            {
                tracing::warn!("server.webhook_listen or server.max_connections changed: takes effect after a restart");
            }
            if let Some(r) = &resolvers.customer {
                if new.server.tls.is_empty() {
                    tracing::warn!("server.tls removed: takes effect after a restart");
                } else if let Err(e) = r.reload("server.tls", &new.server.tls) {
                    tracing::error!(error = %e, "reload refused; keeping the running configuration");
                    failures.inc();
                    return;
                }
            }
            if let (Some(r), Some(_)) = (&resolvers.webhook, new.server.webhook_listen) {
                if let Err(e) = r.reload("server.webhook_tls", &new.server.webhook_tls) {
                    tracing::error!(error = %e, "reload refused; keeping the running configuration");
                    failures.inc();
                    return;
                }
            }
            let changes = changes(&current, &new);
            api.config.replace(new);
            // Stored credentials may have changed: tokens obtained with the old ones go.
            api.registry.upstream_client().forget_credentials();
            tracing::info!(config = %path.display(), changes = %changes, "configuration reloaded");
        }
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "reload refused; keeping the running configuration");
            failures.inc();
        }
    }
}

/// What a reload changes, for its log line: upstreams, apps and config licenses added,
/// removed and changed (by name or public id), and the settings keys that differ. Built
/// from `Debug` output, where every `Secret` is redacted, so no secret can appear; a
/// changed static password is compared directly and counted as a changed upstream.
fn changes(old: &Config, new: &Config) -> String {
    fn diff<T: std::fmt::Debug>(
        old: Vec<(String, T)>,
        new: Vec<(String, T)>,
        same: impl Fn(&T, &T) -> bool,
    ) -> Option<String> {
        let (mut added, mut removed, mut changed) = (0, 0, 0);
        for (name, n) in &new {
            match old.iter().find(|(o, _)| o == name) {
                None => added += 1,
                Some((_, o)) if !same(o, n) => changed += 1,
                Some(_) => {}
            }
        }
        for (name, _) in &old {
            if !new.iter().any(|(n, _)| n == name) {
                removed += 1;
            }
        }
        (added + removed + changed > 0).then(|| format!("+{added} -{removed} changed {changed}"))
    }
    fn debug_same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }
    let mut parts = Vec::new();
    let ups = |c: &Config| {
        c.tenants
            .upstreams()
            .iter()
            .map(|u| (u.name.clone(), u.clone()))
            .collect::<Vec<_>>()
    };
    if let Some(d) = diff(ups(old), ups(new), |a, b| {
        debug_same(a, b) && static_secret(&a.auth) == static_secret(&b.auth)
    }) {
        parts.push(format!("upstreams: {d}"));
    }
    let apps = |c: &Config| {
        c.tenants
            .apps()
            .into_iter()
            .map(|a| (a.slug.clone(), format!("{a:?}")))
            .collect::<Vec<_>>()
    };
    if let Some(d) = diff(apps(old), apps(new), |a, b| a == b) {
        parts.push(format!("apps: {d}"));
    }
    let licenses = |c: &Config| {
        c.tenants
            .licenses()
            .into_iter()
            .map(|l| (l.id.clone(), l))
            .collect::<Vec<_>>()
    };
    if let Some(d) = diff(licenses(old), licenses(new), debug_same) {
        parts.push(format!("licenses: {d}"));
    }
    let mut keys = Vec::new();
    settings_keys("server", &old.server, &new.server, &mut keys);
    settings_keys("cache", &old.cache, &new.cache, &mut keys);
    settings_keys("auth", &old.auth, &new.auth, &mut keys);
    settings_keys("hosted", &old.hosted, &new.hosted, &mut keys);
    settings_keys("state", &old.state, &new.state, &mut keys);
    if !debug_same(&old.rewrite, &new.rewrite) {
        keys.push("rewrite".to_string());
    }
    if !keys.is_empty() {
        parts.push(format!("settings: {}", keys.join(", ")));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join("; ")
    }
}

/// The secrets `Debug` hides that a reload should notice: a static password or a key.
fn static_secret(auth: &crate::tenancy::UpstreamAuth) -> Option<&crate::settings::Secret> {
    match auth {
        crate::tenancy::UpstreamAuth::Static(c) => Some(&c.password),
        crate::tenancy::UpstreamAuth::GcpServiceAccount(s) => Some(s),
        _ => None,
    }
}

/// The top-level fields of a settings section that differ (`server.tag_ttl`), from the
/// section's pretty `Debug`: each field starts a line indented by four spaces.
fn settings_keys<T: std::fmt::Debug>(section: &str, old: &T, new: &T, out: &mut Vec<String>) {
    fn fields(v: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in v.lines() {
            let top = line.strip_prefix("    ").filter(|l| !l.starts_with(' '));
            match top.and_then(|l| l.split_once(':')) {
                Some((name, _)) if !name.contains(' ') => out.push((name.to_string(), line.into())),
                _ => {
                    if let Some((_, text)) = out.last_mut() {
                        text.push('\n');
                        text.push_str(line);
                    }
                }
            }
        }
        out
    }
    let (o, n) = (format!("{old:#?}"), format!("{new:#?}"));
    if o == n {
        return;
    }
    let (o, n) = (fields(&o), fields(&n));
    let before = out.len();
    for (name, text) in &n {
        if o.iter().find(|(k, _)| k == name).map(|(_, t)| t) != Some(text) {
            out.push(format!("{section}.{name}"));
        }
    }
    if out.len() == before {
        out.push(section.to_string());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reload_line_names_what_changed_and_no_secret() {
        let base = |extra: &str, password: &str, ttl: &str| {
            format!(
                "server: {{ listen: \"127.0.0.1:5000\", hostname: h.test }}\ncache: {{ dir: /tmp/x, tag_ttl: {ttl} }}\nupstreams:\n  - {{ name: q, kind: quay, url: https://quay.io, username: u, password: {password} }}\n{extra}apps:\n  - {{ slug: acme, upstreams: [q] }}\n"
            )
        };
        let load = |t: String| {
            crate::config::Config::parse(&t, std::path::Path::new("/tmp"), &|_| None)
                .unwrap_or_else(|e| panic!("{e}: {t}"))
        };
        let old = load(base("", "hunter2secret", "5m"));
        assert_eq!(super::changes(&old, &old), "none");
        let new = load(base(
            "  - { name: h, kind: public, url: https://ghcr.io }\n",
            "other-secret",
            "10m",
        ));
        let line = super::changes(&old, &new);
        assert!(line.contains("upstreams: +1 -0 changed 1"), "{line}");
        assert!(line.contains("settings: cache.tag_ttl"), "{line}");
        assert!(!line.contains("secret"), "{line}");
    }
}
