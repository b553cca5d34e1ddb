//! The shared handles every face of the gateway (the portal, the admin API,
//! the main service) works with: configuration, clock, store, the session
//! enforcer, password hashing, regulation and the keys derived at start-up.
//! Built once by [`crate::gateway::Gateway`]; lower layers (factors, the
//! APIs) take it, or the narrower handles in it, without knowing the gateway.

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::enforce::Enforcer;
use crate::passwords::PasswordPool;
use crate::regulation::Regulator;
use crate::secret::Secret;
use crate::store::SharedStore;

/// Everything a request handler may need, shared.
#[derive(Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub clock: SharedClock,
    pub store: SharedStore,
    pub enforcer: Arc<Enforcer>,
    pub passwords: PasswordPool,
    pub regulator: Regulator,
    /// Key for CSRF tokens (derived from the first session secret).
    pub csrf_key: Secret,
    /// Seals factor secrets at rest; `None` without `store.encryption_keys`
    /// (enrolling a factor then fails with a clear error).
    pub sealer: Option<Arc<crate::sealing::Sealer>>,
}
