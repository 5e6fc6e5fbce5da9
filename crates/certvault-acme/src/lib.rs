//! certvault's ACME v2 client layer (RFC 8555), on instant-acme (aws-lc-rs, no ring, no
//! OpenSSL).
//!
//! * Accounts: [`AcmeClient::create_account`] (contact, terms agreement, External Account
//!   Binding) returns [`AccountCredentials`] to store encrypted;
//!   [`AcmeClient::from_credentials`] reuses them. [`DirectoryPreset`] names the public CAs;
//!   [`TrustRoots`] adds private roots for the CA's HTTPS (pebble).
//! * Orders: a resumable state machine over the serialisable [`OrderState`]. Each step
//!   ([`AcmeClient::new_order`], [`AcmeClient::fetch_challenges`], publishing by the caller,
//!   [`AcmeClient::submit_challenges`], [`AcmeClient::poll_authorizations`],
//!   [`AcmeClient::finalize`] with the caller's CSR, [`AcmeClient::download`]) updates the
//!   state, which the caller persists; [`OrderState::next_step`] says where to continue after a
//!   restart. [`AcmeClient::run_order`] runs them all with a [`TxtPublisher`].
//! * Robustness: `badNonce` is retried with a fresh nonce (bounded, [`RetryConfig`]);
//!   `rateLimited`, `serverInternal` and 5xx wait for `Retry-After` (or back off) a bounded
//!   number of times; CA problems end as [`AcmeError::Ca`] with type and detail.
//! * ARI (RFC 9773): [`ari_cert_id`], [`AcmeClient::renewal_info`], [`choose_renewal_time`].
//!
//! Secrets (account key, EAB HMAC key) are never logged, never in error messages, and print
//! `[redacted]` in `Debug`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod account;
mod ari;
mod error;
mod http;
mod order;
pub mod stats;

pub use account::{
    AccountConfig, AccountCredentials, AcmeClient, DirectoryInfo, DirectoryPreset,
    ExternalAccountBinding, validate_directory_url,
};
pub use ari::{
    ARI_DEFAULT_RECHECK, ARI_MAX_RECHECK, ARI_MIN_RECHECK, RenewalSchedule, ari_cert_id,
    choose_renewal_time, clamp_recheck,
};
pub use error::{AcmeError, CaProblem};
pub use http::{RetryConfig, TrustRoots};
pub use order::{
    AuthzState, AuthzStatus, CertificateChain, OrderRequest, OrderState, OrderStatus, Step, Timing,
    TxtPublisher, TxtRecord,
};
