//! certvault storage on two backends behind [`Store`]: SQLite (the zero-config default) and
//! PostgreSQL ([`PgStore`], for several replicas sharing one database).
//!
//! The SQLite implementation keeps one writer thread that commits queued
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
mod migrate;
mod outbox;
mod pg;
mod pg_access;
mod pg_acme;
mod pg_audit;
mod pg_jobs;
mod pg_outbox;
mod pg_renewal;
mod pg_schema;
mod pg_status;
mod pg_ui;
mod records;
mod renewal;
mod sqlite;
mod status;
mod store;
mod ui;

pub use access::{PolicyRecord, PrincipalRecord, TokenRecord};
pub use acme::{AcmeAccountRecord, AcmeOrderRecord};
pub use audit::{
    AuditChain, AuditFilter, AuditMac, AuditProblem, AuditProblemKind, AuditRecord,
    AuditVerification, HEAD_LOST_OPERATION, NewAuditRecord,
};
pub use audit_journal::{AuditJournal, Durability, SyncPolicy};
pub use error::{Conflict, StoreError};
pub use jobs::{CLAIM_SELECT, Job, JobNext, Scheduler};
pub use migrate::MigrateReport;
pub use outbox::{
    ChannelRecord, CurrentVersion, DELIVERY_SELECT, DeliveryFilter, DeliveryJob, DeliveryNext,
    DeliveryOutcome, DeliveryRecord, EventFilter, EventRecord, LifecycleView, Mark, NewEvent,
};
pub use pg::PgStore;
pub use records::*;
pub use renewal::{AuditIntent, AuditOutboxRow, RenewalGuard};
pub use sqlite::{SqliteStore, StoreHealth, Which};
pub use status::{CertificateCounts, CertificateStatus, QueueStatus};
pub use store::{Store, is_postgres_url};
pub use ui::{
    FAILURE_KINDS, NO_EXPIRY, SEARCH_INDEX_LIMIT, SearchPlan, UiCertQuery, UiChannelHealth,
    UiSession, UiSort, UiState,
};
