//! Directory users: OpenLDAP or Active Directory as the first factor
//! (`[users.ldap]`, SPEC section 12).
//!
//! How it works:
//! - **Sign-in** searches the user with the service account (`bind_dn`),
//!   then checks the password by binding as the user's DN on a connection of
//!   its own; a password hash is never read. An empty password is refused
//!   before any bind (an empty simple bind is an anonymous success on many
//!   servers). An unknown or disabled user gets a bind as a DN that cannot
//!   exist, so every answer costs the directory the same round trips.
//!   Every value put into a filter is escaped ([`escape`]). The whole
//!   directory part of one sign-in is bounded by `timeout`; a directory that
//!   is down, slow or answers garbage gives [`DirError`] (the portal answers
//!   503), never a sign-in and never a fallback to another source.
//! - **Identity**: a directory user's id is derived from the directory's
//!   stable id (`entryUUID`, `objectGUID`), never from the login, so factors,
//!   lockouts and sessions of a deleted account never pass to a new account
//!   with the same name.
//! - **Refresh**: every `refresh_interval` the directory's users (with their
//!   groups and state) are read again into the in-memory [`UserDirectory`]
//!   mirror that sessions are checked against. A user gone from the
//!   directory (or disabled) is removed there and their session epoch moves;
//!   a user removed from a group loses it at once. While no read has
//!   succeeded for longer than `refresh_interval` (plus `timeout`), directory
//!   users' sessions fail closed (503).
//! - **Pool**: at most [`MAX_CONNECTIONS`] connections, reused; one that
//!   was bound as a user is re-bound as the service account before a search.
//!
//! [`UserDirectory`]: super::UserDirectory

pub use crate::ldap_escape as escape;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::User;
use crate::config::ldap::{AD_ACCOUNTDISABLE, DN, Implementation, LdapConfig, USERNAME};
use crate::secret::Secret;

/// Connections open to the directory at most (searches and binds in flight).
pub const MAX_CONNECTIONS: usize = 8;
/// Entries per page when reading every user (Active Directory's default
/// MaxPageSize is 1000).
const PAGE_SIZE: i32 = 500;
/// How soon a failed refresh is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Where a directory user lives there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryRef {
    /// The entry's DN (what the password is checked against).
    pub dn: String,
    /// The stable id's string form (`entryUUID`; `objectGUID` as a GUID).
    pub stable_id: String,
}

/// The id of a directory user: `00u` + 17 characters derived from the
/// directory's stable id (not the login: a recreated account is a new user).
pub fn directory_user_id(stable_id: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let digest = Sha256::digest(format!("portcullis/directory-user/{}", stable_id.to_lowercase()).as_bytes());
    let mut id = String::from("00u");
    id.extend(
        digest
            .iter()
            .take(17)
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])),
    );
    id
}

/// Active Directory's string form of a 16-byte `objectGUID`: the first three
/// fields are little-endian on the wire.
pub fn guid_string(b: &[u8]) -> Option<String> {
    let b: &[u8; 16] = b.try_into().ok()?;
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    ))
}

/// A user entry as read from the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub dn: String,
    pub stable_id: String,
    pub username: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub groups: Vec<String>,
    /// Active Directory: `userAccountControl` has ACCOUNTDISABLE.
    pub disabled: bool,
}

impl DirEntry {
    /// The mirror's view of this entry.
    pub fn to_user(&self) -> (User, DirectoryRef) {
        (
            User {
                id: directory_user_id(&self.stable_id),
                username: self.username.clone(),
                display_name: self.display_name.clone(),
                email: self.email.clone(),
                phone: self.phone.clone(),
                groups: self.groups.clone(),
                password_hash: None,
                from_file: false,
                config_totp: None,
            },
            DirectoryRef {
                dn: self.dn.clone(),
                stable_id: self.stable_id.clone(),
            },
        )
    }
}

/// Why the directory could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirError {
    /// Could not connect, or the connection broke.
    #[error("directory unreachable: {0}")]
    Unreachable(String),
    /// No answer within `timeout`.
    #[error("directory did not answer within {0:?}")]
    Timeout(Duration),
    /// An answer that is not what LDAP promises (or an error result).
    #[error("directory answer refused: {0}")]
    Protocol(String),
}

impl DirError {
    fn kind(&self) -> &'static str {
        match self {
            DirError::Unreachable(_) => "unreachable",
            DirError::Timeout(_) => "timeout",
            DirError::Protocol(_) => "protocol",
        }
    }

    fn from_ldap(e: LdapError, timeout: Duration) -> Self {
        match e {
            LdapError::Timeout { .. } => DirError::Timeout(timeout),
            LdapError::LdapResult { result } => {
                DirError::Protocol(format!("result code {} {}", result.rc, result.text))
            }
            LdapError::Io { .. }
            | LdapError::OpSend { .. }
            | LdapError::ResultRecv { .. }
            | LdapError::IdScrubSend { .. } => DirError::Unreachable(e.to_string()),
            other => DirError::Protocol(other.to_string()),
        }
    }

    /// True when a fresh connection may succeed where a reused one failed.
    fn is_transport(&self) -> bool {
        matches!(self, DirError::Unreachable(_))
    }
}

/// A directory's health handed to the gateway a reload builds.
#[derive(Debug)]
pub struct CarriedHealth(Health);

/// The directory's health, for `/readyz` and the session check.
#[derive(Debug, Default)]
struct Health {
    /// The last full read of the users that succeeded.
    last_refresh: Option<Instant>,
    /// The last operation's failure, cleared by the next success.
    last_error: Option<String>,
}

struct Conn {
    ldap: Ldap,
    driver: tokio::task::AbortHandle,
    /// Bound as the service account (not as a user).
    as_service: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A connection taken from the pool with its permit; dropped (closed) unless
/// given back after a clean operation.
struct Lease {
    conn: Option<Conn>,
    reused: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// A directory: connection pool, searches, binds and health.
pub struct LdapDirectory {
    cfg: LdapConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
    health: Mutex<Health>,
    decoy_dn: String,
}

impl std::fmt::Debug for LdapDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapDirectory")
            .field("url", &self.cfg.url)
            .finish_non_exhaustive()
    }
}

/// The client TLS settings: the `ca` file's certificates, else the webpki roots.
fn tls_config(cfg: &LdapConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if cfg.ca.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        for c in &cfg.ca {
            roots.add(c.clone()).map_err(|e| format!("users.ldap.ca: {e}"))?;
        }
    }
    let tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(tls))
}

impl LdapDirectory {
    /// A directory client for `cfg` (connects lazily).
    pub fn new(cfg: LdapConfig) -> Result<Self, String> {
        let tls = (cfg.is_ldaps() || cfg.start_tls)
            .then(|| tls_config(&cfg))
            .transpose()?;
        let decoy_dn = format!(
            "cn=portcullis-decoy-{},{}",
            hex::encode(crate::crypto::random_bytes(12)),
            cfg.base_dn
        );
        for kind in ["unreachable", "timeout", "protocol"] {
            metrics::counter!("portcullis_directory_errors_total", "kind" => kind).absolute(0);
        }
        Ok(Self {
            cfg,
            tls,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            health: Mutex::new(Health::default()),
            decoy_dn,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LdapConfig {
        &self.cfg
    }

    /// `Err(reason)` while the last directory operation failed.
    pub fn ready(&self) -> Result<(), String> {
        match &self.health.lock().unwrap_or_else(|p| p.into_inner()).last_error {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        }
    }

    /// True when `cfg` reads the same users as this directory's config (the
    /// same server, account, base, filters and attributes): a reload then
    /// carries the users already read ([`crate::users::UserDirectory::carry_from`]).
    /// The TLS settings (`start_tls`, `ca`) do not change which users are
    /// read, and the next read uses the new ones.
    pub fn reads_same_users_as(&self, cfg: &LdapConfig) -> bool {
        let a = &self.cfg;
        (
            &a.url,
            &a.bind_dn,
            &a.base_dn,
            a.implementation,
            &a.user_filter,
            &a.group_filter,
            &a.attributes,
        ) == (
            &cfg.url,
            &cfg.bind_dn,
            &cfg.base_dn,
            cfg.implementation,
            &cfg.user_filter,
            &cfg.group_filter,
            &cfg.attributes,
        )
    }

    /// What a reload carries of this directory's health; taken before its
    /// users are carried, so they are never older than it says.
    pub fn carried_health(&self) -> CarriedHealth {
        let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        CarriedHealth(Health {
            last_refresh: h.last_refresh,
            last_error: h.last_error.clone(),
        })
    }

    /// True while the mirror is older than `refresh_interval` (+ `timeout`)
    /// allows, so directory users' sessions must fail closed. `started` is
    /// when the refresher began (a gateway that never read the directory
    /// gets one interval to do so).
    pub fn stale(&self, started: Instant, now: Instant) -> bool {
        let last = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_refresh
            .unwrap_or(started);
        now.saturating_duration_since(last) > self.cfg.refresh_interval + self.cfg.timeout
    }

    fn note(&self, result: Result<(), &DirError>) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                if h.last_error.take().is_some() {
                    tracing::info!(url = %self.cfg.url, "directory reachable again");
                }
            }
            Err(e) => {
                metrics::counter!("portcullis_directory_errors_total", "kind" => e.kind()).increment(1);
                if h.last_error.is_none() {
                    tracing::error!(url = %self.cfg.url, error = %e, "directory operation failed");
                } else {
                    tracing::warn!(url = %self.cfg.url, error = %e, "directory operation failed");
                }
                h.last_error = Some(e.to_string());
            }
        }
    }

    fn record(op: &'static str, started: Instant) {
        metrics::histogram!("portcullis_directory_duration_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
    }

    async fn connect(&self) -> Result<Conn, DirError> {
        let started = Instant::now();
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.cfg.timeout)
            .set_starttls(self.cfg.start_tls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.cfg.url)
            .await
            .map_err(|e| match e {
                LdapError::Timeout { .. } => DirError::Timeout(self.cfg.timeout),
                e => DirError::Unreachable(e.to_string()),
            })?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "directory connection closed");
            }
        })
        .abort_handle();
        Self::record("connect", started);
        Ok(Conn {
            ldap,
            driver,
            as_service: false,
        })
    }

    async fn lease(&self) -> Result<Lease, DirError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DirError::Unreachable("pool closed".into()))?;
        loop {
            let popped = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match popped {
                Some(mut c) => {
                    if c.ldap.is_closed() {
                        continue;
                    }
                    return Ok(Lease {
                        conn: Some(c),
                        reused: true,
                        _permit: permit,
                    });
                }
                None => {
                    return Ok(Lease {
                        conn: Some(self.connect().await?),
                        reused: false,
                        _permit: permit,
                    });
                }
            }
        }
    }

    fn give_back(&self, mut lease: Lease) {
        if let Some(c) = lease.conn.take() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_CONNECTIONS {
                idle.push(c);
            }
        }
    }

    /// Drops every idle connection (after a transport failure: the others
    /// are likely dead too).
    fn drain(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    async fn bind_service(&self, conn: &mut Conn) -> Result<(), DirError> {
        if conn.as_service {
            return Ok(());
        }
        let started = Instant::now();
        let pw = self.cfg.bind_password.expose_str().unwrap_or_default();
        let res = conn
            .ldap
            .with_timeout(self.cfg.timeout)
            .simple_bind(&self.cfg.bind_dn, pw)
            .await
            .map_err(|e| DirError::from_ldap(e, self.cfg.timeout))?;
        Self::record("bind", started);
        if res.rc != 0 {
            return Err(DirError::Protocol(format!(
                "the service account's bind failed: result code {} {}",
                res.rc, res.text
            )));
        }
        conn.as_service = true;
        Ok(())
    }

    async fn search(
        &self,
        ldap: &mut Ldap,
        filter: &str,
        attrs: &[&str],
        limit: i32,
    ) -> Result<Vec<SearchEntry>, DirError> {
        let started = Instant::now();
        let res = ldap
            .with_timeout(self.cfg.timeout)
            .with_search_options(ldap3::SearchOptions::new().sizelimit(limit))
            .search(&self.cfg.base_dn, Scope::Subtree, filter, attrs.to_vec())
            .await
            .map_err(|e| DirError::from_ldap(e, self.cfg.timeout))?;
        Self::record("search", started);
        // 4: sizeLimitExceeded (more than `limit` matched): the caller sees
        // `limit` entries and decides.
        if res.1.rc != 0 && res.1.rc != 4 {
            return Err(DirError::Protocol(format!(
                "search failed: result code {} {}",
                res.1.rc, res.1.text
            )));
        }
        res.0.into_iter().map(construct).collect()
    }

    /// Attributes read from user entries.
    fn user_attrs(&self) -> Vec<&str> {
        let a = &self.cfg.attributes;
        let mut v = vec![
            a.id.as_str(),
            a.username.as_str(),
            a.display_name.as_str(),
            a.email.as_str(),
            a.phone.as_str(),
        ];
        if self.cfg.group_filter.is_none() {
            v.push(a.member_of.as_str());
        }
        if self.cfg.implementation == Implementation::ActiveDirectory {
            v.push("userAccountControl");
        }
        v
    }

    /// Reads an entry into a [`DirEntry`] (its groups still empty);
    /// `None` (logged) for one without a stable id or login.
    fn entry(&self, e: &SearchEntry) -> Option<DirEntry> {
        let a = &self.cfg.attributes;
        let stable_id = match stable_id(e, &a.id) {
            Some(id) => id,
            None => {
                tracing::warn!(dn = %e.dn, attribute = %a.id, "directory entry without a stable id; ignored");
                return None;
            }
        };
        let Some(username) = text(e, &a.username) else {
            tracing::warn!(dn = %e.dn, attribute = %a.username, "directory entry without a login; ignored");
            return None;
        };
        let disabled = self.cfg.implementation == Implementation::ActiveDirectory
            && text(e, "userAccountControl")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|uac| uac & AD_ACCOUNTDISABLE != 0);
        let groups = if self.cfg.group_filter.is_none() {
            values(e, &a.member_of)
                .iter()
                .filter_map(|dn| escape::first_rdn_value(dn, &a.group_name))
                .collect()
        } else {
            Vec::new()
        };
        Some(DirEntry {
            dn: e.dn.clone(),
            stable_id,
            username,
            display_name: text(e, &a.display_name),
            email: text(e, &a.email),
            phone: text(e, &a.phone),
            groups,
            disabled,
        })
    }

    async fn groups(&self, ldap: &mut Ldap, entry: &mut DirEntry) -> Result<(), DirError> {
        if let Some(template) = &self.cfg.group_filter {
            let filter = escape::fill(template, &[(DN, &entry.dn), (USERNAME, &entry.username)]);
            let name = self.cfg.attributes.group_name.as_str();
            let found = self.search(ldap, &filter, &[name], 0).await?;
            entry.groups = found
                .iter()
                .filter_map(|g| text(g, name).or_else(|| escape::first_rdn_value(&g.dn, name)))
                .collect();
        }
        entry.groups.sort();
        entry.groups.dedup();
        Ok(())
    }

    async fn find_on(&self, conn: &mut Conn, login: &str) -> Result<Option<DirEntry>, DirError> {
        self.bind_service(conn).await?;
        let filter = escape::fill(&self.cfg.user_filter, &[(USERNAME, login)]);
        let found = self
            .search(&mut conn.ldap, &filter, &self.user_attrs(), 2)
            .await?;
        if found.len() > 1 {
            tracing::warn!(
                filter = %filter,
                "users.ldap.user_filter matched more than one entry for a login; refusing it"
            );
            return Ok(None);
        }
        let Some(mut entry) = found.first().and_then(|e| self.entry(e)) else {
            return Ok(None);
        };
        // The filter matched the login; the entry's own spelling is the name.
        self.groups(&mut conn.ldap, &mut entry).await?;
        Ok(Some(entry))
    }

    /// Finds the user `login` with the service account (groups included).
    pub async fn find(&self, login: &str) -> Result<Option<DirEntry>, DirError> {
        let result = self.with_deadline(self.find_inner(login)).await;
        self.note(result.as_ref().map(|_| ()));
        result
    }

    async fn find_inner(&self, login: &str) -> Result<Option<DirEntry>, DirError> {
        for attempt in 0..2 {
            let mut lease = self.lease().await?;
            let reused = lease.reused;
            let Some(conn) = lease.conn.as_mut() else { continue };
            match self.find_on(conn, login).await {
                Ok(v) => {
                    self.give_back(lease);
                    return Ok(v);
                }
                Err(e) if reused && attempt == 0 && e.is_transport() => self.drain(),
                Err(e) => return Err(e),
            }
        }
        Err(DirError::Unreachable("no connection".into()))
    }

    /// Checks `password` by binding as `dn`; with `dn = None` (unknown or
    /// disabled user) binds as a DN that cannot exist, so the work and the
    /// answer are the same. An empty password is refused without a bind.
    pub async fn check_password(&self, dn: Option<&str>, password: &Secret) -> Result<bool, DirError> {
        if password.is_empty() {
            return Ok(false);
        }
        let Some(pw) = password.expose_str() else {
            return Ok(false);
        };
        let result = self.with_deadline(self.bind_inner(dn, pw)).await;
        self.note(result.as_ref().map(|_| ()));
        result
    }

    async fn bind_inner(&self, dn: Option<&str>, pw: &str) -> Result<bool, DirError> {
        let known = dn.is_some();
        let dn = dn.unwrap_or(&self.decoy_dn);
        for attempt in 0..2 {
            let mut lease = self.lease().await?;
            let reused = lease.reused;
            let Some(conn) = lease.conn.as_mut() else { continue };
            let started = Instant::now();
            let res = conn.ldap.with_timeout(self.cfg.timeout).simple_bind(dn, pw).await;
            Self::record("bind", started);
            match res {
                Ok(r) => {
                    conn.as_service = false;
                    match r.rc {
                        0 => {
                            self.give_back(lease);
                            return Ok(known);
                        }
                        // invalidCredentials, insufficientAccessRights,
                        // unwillingToPerform (a locked or expired account)
                        49 | 50 | 53 => {
                            self.give_back(lease);
                            return Ok(false);
                        }
                        rc => {
                            return Err(DirError::Protocol(format!("bind: result code {rc} {}", r.text)));
                        }
                    }
                }
                Err(e) => {
                    let e = DirError::from_ldap(e, self.cfg.timeout);
                    if reused && attempt == 0 && e.is_transport() {
                        self.drain();
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(DirError::Unreachable("no connection".into()))
    }

    /// Reads every user the user filter admits (paged), with their groups;
    /// disabled accounts are left out.
    pub async fn list(&self) -> Result<Vec<DirEntry>, DirError> {
        let started = Instant::now();
        let result = self.list_inner().await;
        Self::record("refresh", started);
        self.note(result.as_ref().map(|_| ()));
        result
    }

    async fn list_inner(&self) -> Result<Vec<DirEntry>, DirError> {
        let mut lease = self.with_deadline(self.lease()).await?;
        if lease.reused {
            // A refresh is rare: a fresh connection is cheap and certain.
            lease.conn = None;
            lease.conn = Some(self.with_deadline(self.connect()).await?);
        }
        let Some(conn) = lease.conn.as_mut() else {
            return Err(DirError::Unreachable("no connection".into()));
        };
        self.with_deadline(self.bind_service(conn)).await?;
        let filter = self.cfg.user_filter.replace(USERNAME, "*");
        let attrs: Vec<String> = self.user_attrs().into_iter().map(str::to_owned).collect();
        let adapters: Vec<Box<dyn Adapter<'_, String, Vec<String>>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(PAGE_SIZE)),
        ];
        let timeout = self.cfg.timeout;
        let mut raw = Vec::new();
        {
            let mut stream = conn
                .ldap
                .with_timeout(timeout)
                .streaming_search_with(adapters, &self.cfg.base_dn, Scope::Subtree, &filter, attrs)
                .await
                .map_err(|e| DirError::from_ldap(e, timeout))?;
            loop {
                let next = tokio::time::timeout(timeout, stream.next())
                    .await
                    .map_err(|_| DirError::Timeout(timeout))?
                    .map_err(|e| DirError::from_ldap(e, timeout))?;
                match next {
                    Some(e) => raw.push(construct(e)?),
                    None => break,
                }
            }
            let done = tokio::time::timeout(timeout, stream.finish())
                .await
                .map_err(|_| DirError::Timeout(timeout))?;
            if done.rc != 0 {
                return Err(DirError::Protocol(format!(
                    "listing users: result code {} {}",
                    done.rc, done.text
                )));
            }
        }
        let mut out = Vec::with_capacity(raw.len());
        for e in &raw {
            let Some(mut entry) = self.entry(e) else { continue };
            if entry.disabled {
                continue;
            }
            self.groups(&mut conn.ldap, &mut entry).await?;
            out.push(entry);
        }
        self.give_back(lease);
        Ok(out)
    }

    async fn with_deadline<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, DirError>>,
    ) -> Result<T, DirError> {
        match tokio::time::timeout(self.cfg.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(DirError::Timeout(self.cfg.timeout)),
        }
    }

    /// One refresh: reads every user into `users`; the ids of users gone
    /// (deleted, disabled, out of the filter) are returned so their sessions
    /// can be ended.
    pub async fn refresh(&self, users: &super::SharedUsers) -> Result<Vec<String>, DirError> {
        let entries = self.list().await?;
        let mirror: Vec<(User, DirectoryRef)> = entries.iter().map(DirEntry::to_user).collect();
        let count = mirror.len();
        let (gone, shadowed) = {
            let mut u = users.write().unwrap_or_else(|p| p.into_inner());
            u.set_directory_pending(false);
            u.replace_directory_users(mirror)
        };
        for login in &shadowed {
            tracing::warn!(
                user = %login,
                "a directory user's login is also a users-file or API user; that one wins (source order: file, API, directory)"
            );
        }
        {
            let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
            h.last_refresh = Some(Instant::now());
        }
        tracing::debug!(users = count, gone = gone.len(), "directory users refreshed");
        Ok(gone)
    }
}

/// `SearchEntry::construct` panics on a malformed entry; a directory that
/// answers garbage must cost a 503, not a panic.
fn construct(e: ldap3::ResultEntry) -> Result<SearchEntry, DirError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| SearchEntry::construct(e)))
        .map_err(|_| DirError::Protocol("malformed search entry".into()))
}

fn values(e: &SearchEntry, name: &str) -> Vec<String> {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn text(e: &SearchEntry, name: &str) -> Option<String> {
    values(e, name)
        .into_iter()
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
}

/// The stable id's string form: `objectGUID` (16 bytes) as a GUID, other
/// binary values as hex, text as given (lower-cased UUIDs compare equal).
fn stable_id(e: &SearchEntry, name: &str) -> Option<String> {
    let guid = name.eq_ignore_ascii_case("objectGUID");
    if let Some((_, v)) = e.bin_attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
        let b = v.first()?;
        return if guid {
            guid_string(b)
        } else {
            Some(hex::encode(b))
        };
    }
    let v = values(e, name).into_iter().next()?;
    if guid && v.len() == 16 {
        return guid_string(v.as_bytes());
    }
    let v = v.trim().to_lowercase();
    (!v.is_empty()).then_some(v)
}

/// Builds the directory of `[users.ldap]` (if any) and starts its
/// refresher (its handle goes to `background`).
pub fn build(
    config: &crate::config::Config,
    store: &crate::store::SharedStore,
    view: &Arc<crate::session::revocation::RevocationView>,
    users: &super::SharedUsers,
    background: &mut Vec<tokio::task::AbortHandle>,
    carried: Option<CarriedHealth>,
) -> Result<Option<Arc<LdapDirectory>>, String> {
    let Some(cfg) = &config.users.ldap else {
        return Ok(None);
    };
    let dir = Arc::new(LdapDirectory::new(cfg.clone())?);
    match carried {
        // A reload of the same directory: its users were carried over
        // (`users` holds them), and so is how fresh they are.
        Some(CarriedHealth(health)) => {
            *dir.health.lock().unwrap_or_else(|p| p.into_inner()) = health;
        }
        None => users
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set_directory_pending(true),
    }
    background.push(spawn_refresher(
        dir.clone(),
        users.clone(),
        store.clone(),
        view.clone(),
    ));
    Ok(Some(dir))
}

/// Keeps the mirror fresh: a full read every `refresh_interval` (sooner
/// after a failure), ending the sessions of users who are gone, and marking
/// directory sessions as failing closed while the mirror is too old.
pub fn spawn_refresher(
    dir: Arc<LdapDirectory>,
    users: super::SharedUsers,
    store: crate::store::SharedStore,
    view: Arc<crate::session::revocation::RevocationView>,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next {
                match dir.refresh(&users).await {
                    Ok(gone) => {
                        next = Instant::now() + dir.cfg.refresh_interval;
                        for id in gone {
                            tracing::info!(user_id = %id, "directory user gone or disabled; sessions ended");
                            match store.bump_epoch(&id).await {
                                Ok(epoch) => view.note_epoch(&id, epoch),
                                Err(e) => tracing::warn!(error = %e, user_id = %id, "could not end a gone directory user's sessions in the store"),
                            }
                        }
                    }
                    Err(_) => next = Instant::now() + RETRY_AFTER.min(dir.cfg.refresh_interval),
                }
            }
            let stale = dir.stale(started, Instant::now());
            {
                let mut u = users.write().unwrap_or_else(|p| p.into_inner());
                if u.directory_stale() != stale {
                    if stale {
                        tracing::error!("directory not read for longer than users.ldap.refresh_interval: directory users' sessions fail closed (503)");
                    }
                    u.set_directory_stale(stale);
                }
            }
            tokio::time::sleep(Duration::from_millis(250).min(dir.cfg.refresh_interval)).await;
        }
    })
    .abort_handle()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_ids_follow_the_stable_id_not_the_login() {
        let a = directory_user_id("0b4e5d6c-1111-2222-3333-444455556666");
        assert_eq!(a, directory_user_id("0B4E5D6C-1111-2222-3333-444455556666"));
        assert_ne!(a, directory_user_id("0b4e5d6c-1111-2222-3333-444455556667"));
        assert_ne!(
            a,
            super::super::file_user_id("0b4e5d6c-1111-2222-3333-444455556666")
        );
        assert!(a.starts_with("00u") && a.len() == 20);
    }

    #[test]
    fn object_guid_string_form() {
        let b = [
            0x67, 0x45, 0x23, 0x01, 0xab, 0x89, 0xef, 0xcd, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
        ];
        assert_eq!(guid_string(&b).unwrap(), "01234567-89ab-cdef-0123-456789abcdef");
        assert!(guid_string(&b[..15]).is_none());
    }
}
