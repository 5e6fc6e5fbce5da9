//! Rows as the store returns and accepts them.

/// A vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vault {
    /// Row id.
    pub id: i64,
    /// Name as given.
    pub name: String,
    /// The vault key, sealed under the master key.
    pub wrapped_key: Vec<u8>,
    /// Soft-delete retention in days (7 to 90).
    pub recoverable_days: i64,
    /// Creation time.
    pub created: i64,
    /// When it was soft-deleted.
    pub deleted_at: Option<i64>,
    /// When it will be purged.
    pub purge_at: Option<i64>,
}

/// A certificate (the object that owns versions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// Row id.
    pub id: i64,
    /// Vault row id.
    pub vault_id: i64,
    /// Name as given at first create.
    pub name: String,
    /// The resolved policy as JSON.
    pub policy: String,
    /// Policy creation time.
    pub policy_created: i64,
    /// Policy update time.
    pub policy_updated: i64,
    /// Creation time.
    pub created: i64,
    /// Update time.
    pub updated: i64,
    /// When it was soft-deleted.
    pub deleted_at: Option<i64>,
    /// When it will be purged.
    pub purge_at: Option<i64>,
}

/// One version of a certificate, with its key and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    /// Certificate row id.
    pub cert_id: i64,
    /// The 32-hex version id.
    pub version: String,
    /// Order of creation within the certificate.
    pub seq: i64,
    /// Creation time.
    pub created: i64,
    /// Update time.
    pub updated: i64,
    /// Enabled flag.
    pub enabled: bool,
    /// Not before.
    pub nbf: Option<i64>,
    /// Expiry.
    pub exp: Option<i64>,
    /// Tags as a JSON object, if any.
    pub tags: Option<String>,
    /// Leaf certificate DER; `None` while pending.
    pub cer: Option<Vec<u8>>,
    /// Issuer chain after the leaf (DER each).
    pub chain: Vec<Vec<u8>>,
    /// The private key, sealed; `None` when the key lives elsewhere.
    pub key_blob: Option<Vec<u8>>,
    /// Where a non-software key lives (e.g. a PKCS#11 reference).
    pub key_ref: Option<String>,
    /// Public key (SPKI DER).
    pub spki: Vec<u8>,
    /// Content type of the managed secret.
    pub content_type: String,
    /// Whether the private key may be exported.
    pub exportable: bool,
    /// Whether the chain keeps the order it was imported or merged in.
    pub preserve_order: bool,
    /// The key operations allowed on this version's key (comma-separated wire names), fixed
    /// when the version was created; `None` for versions stored before they were recorded.
    pub key_ops: Option<String>,
}

impl VersionRecord {
    /// True while the version awaits its certificate.
    pub fn is_pending(&self) -> bool {
        self.cer.is_none()
    }
}

/// The pending certificate operation of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    /// Certificate row id.
    pub cert_id: i64,
    /// Request id (32 hex).
    pub request_id: String,
    /// The version the operation creates.
    pub version: String,
    /// Issuer name.
    pub issuer_name: String,
    /// `inProgress`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Human-readable details.
    pub status_details: String,
    /// The CSR (DER), if any.
    pub csr: Option<Vec<u8>>,
    /// Error as JSON (`{"code","message"}`), when failed.
    pub error: Option<String>,
    /// Whether a cancellation was requested.
    pub cancellation_requested: bool,
    /// Creation time.
    pub created: i64,
    /// Update time.
    pub updated: i64,
}

/// An issuer object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerRecord {
    /// Vault row id.
    pub vault_id: i64,
    /// Name as given.
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// Public members as JSON (account id, org details).
    pub body: String,
    /// Sealed secret credentials, if any.
    pub secret: Option<Vec<u8>>,
    /// Enabled flag.
    pub enabled: bool,
    /// Creation time.
    pub created: i64,
    /// Update time.
    pub updated: i64,
}

/// What to insert for a new version.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// The version record (cert_id and seq are filled in by the store).
    pub record: VersionRecord,
    /// The operation to attach, replacing any finished one.
    pub operation: Option<OperationRecord>,
}

/// A whole certificate for backup and restore.
#[derive(Debug, Clone)]
pub struct CertificateDump {
    /// The certificate.
    pub cert: CertRecord,
    /// Its versions, oldest first.
    pub versions: Vec<VersionRecord>,
}

/// Attribute changes for a version.
#[derive(Debug, Clone, Default)]
pub struct VersionUpdate {
    /// New enabled flag.
    pub enabled: Option<bool>,
    /// New not-before (`Some(None)` clears it).
    pub nbf: Option<Option<i64>>,
    /// New expiry (`Some(None)` clears it).
    pub exp: Option<Option<i64>>,
    /// New tags JSON.
    pub tags: Option<Option<String>>,
}

/// Encodes a chain as length-prefixed DER blobs.
pub(crate) fn encode_chain(chain: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chain.iter().map(|c| c.len() + 4).sum());
    for c in chain {
        let len = u32::try_from(c.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(c);
    }
    out
}

/// Decodes [`encode_chain`]'s output.
pub(crate) fn decode_chain(mut b: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (len, rest) = b.split_at_checked(4)?;
        let len = usize::try_from(u32::from_be_bytes(len.try_into().ok()?)).ok()?;
        let (c, rest) = rest.split_at_checked(len)?;
        out.push(c.to_vec());
        b = rest;
    }
    Some(out)
}

/// A value sealed under the master key, as handed to a re-wrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealedKind {
    /// A vault's key.
    VaultKey {
        /// The vault's lower-case name.
        name_key: String,
    },
    /// A `meta` entry.
    Meta {
        /// Its key.
        key: String,
    },
}

/// Re-seals one value: gets what it is and its sealed bytes, returns the new sealed bytes.
pub type Rewrap = Box<dyn Fn(&SealedKind, &[u8]) -> Result<Vec<u8>, String> + Send>;
