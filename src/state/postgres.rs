//! The shared state store: PostgreSQL, for several replicas.

use crate::settings::Secret;

use super::StateError;

#[derive(Debug)]
pub struct PostgresStore;

impl PostgresStore {
    pub async fn open(_url: &Secret) -> Result<super::sqlite::SqliteStore, StateError> {
        Err(StateError::Unavailable(
            "PostgreSQL support is being built".into(),
        ))
    }
}
