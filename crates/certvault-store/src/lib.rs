//! certvault storage. The SQLite implementation keeps one writer thread that commits queued
//! writes together (group commit: one durable fsync for many requests, each write isolated in
//! its own savepoint) and a small pool of reader connections used from blocking threads.
//!
//! The store knows nothing of cryptography: private keys reach it already sealed.
#![forbid(unsafe_code)]

mod access;
mod acme;
mod audit;
mod audit_journal;
mod error;
mod jobs;
mod outbox;
mod records;
mod sqlite;
mod ui;

pub use access::{PolicyRecord, PrincipalRecord, TokenRecord};
pub use acme::{AcmeAccountRecord, AcmeOrderRecord};
pub use audit::{
    AuditChain, AuditFilter, AuditMac, AuditProblem, AuditProblemKind, AuditRecord,
    AuditVerification, HEAD_LOST_OPERATION, NewAuditRecord,
};
pub use audit_journal::AuditJournal;
pub use error::{Conflict, StoreError};
pub use jobs::{CLAIM_SELECT, Job, JobNext, Scheduler};
pub use outbox::{
    ChannelRecord, CurrentVersion, DELIVERY_SELECT, DeliveryFilter, DeliveryJob, DeliveryNext,
    DeliveryOutcome, DeliveryRecord, EventFilter, EventRecord, LifecycleView, Mark, NewEvent,
};
pub use records::*;
pub use sqlite::{SqliteStore, Which};
pub use ui::{UiCertQuery, UiSession, UiState, ui_list_sql};
