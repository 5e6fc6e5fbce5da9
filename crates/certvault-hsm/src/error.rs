//! The crate's single error type, and the mapping from cryptoki errors.

use std::path::PathBuf;

use certvault_crypto::CryptoError;
use cryptoki::error::{Error as CkError, RvError};

/// Everything that can go wrong in `certvault-hsm`.
///
/// Messages are written for an operator and are safe to log or show: they never contain a PIN,
/// key material, plaintext or ciphertext. They may name the module path, the token label, a key
/// reference (`pkcs11:token=…;id=…`), a PKCS#11 function and its `CKR_…` return code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The [`crate::HsmConfig`] is unusable (empty label, pool size 0, …).
    #[error("invalid HSM configuration: {0}")]
    Config(String),

    /// The PIN could not be obtained (missing file or variable, unsafe file permissions, …).
    #[error("HSM PIN: {0}")]
    Pin(String),

    /// The PKCS#11 module could not be loaded or initialised.
    #[error("could not load PKCS#11 module {}: {reason}", module.display())]
    ModuleLoad {
        /// The module path from the configuration.
        module: PathBuf,
        /// Why (the dynamic loader's message, or the `C_Initialize` return code).
        reason: String,
    },

    /// No token with the configured label is present in the module.
    #[error("PKCS#11 token '{label}' not found in module {}{available}", module.display())]
    TokenNotFound {
        /// The label that was looked for.
        label: String,
        /// The module path.
        module: PathBuf,
        /// `" (tokens present: 'a', 'b')"`, or `" (no tokens present)"`.
        available: String,
    },

    /// The token exists but cannot be used (not initialised, no user PIN set, several tokens with
    /// the same label, …).
    #[error("PKCS#11 token '{label}' is not usable: {reason}")]
    TokenUnusable {
        /// The token label.
        label: String,
        /// Why.
        reason: String,
    },

    /// `C_Login` refused the user PIN (`CKR_PIN_INCORRECT`).
    #[error("wrong PIN for PKCS#11 token '{label}'")]
    WrongPin {
        /// The token label.
        label: String,
    },

    /// The user PIN is locked (`CKR_PIN_LOCKED`).
    #[error(
        "the user PIN of PKCS#11 token '{label}' is locked (too many wrong attempts); \
         the token's security officer must unlock or reset it"
    )]
    PinLocked {
        /// The token label.
        label: String,
    },

    /// No key with this reference exists in the token (destroyed, or a different token with the
    /// same label).
    #[error("HSM key {key} not found in the token")]
    KeyNotFound {
        /// The key reference, as stored.
        key: String,
    },

    /// A key reference string could not be parsed, or names another token.
    #[error("invalid HSM key reference: {0}")]
    BadKeyRef(String),

    /// The key exists but is of the wrong kind for the operation (e.g. signing with the AES
    /// master key).
    #[error("HSM key {key} cannot be used here: {reason}")]
    WrongKeyKind {
        /// The key reference.
        key: String,
        /// Why.
        reason: String,
    },

    /// An AES key with this label already exists in the token.
    #[error("an AES key labelled '{label}' already exists in PKCS#11 token '{token}'")]
    AlreadyExists {
        /// The key label.
        label: String,
        /// The token label.
        token: String,
    },

    /// Several AES keys carry the same label, so the master key is ambiguous.
    #[error("{count} AES keys are labelled '{label}' in PKCS#11 token '{token}'; expected one")]
    Ambiguous {
        /// The key label.
        label: String,
        /// The token label.
        token: String,
        /// How many were found.
        count: usize,
    },

    /// The token created a key without the protection certvault requires; the key was
    /// destroyed.
    #[error(
        "the token created a key that is not protected (CKA_SENSITIVE={sensitive}, \
         CKA_EXTRACTABLE={extractable}); the key was destroyed"
    )]
    NotProtected {
        /// `CKA_SENSITIVE` as read back (`false` also when it could not be read).
        sensitive: bool,
        /// `CKA_EXTRACTABLE` as read back (`true` also when it could not be read).
        extractable: bool,
    },

    /// The token does not support a mechanism or key type certvault needs.
    #[error("the PKCS#11 token does not support {0}")]
    Unsupported(String),

    /// A parameter check shared with software keys failed: wrong digest length, an algorithm
    /// that does not fit the key, a ciphertext of the wrong length, an unsupported key size or
    /// curve. [`CryptoError::BadParameter`] maps to HTTP 400.
    #[error(transparent)]
    Crypto(#[from] CryptoError),

    /// Decryption failed: wrong key or algorithm, corrupt ciphertext, or (AES-GCM) wrong AAD or
    /// tampered data.
    #[error("decryption failed")]
    Decrypt,

    /// A sealed blob's framing is wrong (unknown format byte, too short).
    #[error("malformed {0}")]
    Malformed(String),

    /// The token returned a signature that does not verify with the key's public key; it was
    /// not released.
    #[error("the HSM returned a signature that does not verify with key {key}; it was discarded")]
    BadSignature {
        /// The key reference.
        key: String,
    },

    /// Every pooled session stayed busy for the whole wait.
    #[error(
        "no PKCS#11 session became free within {waited_secs} s (pool size {pool_size}); \
         raise the HSM pool size or lower the load"
    )]
    Busy {
        /// Seconds waited.
        waited_secs: u64,
        /// Configured pool size.
        pool_size: usize,
    },

    /// Any other PKCS#11 failure.
    #[error("PKCS#11 {function} failed: {code}")]
    Pkcs11 {
        /// The PKCS#11 function, e.g. `C_Sign`.
        function: String,
        /// The return code, e.g. `CKR_DEVICE_ERROR`, or cryptoki's description of a
        /// non-PKCS#11 failure.
        code: String,
    },
}

/// `PinIncorrect` → `CKR_PIN_INCORRECT`.
pub(crate) fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The generic mapping of a cryptoki error.
pub(crate) fn from_ck(e: CkError) -> HsmError {
    match e {
        CkError::Pkcs11(rv @ (RvError::MechanismInvalid | RvError::MechanismParamInvalid), f) => {
            HsmError::Unsupported(format!(
                "the mechanism or parameters requested by C_{f:?} ({})",
                ckr_name(rv)
            ))
        }
        CkError::Pkcs11(rv, f) => HsmError::Pkcs11 {
            function: format!("C_{f:?}"),
            code: ckr_name(rv),
        },
        other => HsmError::Pkcs11 {
            function: "call".to_string(),
            code: other.to_string(),
        },
    }
}

/// The return code of a cryptoki error, if it is a PKCS#11 error.
pub(crate) fn rv_of(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(ckr_name(RvError::DeviceError), "CKR_DEVICE_ERROR");
        assert_eq!(
            ckr_name(RvError::UserPinNotInitialized),
            "CKR_USER_PIN_NOT_INITIALIZED"
        );
    }
}
