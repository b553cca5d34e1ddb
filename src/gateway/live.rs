//! The running gateway behind a swappable handle, for `SIGHUP` reloads.
//!
//! [`Live`] holds the current [`Gateway`] and its main service. Every request
//! loads it (one atomic load through `arc-swap`), so a reload takes effect for
//! the next request, also on kept-alive connections. Each serving thread keeps
//! its own copy with its own upstream pools ([`MainService::with_own_pools`]);
//! a generation counter tells it when to build a new one.
//!
//! A reload reads the config file (and through it the users file) with the
//! same loader as `check-config`. A file with problems is logged, problem by
//! problem, and nothing changes. Settings bound at start-up (listen
//! addresses, listener limits and timeouts, turning TLS on or off, the store)
//! keep their old values and are logged as needing a restart. TLS
//! certificates and keys are read again: a renewed certificate (same or new
//! files) is served from the next handshake on. The new gateway is built on
//! the same store, so sessions survive; the old one's background tasks stop.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use axum::body::Body;
use http::{Request, Response};
use tower::{Service, ServiceExt};

use super::{Gateway, MainService};
use crate::config::{Config, StoreKind};
use crate::context::ConnInfo;
use crate::server::ForConnection;

struct Current {
    gateway: Gateway,
    main: MainService,
    admin: axum::Router,
}

/// The current gateway, swapped whole on reload.
pub struct Live {
    current: ArcSwap<Current>,
    generation: AtomicU64,
    /// Reloads run one at a time.
    reloading: tokio::sync::Mutex<()>,
    config_path: Option<PathBuf>,
    /// The listeners' per-address caps, which exempt `server.trusted_proxies`
    /// (given by [`Live::follow_trusted_proxies`]).
    address_limits: std::sync::OnceLock<Vec<Arc<crate::server::AddressLimit>>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new config serves; the keys of settings that kept their old value.
    Applied { needs_restart: Vec<&'static str> },
    /// Nothing changed; the problems found (`key: message`).
    Refused(Vec<String>),
}

impl Live {
    /// Wraps a built gateway; `config_path` is re-read on [`Live::reload`].
    pub fn new(gateway: Gateway, config_path: Option<PathBuf>) -> Arc<Self> {
        crate::metrics::install();
        for result in ["success", "failure"] {
            metrics::counter!("portcullis_config_reloads_total", "result" => result).increment(0);
        }
        Arc::new(Self {
            current: ArcSwap::from_pointee(Current::of(gateway)),
            generation: AtomicU64::new(0),
            reloading: tokio::sync::Mutex::new(()),
            config_path,
            address_limits: std::sync::OnceLock::new(),
        })
    }

    /// Has every reload hand its `server.trusted_proxies` to these
    /// per-address caps (the listeners', bound at start-up).
    pub fn follow_trusted_proxies(&self, limits: Vec<Arc<crate::server::AddressLimit>>) {
        let _ = self.address_limits.set(limits);
    }

    /// The gateway serving now.
    pub fn gateway(&self) -> Gateway {
        self.current.load().gateway.clone()
    }

    /// The main listener's service for one serving thread (its own pools).
    pub fn main_service(self: &Arc<Self>) -> LiveMain {
        let generation = self.generation.load(Ordering::Acquire);
        let main = self.current.load().main.with_own_pools();
        LiveMain {
            live: self.clone(),
            local: Arc::new(ArcSwap::from_pointee((generation, main))),
            conn: None,
        }
    }

    /// The admin listener's service.
    pub fn admin_service(self: &Arc<Self>) -> LiveAdmin {
        LiveAdmin { live: self.clone() }
    }

    /// Re-reads the config file and swaps in a gateway built from it.
    pub async fn reload(&self) -> ReloadOutcome {
        let _one = self.reloading.lock().await;
        let outcome = self.try_reload().await;
        match &outcome {
            ReloadOutcome::Applied { needs_restart } => {
                metrics::counter!("portcullis_config_reloads_total", "result" => "success").increment(1);
                for key in needs_restart {
                    tracing::warn!(
                        key,
                        "changed in the config file, but needs a restart; the old value stays"
                    );
                }
                tracing::info!(
                    generation = self.generation.load(Ordering::Acquire),
                    "configuration reloaded"
                );
            }
            ReloadOutcome::Refused(problems) => {
                metrics::counter!("portcullis_config_reloads_total", "result" => "failure").increment(1);
                for p in problems {
                    tracing::error!(problem = %p, "reload refused");
                }
                tracing::error!(
                    problems = problems.len(),
                    "reload refused; the running configuration stays"
                );
            }
        }
        outcome
    }

    async fn try_reload(&self) -> ReloadOutcome {
        let Some(path) = &self.config_path else {
            return ReloadOutcome::Refused(vec!["config: this gateway was not started from a file".into()]);
        };
        let loaded = match crate::config::load_file(path) {
            Ok(l) => l,
            Err(e) => return ReloadOutcome::Refused(e.problems.iter().map(ToString::to_string).collect()),
        };
        for w in &loaded.warnings {
            tracing::warn!(warning = %w, "config warning");
        }
        let old = self.current.load_full();
        let old_config = old.gateway.state().config.clone();
        let (config, needs_restart) = keep_restart_settings(&old_config, loaded.config);
        let tls = [config.server.tls.clone(), config.admin.tls.clone()];
        let gateway = match old.gateway.rebuild(config).await {
            Ok(g) => g,
            Err(e) => return ReloadOutcome::Refused(vec![e.to_string()]),
        };
        let proxies = gateway.state().config.server.trusted_proxies.clone();
        self.current.store(Arc::new(Current::of(gateway)));
        self.generation.fetch_add(1, Ordering::AcqRel);
        for limit in self.address_limits.get().into_iter().flatten() {
            limit.set_exempt(proxies.clone());
        }
        for (key, tls) in ["server.tls", "admin.tls"].into_iter().zip(tls) {
            if let Some(tls) = tls {
                renew_certificate(key, &tls);
            }
        }
        // Requests already inside the old gateway finish with it; its refreshers stop.
        old.gateway.retire();
        ReloadOutcome::Applied { needs_restart }
    }

    /// Reloads on every `SIGHUP` until the process ends.
    #[cfg(unix)]
    pub fn reload_on_sighup(self: &Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload needs a restart");
                return;
            }
        };
        let this = self.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                this.reload().await;
            }
        });
    }
}

impl Current {
    fn of(gateway: Gateway) -> Self {
        Self {
            main: gateway.main_service(),
            admin: gateway.admin_router(),
            gateway,
        }
    }
}

/// Puts back the settings a running process cannot change; returns the
/// config to build and the keys that changed but kept their old value.
fn keep_restart_settings(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let mut kept = Vec::new();
    let (o, n) = (&old.server, &new.server);
    let checks: [(&'static str, bool); 9] = [
        ("server.listen", o.listen != n.listen),
        ("server.tls", o.tls.is_some() != n.tls.is_some()),
        (
            "server.header_read_timeout",
            o.header_read_timeout != n.header_read_timeout,
        ),
        (
            "server.max_header_bytes",
            o.max_header_bytes != n.max_header_bytes,
        ),
        ("server.idle_timeout", o.idle_timeout != n.idle_timeout),
        ("server.max_connections", o.max_connections != n.max_connections),
        (
            "server.max_tls_handshakes",
            o.max_tls_handshakes != n.max_tls_handshakes,
        ),
        (
            "server.max_connections_per_ip",
            o.max_connections_per_ip != n.max_connections_per_ip,
        ),
        (
            "server.body_read_timeout",
            o.body_read_timeout != n.body_read_timeout,
        ),
    ];
    for (key, changed) in checks {
        if changed {
            kept.push(key);
        }
    }
    if o.tls_handshake_timeout != n.tls_handshake_timeout {
        kept.push("server.tls_handshake_timeout");
    }
    if o.shutdown_timeout != n.shutdown_timeout {
        kept.push("server.shutdown_timeout");
    }
    if old.admin.listen != new.admin.listen {
        kept.push("admin.listen");
    }
    if old.admin.tls.is_some() != new.admin.tls.is_some() {
        kept.push("admin.tls");
    }
    if !same_store(&old.store.kind, &new.store.kind) {
        kept.push("store");
    }
    // No keys in the file means the default key, already resolved at start-up.
    if !new.store.encryption_keys.is_empty()
        && !same_keys(&old.store.encryption_keys, &new.store.encryption_keys)
    {
        kept.push("store.encryption_keys");
    }
    // Listener settings are bound to the sockets; trusted proxies and the
    // external URL are read per request and do change, and so does the TLS
    // certificate (through the listener's certificate slot).
    let server = std::mem::replace(&mut new.server, old.server.clone());
    new.server.trusted_proxies = server.trusted_proxies;
    new.server.external_url = server.external_url;
    new.server.tls = keep_listener_tls(old.server.tls.as_ref(), server.tls);
    new.admin.listen = old.admin.listen;
    new.admin.tls = keep_listener_tls(old.admin.tls.as_ref(), new.admin.tls.take());
    new.store = old.store.clone();
    (new, kept)
}

/// The listener serves the certificate just read from the files (the loader
/// checked that the key belongs to it) from its next handshake on; logged
/// when it is a different certificate.
fn renew_certificate(key: &str, tls: &crate::config::TlsConfig) {
    if tls.cert.current().cert == tls.certified.cert {
        return;
    }
    tls.cert.replace(tls.certified.clone());
    tracing::info!(
        key,
        cert = %tls.cert_path.display(),
        "TLS certificate reloaded; new connections get it"
    );
}

/// The TLS settings of a running listener after a reload: the file paths and
/// the certificate just read, served through the listener's own config and
/// certificate slot. Turning TLS on or off needs a restart: the old stays.
fn keep_listener_tls(
    old: Option<&crate::config::TlsConfig>,
    new: Option<crate::config::TlsConfig>,
) -> Option<crate::config::TlsConfig> {
    match (old, new) {
        (Some(old), Some(new)) => Some(crate::config::TlsConfig {
            server_config: old.server_config.clone(),
            cert: old.cert.clone(),
            ..new
        }),
        (old, _) => old.cloned(),
    }
}

fn same_store(a: &StoreKind, b: &StoreKind) -> bool {
    match (a, b) {
        (StoreKind::Memory, StoreKind::Memory) => true,
        (StoreKind::Sqlite { path: a }, StoreKind::Sqlite { path: b }) => a == b,
        (
            StoreKind::Postgres {
                url: a,
                listen_url: la,
            },
            StoreKind::Postgres {
                url: b,
                listen_url: lb,
            },
        ) => {
            crate::secret::ct_eq(a.expose(), b.expose())
                && match (la, lb) {
                    (None, None) => true,
                    (Some(a), Some(b)) => crate::secret::ct_eq(a.expose(), b.expose()),
                    _ => false,
                }
        }
        _ => false,
    }
}

fn same_keys(a: &[crate::secret::Secret], b: &[crate::secret::Secret]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| crate::secret::ct_eq(a.expose(), b.expose()))
}

/// The main listener's service on one serving thread: the current gateway's
/// main service with this thread's own upstream pools.
#[derive(Clone)]
pub struct LiveMain {
    live: Arc<Live>,
    local: Arc<ArcSwap<(u64, MainService)>>,
    /// The connection's facts, when the server told them
    /// ([`ForConnection`]): every generation's service gets them.
    conn: Option<ConnInfo>,
}

impl ForConnection for LiveMain {
    fn for_connection(&self, conn: ConnInfo) -> Option<Self> {
        Some(Self {
            conn: Some(conn),
            ..self.clone()
        })
    }
}

impl LiveMain {
    fn current(&self) -> MainService {
        let generation = self.live.generation.load(Ordering::Acquire);
        let local = self.local.load();
        if local.0 == generation {
            return local.1.clone();
        }
        // First request on this thread since a reload: new pools for the new upstreams.
        let main = self.live.current.load().main.with_own_pools();
        self.local.store(Arc::new((generation, main.clone())));
        main
    }
}

impl Service<Request<Body>> for LiveMain {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = <MainService as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.current().told(self.conn).call(req)
    }
}

/// Keeps the default on purpose: the admin router reads `ConnInfo` from each
/// request's extensions (its throttle and audit address), and without it
/// would count every caller as one unknown client (0.0.0.0).
impl ForConnection for LiveAdmin {}

/// The admin listener's service: the current gateway's admin router.
#[derive(Clone)]
pub struct LiveAdmin {
    live: Arc<Live>,
}

impl Service<Request<Body>> for LiveAdmin {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let router = self.live.current.load().admin.clone();
        Box::pin(router.oneshot(req))
    }
}
