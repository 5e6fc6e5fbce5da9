//! certvault cryptography, on a single backend (aws-lc-rs).
//!
//! * keys: [`PrivateKey`] generation and PKCS#8/PKCS#1/SEC1 import, [`PublicKey`] (SPKI) and
//!   [`Jwk`] members;
//! * X.509: [`self_signed`], [`csr`], [`issue`], [`parse_certificate`], [`order_chain`]; the
//!   `*_with` variants sign through a [`CertSigner`] (a software key or an HSM key);
//! * containers: PEM ([`parse_pem`], [`to_pem`]) and PKCS#12 ([`parse_pfx`], [`write_pfx`] in
//!   the Azure Key Vault profile);
//! * Key Vault key operations on certificate keys: [`sign`]/[`verify`] over a digest,
//!   [`encrypt`]/[`decrypt`] with RSA;
//! * envelope encryption at rest: [`seal`]/[`open`], [`seal_object`]/[`open_object`].
//!
//! All errors are [`CryptoError`]; their messages never contain secrets. Private key types
//! ([`PrivateKey`], [`SymKey`]) print `[redacted]` in `Debug` and keep their bytes in
//! `zeroize::Zeroizing`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod asn1;
mod dn;
mod envelope;
mod error;
mod keys;
mod ops;
mod pem;
mod pfx;
mod x509;

pub use certvault_core::policy::{Curve, KeyUsage};
pub use envelope::{
    HmacSha256Key, SymKey, hmac_sha256, open, open_object, random_bytes, rewrap_object, seal,
    seal_object, sha1, sha256,
};
pub use error::CryptoError;
pub use keys::{Jwk, KeyAlg, PrivateKey, PublicKey};
pub use ops::{EncAlg, SignAlg, decrypt, encrypt, sign, verify};
pub use pem::{parse_pem, to_pem, to_pem_pkcs8};
pub use pfx::{PFX_ITERATIONS, parse_pfx, write_pfx};
pub use x509::{
    CertInfo, CertParams, CertSigner, csr, csr_with, ecdsa_raw_to_der, issue, issue_with,
    order_chain, parse_certificate, self_signed, self_signed_with, validate_params,
    validate_subject, verify_signed_by, x509_signing_digest,
};

/// The contents of a PEM or PKCS#12 container.
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    /// The private key, normalised to PKCS#8, if the container has one.
    pub key: Option<PrivateKey>,
    /// The certificates (DER) in file order; use [`order_chain`] to get leaf-first order.
    pub certs: Vec<Vec<u8>>,
}
