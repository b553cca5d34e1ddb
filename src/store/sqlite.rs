//! (being written) SQLite store.
use super::{StoreError, StoreResult};
/// SQLite store.
#[derive(Debug)]
pub struct SqliteStore;
impl SqliteStore {
    /// Opens (creating and migrating) the database file.
    pub async fn open(path: &std::path::Path) -> StoreResult<super::memory::MemoryStore> {
        Err(StoreError::Unavailable(format!("{}", path.display())))
    }
}
