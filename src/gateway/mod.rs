//! The assembled gateway: builds every part from a validated [`Config`] and
//! hands out the services the listeners serve.
//!
//! [`Gateway::main_service`] is the main listener's stack: prepare the
//! request ([`crate::context`]), split portal traffic from application traffic, then
//! enforcement ([`crate::enforce`]) in front of the proxy ([`crate::proxy`]).
//! [`Gateway::admin_router`] serves health, readiness and metrics.

pub mod keys;
mod live;
mod service;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use live::{Live, LiveAdmin, LiveMain, ReloadOutcome};
pub use service::MainService;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::enforce::{Enforcer, MfaLayer};
use crate::passwords::PasswordPool;
use crate::policy::Policy;
use crate::proxy::{Proxy, ProxySettings};
use crate::regulation::Regulator;
use crate::session::SessionCodec;
use crate::session::revocation::RevocationView;
use crate::state::{AppState, Handles};
use crate::store::{RevocationEvent, SharedStore};
use crate::users::{SharedUsers, UserDirectory, UserSync};

/// Why the gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("proxy: {0}")]
    Proxy(String),
    #[error("{0}")]
    Keys(String),
    #[error("users.ldap: {0}")]
    Directory(String),
}

/// A running gateway's parts.
#[derive(Clone)]
pub struct Gateway {
    state: Arc<AppState>,
    proxy: Proxy,
    /// Wrong admin tokens by client address (per process, shared by every
    /// admin router this gateway hands out).
    admin_throttle: Arc<crate::admin::throttle::TokenThrottle>,
    background: Arc<Vec<tokio::task::AbortHandle>>,
    /// The audit writer, to let it finish before the process exits.
    audit: Arc<std::sync::Mutex<Option<crate::audit::Writer>>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// Opens the store and builds every part, on the system clock.
    pub async fn build(config: Config) -> Result<Self, BuildError> {
        Self::build_with(config, crate::clock::system()).await
    }

    /// Builds for a command that manages the store (`portcullis users`): as
    /// [`Gateway::build`], but a missing key file is not created
    /// ([`keys::resolve_existing`]).
    pub async fn build_for_tool(config: Config) -> Result<Self, BuildError> {
        Self::open_and_build(config, crate::clock::system(), keys::resolve_existing).await
    }

    /// Builds with an explicit clock (tests).
    /// Without `store.encryption_keys`, the default key ([`keys::resolve`]).
    pub async fn build_with(config: Config, clock: SharedClock) -> Result<Self, BuildError> {
        Self::open_and_build(config, clock, keys::resolve).await
    }

    /// Fills in the store key (`resolve`), opens the store, builds on it.
    async fn open_and_build(
        mut config: Config,
        clock: SharedClock,
        resolve: fn(&mut crate::config::StoreConfig) -> Result<(), String>,
    ) -> Result<Self, BuildError> {
        resolve(&mut config.store).map_err(BuildError::Keys)?;
        let store = crate::store::open(&config.store).await?;
        Self::build_with_store(config, clock, store).await
    }

    /// Builds on an already opened store.
    pub async fn build_with_store(
        config: Config,
        clock: SharedClock,
        store: SharedStore,
    ) -> Result<Self, BuildError> {
        let budget = crate::proxy::ConnectionBudget::new(config.server.max_connections);
        Self::build_parts(config, clock, store, budget, None).await
    }

    /// The gateway that replaces `self` on a reload. It works on the same
    /// store, clock and upstream connection budget (`server.max_connections`
    /// takes a restart), so the old gateway's open connections and WebSocket
    /// tunnels stay counted while they live, and it carries over what this
    /// one learned and counted: the revocation view and its freshness, the
    /// stored users and (same directory) the `[users.ldap]` users, the
    /// password pool, the admin API's wrong-token counts and the per-address
    /// sign-in transaction counts. A reload while the store or the directory
    /// is out of reach then changes nothing for signed-in users.
    pub async fn rebuild(&self, config: Config) -> Result<Self, BuildError> {
        let st = self.state();
        let (clock, store) = (st.clock.clone(), st.store.clone());
        Self::build_parts(config, clock, store, self.proxy.upstream_budget(), Some(self)).await
    }

    async fn build_parts(
        config: Config,
        clock: SharedClock,
        store: SharedStore,
        budget: crate::proxy::ConnectionBudget,
        replaced: Option<&Gateway>,
    ) -> Result<Self, BuildError> {
        crate::metrics::install();
        crate::factors::register_metrics(&config.factors);
        let config = Arc::new(config);
        let old = replaced.map(|g| g.state.as_ref());
        // The directory to read is the same one: its users are carried over.
        let same_directory = old.and_then(|o| o.directory.as_deref()).filter(|d| {
            config
                .users
                .ldap
                .as_ref()
                .is_some_and(|c| d.reads_same_users_as(c))
        });
        let carried_health = same_directory.map(|d| d.carried_health());
        let mut directory = UserDirectory::from_file_users(&config.users.file_users);
        if let Some(o) = old {
            directory.carry_from(&read_users(&o.users), same_directory.is_some());
        }
        let users = Arc::new(std::sync::RwLock::new(directory));
        let revocations = match old {
            Some(o) => o.revocations.clone(),
            None => Arc::new(RevocationView::new(config.session.revocation_check)),
        };
        // A password changed in the users file ends that user's old sessions.
        // Until this has been checked, the view is not refreshed: protected
        // routes fail closed rather than trust a session the change ended.
        let passwords_checked = sync_file_passwords(&store, &users, &revocations, clock.now()).await;
        // On a reload that could not check a password the file changes (or a
        // user it adds back), the view carried over could accept that user's
        // ended sessions: start from an empty one instead (fail closed until
        // the store answers).
        let revocations = match old {
            Some(o)
                if !passwords_checked
                    && file_passwords_changed(&read_users(&o.users), &read_users(&users)) =>
            {
                tracing::warn!(
                    "a users-file password changed, or a user was added, while the store is out of reach: protected routes answer 503 until it answers"
                );
                Arc::new(RevocationView::new(config.session.revocation_check))
            }
            _ => revocations,
        };
        if passwords_checked && let Err(e) = revocations.refresh(&store, clock.now(), Instant::now()).await {
            // Not fatal: protected routes answer 503 until the store answers.
            tracing::error!(error = %e, "initial revocation refresh failed; failing closed until the store answers");
        }
        // Users created through the API: loaded now, then followed by the refresher.
        let user_sync = Arc::new(UserSync::new());
        if let Err(e) = user_sync.refresh(&store, &users).await {
            tracing::error!(error = %e, "loading the stored users failed; they can sign in once the store answers");
        }
        let csrf_key = crate::crypto::KeyRing::derive(&config.session.secrets, "csrf");
        let enforcer = Arc::new(Enforcer {
            policy: Policy::new(config.rules.clone(), config.default_policy)
                .deny_windows_aliases(config.case_insensitive_paths),
            sessions: SessionCodec::new(&config.session),
            revocations: revocations.clone(),
            users: users.clone(),
            clock: clock.clone(),
            prefix: config.portal.prefix.clone(),
            identity: config.identity_headers.clone(),
            trusted_proxies: config.server.trusted_proxies.clone(),
            sign_out: Some(crate::enforce::denied::SignOut {
                csrf_key: csrf_key.clone(),
                session: config.session.clone(),
                brand: Arc::new(crate::pages::Branding::of(&config.portal)),
            }),
        });
        let proxy = Proxy::new(ProxySettings {
            upstreams: config.upstreams.clone(),
            identity: config.identity_headers.clone(),
            gateway_cookies: config.session.gateway_cookie_names(),
            upstream_connections: budget,
            tunnel_idle_timeout: config.server.idle_timeout,
        })
        .map_err(|e| BuildError::Proxy(e.to_string()))?;
        // Unknown logins are counted under a hash keyed by this; replicas
        // share it because they share the session secrets.
        let subject_key = config
            .session
            .secrets
            .first()
            .map(|s| crate::crypto::derive_key(s, "regulation-subject"))
            .unwrap_or_default();
        let sealer = match crate::sealing::Sealer::new(&config.store.encryption_keys) {
            Ok(s) => Some(Arc::new(s)),
            Err(crate::sealing::SealError::NoKeys) => None,
            Err(e) => return Err(BuildError::Keys(e.to_string())),
        };
        // A wrong or missing key is a start-up error. If the store cannot be
        // asked now, start anyway (protected routes fail closed until it
        // answers) and check once it does.
        let mut background = Vec::new();
        use crate::sealing::{KeyCheckError, check_keys, check_keys_when_reachable};
        match check_keys(store.as_ref(), sealer.as_deref()).await {
            Ok(()) => {}
            Err(KeyCheckError::Mismatch(m)) => return Err(BuildError::Keys(m)),
            Err(e @ KeyCheckError::Store(_)) => {
                tracing::warn!(error = %e, "checking store.encryption_keys once the store answers");
                background.push(
                    tokio::spawn(check_keys_when_reachable(store.clone(), sealer.clone())).abort_handle(),
                );
            }
        }
        let directory = crate::users::ldap::build(
            &config,
            &store,
            &revocations,
            &users,
            &mut background,
            carried_health,
        )
        .map_err(BuildError::Directory)?;
        // Nothing below can refuse the reload: a carried view takes the new
        // `revocation_check` only now (a refused reload leaves it alone).
        revocations.set_max_staleness(config.session.revocation_check);
        let mut regulator = Regulator::new(store.clone(), config.regulation.clone(), clock.clone())
            .with_subject_key(subject_key);
        if let Some(o) = old {
            regulator = regulator.carrying_counts_of(&o.regulator);
        }
        let state = Arc::new(AppState {
            handles: Handles {
                regulator,
                config: config.clone(),
                clock: clock.clone(),
                store: store.clone(),
                sealer,
                revocations: revocations.clone(),
                users: users.clone(),
            },
            passwords: old.map_or_else(PasswordPool::for_this_machine, |o| o.passwords.clone()),
            enforcer,
            csrf_key,
            directory,
        });
        // Audit events into the (shared) store, kept for `audit.retention`.
        // Kept apart from `background`: a retired gateway's writer stores
        // what it was given before it ends (see `retire`).
        let audit = crate::audit::start(store.clone(), config.audit.retention);
        // Revocations pushed by PostgreSQL (see `store::notify`): a revoked
        // session id is applied at once; a wake-up (also sent for an epoch
        // change) makes the refresher read the log now.
        let wake = Arc::new(tokio::sync::Notify::new());
        if let Some(handle) = spawn_listener(&config, &store, &revocations, &wake) {
            background.push(handle);
        }
        background.push(spawn_refresher(
            store,
            revocations,
            (users, user_sync, passwords_checked),
            (clock, wake),
            config.session.revocation_check,
        ));
        Ok(Self {
            state,
            proxy,
            admin_throttle: replaced.map_or_else(Arc::default, |g| g.admin_throttle.clone()),
            background: Arc::new(background),
            audit: Arc::new(std::sync::Mutex::new(Some(audit))),
        })
    }

    /// Lets this gateway's audit writer store the events it was given, up to
    /// `within`, before the process exits (see [`crate::audit::Writer::finish`]).
    pub async fn finish_audit(&self, within: std::time::Duration) {
        if let Some(writer) = self.take_audit() {
            writer.finish(within).await;
        }
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The enforcement layer, to put in front of any service.
    pub fn mfa_layer(&self) -> MfaLayer {
        MfaLayer::new(self.state.enforcer.clone())
    }

    /// The portal router (pages and JSON APIs), to nest at the portal prefix.
    pub fn portal_router(&self) -> axum::Router {
        crate::portal::router(self.state.clone(), crate::console::routes())
    }

    /// The admin listener's router.
    pub fn admin_router(&self) -> axum::Router {
        crate::admin::router(self.state.clone(), self.admin_throttle.clone())
    }

    /// The main listener's service.
    pub fn main_service(&self) -> MainService {
        MainService::new(
            self.state.clone(),
            self.proxy.clone(),
            self.mfa_layer(),
            self.portal_router(),
        )
    }

    /// Stops background tasks, the audit writer with them (see
    /// [`Gateway::finish_audit`] to let it store its queue first).
    pub fn stop(&self) {
        for h in self.background.iter() {
            h.abort();
        }
        if let Some(writer) = self.take_audit() {
            writer.abort();
        }
    }

    /// Stops background tasks and retires the policy's decision counters:
    /// a reload replaced this gateway. Its audit writer first stores the
    /// events it was given (on its own, up to 5 s), as a reload loses none.
    pub fn retire(&self) {
        if let Some(writer) = self.take_audit() {
            tokio::spawn(writer.finish(std::time::Duration::from_secs(5)));
        }
        self.stop();
        self.state.enforcer.policy.retire_counters();
    }

    fn take_audit(&self) -> Option<crate::audit::Writer> {
        self.audit.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

fn read_users(users: &SharedUsers) -> std::sync::RwLockReadGuard<'_, UserDirectory> {
    users.read().unwrap_or_else(|p| p.into_inner())
}

/// True when a users-file user of `new` has another password hash in `old`,
/// or was not in it: a user removed by an earlier reload and back now may
/// have sessions from before, which the store must end or confirm.
fn file_passwords_changed(old: &UserDirectory, new: &UserDirectory) -> bool {
    new.file_users()
        .iter()
        .any(|u| old.get(&u.id).is_none_or(|o| o.password_hash != u.password_hash))
}

/// Checks the users file's password hashes against the stored fingerprints
/// ([`crate::session::file_passwords`]); false (logged) if the store could
/// not be asked. A reload of the users file calls this again.
pub async fn sync_file_passwords(
    store: &SharedStore,
    users: &SharedUsers,
    view: &RevocationView,
    now: crate::clock::UnixTime,
) -> bool {
    let file_users = users.read().unwrap_or_else(|p| p.into_inner()).file_users();
    match crate::session::file_passwords::sync(store, &file_users, view, now).await {
        Ok(0) => true,
        Ok(n) => {
            tracing::info!(
                users = n,
                "passwords changed in the users file; those users' sessions ended"
            );
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "checking the users file's passwords against the store failed; failing closed until it answers");
            false
        }
    }
}

/// With a PostgreSQL store, listens on `store.listen_url` (else `store.url`)
/// for revocations written by any replica.
fn spawn_listener(
    config: &Config,
    store: &SharedStore,
    view: &Arc<RevocationView>,
    wake: &Arc<tokio::sync::Notify>,
) -> Option<tokio::task::AbortHandle> {
    use crate::store::notify::{self, Notice};
    let crate::config::StoreKind::Postgres { url, listen_url } = &config.store.kind else {
        return None;
    };
    if store.kind() != "postgres" {
        return None;
    }
    let url = listen_url.as_ref().unwrap_or(url).expose_str()?;
    let sink: notify::Sink = {
        let (view, wake) = (view.clone(), wake.clone());
        Arc::new(move |notice| match notice {
            Notice::Revoked(RevocationEvent::Session { sid, expires_at }) => {
                view.note_revoked(&sid, expires_at)
            }
            Notice::Revoked(RevocationEvent::Epoch { user_id, epoch }) => view.note_epoch(&user_id, epoch),
            Notice::Wake => wake.notify_one(),
        })
    };
    // Checked this often while quiet, so a dead connection is noticed soon.
    let heartbeat = config
        .session
        .revocation_check
        .clamp(Duration::from_secs(1), Duration::from_secs(10));
    match notify::spawn(url, heartbeat, sink) {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::error!(error = %e, "revocation notifications disabled; polling only");
            None
        }
    }
}

fn spawn_refresher(
    store: SharedStore,
    view: Arc<RevocationView>,
    (users, user_sync, passwords_checked): (SharedUsers, Arc<UserSync>, bool),
    (clock, wake): (SharedClock, Arc<tokio::sync::Notify>),
    check: Duration,
) -> tokio::task::AbortHandle {
    let period = (check / 2).max(Duration::from_millis(50));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_purge = Instant::now();
        let mut failing = false;
        let mut passwords_checked = passwords_checked;
        loop {
            // The poll, or earlier when a notification asks for it.
            tokio::select! {
                _ = tick.tick() => {}
                () = wake.notified() => {}
            }
            if !passwords_checked {
                let file_users = users.read().unwrap_or_else(|p| p.into_inner()).file_users();
                match crate::session::file_passwords::sync(&store, &file_users, &view, clock.now()).await {
                    Ok(n) => {
                        passwords_checked = true;
                        tracing::info!(
                            users_with_new_passwords = n,
                            "users file passwords checked against the store"
                        );
                    }
                    // The view goes stale: fail closed until this succeeds
                    // (logged once at start-up, by `sync_file_passwords`).
                    Err(_) => continue,
                }
            }
            let started = Instant::now();
            let refreshed = view.refresh(&store, clock.now(), Instant::now()).await;
            metrics::histogram!("portcullis_store_duration_seconds", "op" => "revocation_refresh")
                .record(started.elapsed().as_secs_f64());
            match refreshed {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("store reachable again; revocation view refreshed");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(error = %e, "revocation refresh failed");
                }
                Err(_) => {}
            }
            // Stored users at the same cadence, so a user created, changed or
            // deleted on another replica is seen here within `revocation_check`.
            if !failing && let Err(e) = user_sync.refresh(&store, &users).await {
                tracing::warn!(error = %e, "refreshing stored users failed");
            }
            if last_purge.elapsed() > Duration::from_secs(60) {
                last_purge = Instant::now();
                if let Err(e) = store.purge_expired(clock.now()).await {
                    tracing::warn!(error = %e, "purging expired store rows failed");
                }
            }
        }
    })
    .abort_handle()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
default_policy = "one_factor"
[server]
max_connections = 7
[[upstreams]]
name = "app"
url = "http://127.0.0.1:9"
[session]
secrets = ["0123456789abcdef0123456789abcdef"]
[store]
kind = "memory"
encryption_keys = []
[factors.totp]
enabled = false
[factors.recovery_codes]
enabled = false
"#;

    /// A reload keeps what the process learned and counted: the revocation
    /// view (what was revoked, and that it is fresh), the per-address
    /// sign-in transaction counts and the admin API's wrong-token counts. A
    /// changed `revocation_check` applies to the view carried over.
    #[tokio::test]
    async fn a_reload_carries_the_revocation_view_and_the_counts() {
        let config = |check: &str| {
            let text = format!("{CONFIG}[regulation]\nmax_transactions_per_ip_per_minute = 2\n").replace(
                "[session]\n",
                &format!("[session]\nrevocation_check = \"{check}\"\n"),
            );
            crate::config::load_str(&text, &|_| None).expect("config").config
        };
        let old = Gateway::build(config("30s")).await.expect("gateway");
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..2 {
            assert!(old.state.regulator.transaction_admitted(ip).is_ok());
        }
        assert!(old.state.revocations.is_fresh(Instant::now()));
        let reloaded = old.rebuild(config("30s")).await.expect("rebuilt");
        assert!(Arc::ptr_eq(&reloaded.state.revocations, &old.state.revocations));
        assert!(
            reloaded.state.revocations.is_fresh(Instant::now()),
            "fresh at once"
        );
        assert!(
            reloaded.state.regulator.transaction_admitted(ip).is_err(),
            "the third transaction of the minute, after a reload"
        );
        assert!(Arc::ptr_eq(&reloaded.admin_throttle, &old.admin_throttle));
        // A new revocation_check applies to the carried view.
        let shorter = reloaded.rebuild(config("10ms")).await.expect("rebuilt");
        shorter.stop();
        reloaded.stop();
        old.stop();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!shorter.state.revocations.is_fresh(Instant::now()));
    }

    /// The old gateway's upstream connections and WebSocket tunnels live on
    /// after a reload: the new gateway counts against the same budget, or the
    /// process could hold `max_connections` more sockets after each reload.
    #[tokio::test]
    async fn a_reload_keeps_the_upstream_connection_budget() {
        let config = || crate::config::load_str(CONFIG, &|_| None).expect("config").config;
        let old = Gateway::build(config()).await.expect("gateway");
        let reloaded = old.rebuild(config()).await.expect("rebuilt");
        assert!(
            reloaded
                .proxy
                .upstream_budget()
                .same_as(&old.proxy.upstream_budget())
        );
        let another = Gateway::build(config()).await.expect("gateway");
        assert!(!Arc::ptr_eq(&another.state.revocations, &old.state.revocations));
        assert!(
            !another
                .proxy
                .upstream_budget()
                .same_as(&old.proxy.upstream_budget())
        );
    }
}
