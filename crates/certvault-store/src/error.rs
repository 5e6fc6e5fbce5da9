//! Store errors.

/// Why a write was refused because of the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conflict {
    /// The name belongs to a soft-deleted certificate.
    Deleted,
    /// A certificate operation is in progress.
    OperationInProgress,
    /// The name exists (restore, vault create).
    Exists,
    /// The object is not in the state the write expects (e.g. not pending).
    State,
    /// A renewal's certificate changed since the renewal read it (another renewal, on this
    /// or another replica, added a version or started an operation first): nothing written.
    Superseded,
}

/// A storage error. Messages never contain stored secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(String),
    /// The write conflicts with the stored state.
    #[error("conflict: {0:?}")]
    Conflict(Conflict),
    /// The object to change does not exist.
    #[error("not found")]
    NotFound,
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The store is shut down.
    #[error("the store is closed")]
    Closed,
    /// The data directory or database file could not be opened.
    #[error("cannot open the database: {0}")]
    Open(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e.to_string())
    }
}
