//! The crate's single error type.

/// Everything that can go wrong in `certvault-crypto`.
///
/// Every message is written by this crate and is safe to show to an API client: no message ever
/// contains key material, passwords, plaintext or other secret bytes. Where a message names user
/// input it is a non-secret label (an attribute name, an algorithm name, a length).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The caller passed a value that is not acceptable (wrong digest length, an algorithm that
    /// does not fit the key, a malformed subject or SAN, …). Maps to HTTP 400.
    #[error("{0}")]
    BadParameter(String),

    /// Input data (DER, PEM, PKCS#12, a sealed blob's framing) could not be parsed.
    #[error("malformed {0}")]
    Malformed(String),

    /// The input is well formed but uses a feature this implementation does not support
    /// (an encrypted PEM key, an Ed25519 key, secp256k1 for certificates, …).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// The PKCS#12 password is wrong (MAC check failed, or decryption failed for a MAC-less file).
    #[error("the password is incorrect or the PKCS#12 integrity check failed")]
    BadPassword,

    /// A private key and a certificate (or a CA key and its certificate) do not belong together.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,

    /// Decryption or authenticated-decryption failed (wrong key, wrong AAD, tampered data).
    #[error("decryption failed")]
    Decrypt,

    /// The cryptographic library reported an unexpected failure (e.g. key generation failed).
    #[error("internal cryptographic failure: {0}")]
    Internal(String),
}

impl CryptoError {
    pub(crate) fn bad(msg: impl Into<String>) -> Self {
        Self::BadParameter(msg.into())
    }

    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        Self::Malformed(what.into())
    }

    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Self::Unsupported(what.into())
    }

    pub(crate) fn internal(what: impl Into<String>) -> Self {
        Self::Internal(what.into())
    }
}

/// Quotes a short user-supplied label (attribute or algorithm name) for an error message, or
/// returns a neutral placeholder when the input is long or contains unusual characters.
pub(crate) fn label(s: &str) -> String {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '));
    if ok {
        format!("'{s}'")
    } else {
        "(unprintable)".to_string()
    }
}
