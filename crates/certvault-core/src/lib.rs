//! certvault domain types: names and versions, the certificate policy with the defaults and
//! validation rules of the Key Vault service, attributes, key usage and key operations, the
//! error enum, and the clock. No I/O happens here.
#![forbid(unsafe_code)]

pub mod access;
pub mod clock;
pub mod error;
pub mod lifecycle;
pub mod names;
pub mod policy;

pub use clock::{Clock, SystemClock, TestClock};
pub use error::CoreError;
pub use names::{ObjectName, VersionId};
