//! The shared handles every face of the gateway (the portal, the admin API,
//! the main service) works with. Built once by [`crate::gateway::Gateway`].
//!
//! [`Handles`] is the narrow part the domain below the faces needs (the
//! factors and the Factors API): configuration, clock, store, regulation,
//! the sealer, the revocation view and the user directory. [`AppState`]
//! adds what only the faces use (the session enforcer, password hashing,
//! the CSRF key) and derefs to its handles, so a face passes `&state`
//! wherever handles are asked for.

use std::ops::Deref;
use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::enforce::Enforcer;
use crate::passwords::PasswordPool;
use crate::regulation::Regulator;
use crate::sealing::Sealer;
use crate::session::revocation::RevocationView;
use crate::store::SharedStore;
use crate::users::SharedUsers;

/// What factors and the Factors API work with.
#[derive(Debug)]
pub struct Handles {
    pub config: Arc<Config>,
    pub clock: SharedClock,
    pub store: SharedStore,
    pub regulator: Regulator,
    /// Seals factor secrets at rest; `None` without `store.encryption_keys`
    /// (enrolling a factor then fails with a clear error).
    pub sealer: Option<Arc<Sealer>>,
    /// The revocation view the enforcer reads: a factor reset moves the
    /// user's session epoch here at once.
    pub revocations: Arc<RevocationView>,
    /// The user directory (users file and stored users) the enforcer reads.
    pub users: SharedUsers,
}

/// Everything a request handler may need, shared.
#[derive(Debug)]
pub struct AppState {
    pub handles: Handles,
    pub enforcer: Arc<Enforcer>,
    pub passwords: PasswordPool,
    /// Keys for CSRF tokens (one per session secret; the first issues).
    pub csrf_key: crate::crypto::KeyRing,
    /// `[users.ldap]`: the directory users sign in against, if configured.
    pub directory: Option<Arc<crate::users::ldap::LdapDirectory>>,
}

impl Handles {
    /// Is this session still good by what the store says now, not only by
    /// this replica's view (which may be up to `session.revocation_check`
    /// behind another replica's sign-out or an administrator's reset)? Asked
    /// before a session adds or removes a factor; the answer also brings the
    /// view up to date for every later request. A view not fresh enough to
    /// trust is an error (the store is away), not an ended session.
    pub async fn still_current(
        &self,
        claims: &crate::session::SessionClaims,
    ) -> Result<bool, crate::store::StoreError> {
        use crate::session::SessionReject;
        self.revocations.catch_up(&self.store, self.clock.now()).await?;
        match self.revocations.check(claims, std::time::Instant::now()) {
            Ok(()) => Ok(true),
            Err(SessionReject::Unavailable) => Err(crate::store::StoreError::Unavailable(
                "the revocation view is not fresh".into(),
            )),
            Err(_) => Ok(false),
        }
    }
}

impl Deref for AppState {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.handles
    }
}
