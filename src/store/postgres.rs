//! (being written) PostgreSQL store.
use super::{StoreError, StoreResult};
/// PostgreSQL store.
#[derive(Debug)]
pub struct PostgresStore;
impl PostgresStore {
    /// Connects and migrates.
    pub async fn connect(url: &str) -> StoreResult<super::memory::MemoryStore> {
        let _ = url;
        Err(StoreError::Unavailable("not yet".into()))
    }
}
