//! HSM keys for certvault through PKCS#11 (the `cryptoki` crate).
//!
//! * [`Hsm::open`] loads a PKCS#11 module, finds a token by label and keeps a pool of
//!   logged-in sessions; the PIN comes from [`read_pin`] (a file or an environment variable);
//! * key pairs that never leave the token: [`Hsm::generate`] (RSA 2048/3072/4096, EC
//!   P-256/384/521; sensitive and non-extractable, checked after generation),
//!   [`Hsm::public_key`], [`Hsm::key_attributes`], [`Hsm::destroy`];
//! * Key Vault key operations inside the token: [`Hsm::sign`] (RS*/PS*/ES* over a digest) and
//!   [`Hsm::decrypt`] (RSA1_5, RSA-OAEP, RSA-OAEP-256), with the same semantics and checks as
//!   `certvault_crypto::sign` / `decrypt`;
//! * certificates and CSRs signed inside the token: [`Hsm::signer`] gives a
//!   [`certvault_crypto::CertSigner`] for `self_signed_with`, `csr_with` and `issue_with`;
//! * a master key inside the token: [`Hsm::generate_aes_key`], [`Hsm::find_aes_key`],
//!   [`Hsm::aes_seal`] / [`Hsm::aes_open`] (AES-256-GCM in the token);
//! * [`KeyRef`]: the stable, secret-free string (`pkcs11:token=…;id=…`) to store per key.
//!
//! Every call blocks: use `spawn_blocking`. All errors are [`HsmError`]; no message contains a
//! PIN or key material.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod hsm;
mod keyref;
mod pin;
mod pool;

pub use error::HsmError;
pub use hsm::{Hsm, HsmConfig, HsmSigner, KeyProtection};
pub use keyref::KeyRef;
pub use pin::read_pin;
