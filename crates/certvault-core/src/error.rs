//! Errors of the domain layer. Each carries a message that is safe to show to a client.

/// A domain-level error.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoreError {
    /// A request parameter, name or policy member is invalid.
    #[error("{0}")]
    BadParameter(String),
}

impl CoreError {
    /// Shorthand for a [`CoreError::BadParameter`].
    pub fn bad(msg: impl Into<String>) -> Self {
        Self::BadParameter(msg.into())
    }
}
