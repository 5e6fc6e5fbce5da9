//! Certificate operations: create, import, get, update, versions, policy, pending operation and
//! merge, delete / recover / purge, backup / restore.

use certvault_core::policy::{
    ISSUER_SELF, ISSUER_UNKNOWN, KeyPropsIn, Origin, Policy, PolicyIn, Sans, SecretPropsIn,
    X509PropsIn,
};
use certvault_core::{ObjectName, VersionId};
use certvault_crypto::{CertParams, KeyAlg, PrivateKey, PublicKey};
use certvault_store::{
    AuditIntent, CertRecord, CertificateDump, Conflict, NewVersion, OperationRecord, RenewalGuard,
    Store, StoreError, VersionRecord, VersionUpdate, Which,
};
use http::{HeaderValue, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Ctx;
use super::model::{self, AttributesIn, stored_policy};
use crate::error::{ApiError, ApiResult};
use crate::http::{Body, empty, json as json_response};

/// AAD binding a sealed private key to its version.
pub fn key_aad(version: &str) -> Vec<u8> {
    format!("certvault/key/v1/{version}").into_bytes()
}

fn name(seg: &str) -> ApiResult<ObjectName> {
    Ok(ObjectName::parse(seg)?)
}

fn ok(v: &Value) -> ApiResult<Response<Body>> {
    Ok(json_response(StatusCode::OK, v))
}

/// A live certificate and one of its versions, or the Key Vault 404.
pub async fn live(
    ctx: &Ctx<'_>,
    n: &ObjectName,
    version: Option<&str>,
) -> ApiResult<(CertRecord, VersionRecord)> {
    let which = match version {
        None | Some("") => Which::Latest,
        Some(v) => {
            let v =
                VersionId::parse(v).map_err(|_| ApiError::cert_not_found(&format!("{n}/{v}")))?;
            return ctx
                .state
                .store
                .cert_version(ctx.vault_id(), &n.key(), false, Which::Version(v.as_str()))
                .await?
                .ok_or_else(|| ApiError::cert_not_found(&format!("{n}/{v}")));
        }
    };
    let found = ctx
        .state
        .store
        .cert_version(ctx.vault_id(), &n.key(), false, which)
        .await?
        .ok_or_else(|| ApiError::cert_not_found(n.as_str()))?;
    let _ = ctx.resolved_version.set(found.1.version.clone());
    Ok(found)
}

async fn has_pending_op(ctx: &Ctx<'_>, cert_id: i64) -> ApiResult<bool> {
    Ok(ctx
        .state
        .store
        .operation(cert_id)
        .await?
        .is_some_and(|o| o.status == "inProgress"))
}

/// The key operations a policy allows, as stored with each version.
pub fn key_ops_string(policy: &Policy) -> String {
    policy
        .key_ops()
        .iter()
        .map(|o| o.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Crypto parameters for a policy and validity window.
pub fn cert_params(policy: &Policy, nbf: i64, exp: i64) -> ApiResult<CertParams> {
    let sans = policy.sans();
    let mut ips = Vec::new();
    for ip in sans.ip_addresses.iter().flatten() {
        ips.push(
            ip.parse()
                .map_err(|_| ApiError::bad(format!("'{ip}' is not an IP address.")))?,
        );
    }
    Ok(CertParams {
        subject: policy.subject().to_owned(),
        dns_names: sans.dns_names.unwrap_or_default(),
        emails: sans.emails.unwrap_or_default(),
        upns: sans.upns.unwrap_or_default(),
        uris: sans.uris.unwrap_or_default(),
        ip_addresses: ips,
        ekus: policy.ekus(),
        key_usage: policy.key_usage(),
        is_ca: policy.is_ca(),
        not_before: nbf,
        not_after: exp,
    })
}

fn key_alg(policy: &Policy) -> KeyAlg {
    if policy.kty().is_ec() {
        KeyAlg::Ec(policy.curve())
    } else {
        KeyAlg::Rsa(policy.key_size())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(&e))?
}

/// A certificate's private key: sealed in the database, or inside the PKCS#11 token.
pub enum KeyMaterial {
    /// A software key.
    Soft(PrivateKey),
    /// A key in the token.
    Hsm {
        /// The token.
        hsm: certvault_hsm::Hsm,
        /// The key.
        key: certvault_hsm::KeyRef,
        /// Its public key.
        public: PublicKey,
    },
}

/// The token that holds `key_ref`, or a clear refusal when this server has no such token.
pub fn hsm_for(
    ctx: &Ctx<'_>,
    key_ref: &str,
) -> ApiResult<(certvault_hsm::Hsm, certvault_hsm::KeyRef)> {
    let key: certvault_hsm::KeyRef = key_ref.parse().map_err(|e| ApiError::internal(&e))?;
    match &ctx.state.hsm {
        Some(h) if h.token_label() == key.token() => Ok((h.clone(), key)),
        _ => Err(ApiError::forbidden(format!(
            "The key of this certificate lives in PKCS#11 token '{}', which this server is not \
             configured to use (--pkcs11-module, --pkcs11-token).",
            key.token()
        ))
        .inner("KeyNotAvailable")),
    }
}

/// Maps a token error to the Key Vault error shape.
pub fn hsm_api_error(e: certvault_hsm::HsmError) -> ApiError {
    use certvault_hsm::HsmError as H;
    match e {
        H::Crypto(c) => ApiError::from(c),
        H::Decrypt => {
            ApiError::bad("The ciphertext could not be decrypted with this key and algorithm.")
        }
        H::Unsupported(m) => ApiError::bad(format!("Not supported by the PKCS#11 token: {m}")),
        H::Busy { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The PKCS#11 token is busy; retry.",
        ),
        other => ApiError::internal(&other),
    }
}

impl KeyMaterial {
    /// The key of a stored version.
    pub fn of_version(ctx: &Ctx<'_>, v: &VersionRecord) -> ApiResult<Self> {
        match &v.key_ref {
            Some(r) => {
                let (hsm, key) = hsm_for(ctx, r)?;
                let public =
                    PublicKey::from_spki_der(&v.spki).map_err(|e| ApiError::internal(&e))?;
                Ok(Self::Hsm { hsm, key, public })
            }
            None => {
                let id = (v.cert_id, v.version.clone());
                if let Some(k) = ctx.state.key_cache.get(&id) {
                    return Ok(Self::Soft(k));
                }
                let k = open_key(ctx, v)?;
                ctx.state.key_cache.put(id, k.clone());
                Ok(Self::Soft(k))
            }
        }
    }

    /// A new key for `policy`: in the token for the HSM key types, else in software. Generated
    /// on a blocking thread.
    pub async fn generate(
        ctx: &Ctx<'_>,
        policy: &Policy,
        n: &ObjectName,
        version: &str,
    ) -> ApiResult<Self> {
        let alg = key_alg(policy);
        if !policy.kty().is_hsm() {
            return blocking(move || {
                PrivateKey::generate(alg)
                    .map(Self::Soft)
                    .map_err(ApiError::from)
            })
            .await;
        }
        let hsm = ctx.state.hsm.clone().ok_or_else(|| {
            ApiError::bad(format!(
                "Key type {} needs a PKCS#11 token, and this server has none configured (--pkcs11-module).",
                policy.kty().as_str()
            ))
        })?;
        let label = format!(
            "certvault:{}:{}:{version}",
            ctx.vault.vault.name,
            n.as_str()
        );
        blocking(move || {
            let (key, public) = hsm.generate(alg, &label).map_err(hsm_api_error)?;
            Ok(Self::Hsm { hsm, key, public })
        })
        .await
    }

    /// Whether the key lives in the token.
    pub fn is_hsm(&self) -> bool {
        matches!(self, Self::Hsm { .. })
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        match self {
            Self::Soft(k) => k.public_key(),
            Self::Hsm { public, .. } => public.clone(),
        }
    }

    /// What the version row stores: the sealed key, or the token reference.
    pub fn storage(
        &self,
        ctx: &Ctx<'_>,
        version: &str,
    ) -> ApiResult<(Option<Vec<u8>>, Option<String>)> {
        match self {
            Self::Soft(k) => Ok((Some(seal_key(ctx, version, k)?), None)),
            Self::Hsm { key, .. } => Ok((None, Some(key.to_string()))),
        }
    }

    /// A self-signed certificate (blocking: the token may sign).
    pub fn self_signed(&self, params: &CertParams) -> ApiResult<Vec<u8>> {
        match self {
            Self::Soft(k) => Ok(certvault_crypto::self_signed(k, params)?),
            Self::Hsm { hsm, key, .. } => {
                let signer = hsm.signer(key).map_err(hsm_api_error)?;
                Ok(certvault_crypto::self_signed_with(&signer, params)?)
            }
        }
    }

    /// A CSR (blocking: the token may sign).
    pub fn csr(&self, params: &CertParams) -> ApiResult<Vec<u8>> {
        match self {
            Self::Soft(k) => Ok(certvault_crypto::csr(k, params)?),
            Self::Hsm { hsm, key, .. } => {
                let signer = hsm.signer(key).map_err(hsm_api_error)?;
                Ok(certvault_crypto::csr_with(&signer, params)?)
            }
        }
    }

    /// Signs a digest with Key Vault semantics (blocking).
    pub fn sign(&self, alg: certvault_crypto::SignAlg, digest: &[u8]) -> ApiResult<Vec<u8>> {
        match self {
            Self::Soft(k) => Ok(certvault_crypto::sign(k, alg, digest)?),
            Self::Hsm { hsm, key, .. } => hsm.sign(key, alg, digest).map_err(hsm_api_error),
        }
    }

    /// Decrypts (blocking).
    pub fn decrypt(
        &self,
        alg: certvault_crypto::EncAlg,
        ct: &[u8],
    ) -> ApiResult<zeroize::Zeroizing<Vec<u8>>> {
        match self {
            Self::Soft(k) => certvault_crypto::decrypt(k, alg, ct).map_err(|_| {
                ApiError::bad("The ciphertext could not be decrypted with this key and algorithm.")
            }),
            Self::Hsm { hsm, key, .. } => hsm.decrypt(key, alg, ct).map_err(hsm_api_error),
        }
    }
}

/// Opens a version's sealed private key.
pub fn open_key(ctx: &Ctx<'_>, v: &VersionRecord) -> ApiResult<PrivateKey> {
    let blob = v.key_blob.as_ref().ok_or_else(|| {
        ApiError::forbidden("The private key of this certificate is not held by this server.")
    })?;
    let der = certvault_crypto::open_object(&ctx.vault.key, &key_aad(&v.version), blob)
        .map_err(|e| ApiError::internal(&e))?;
    PrivateKey::from_pkcs8_der(&der).map_err(|e| ApiError::internal(&e))
}

fn seal_key(ctx: &Ctx<'_>, version: &str, key: &PrivateKey) -> ApiResult<Vec<u8>> {
    certvault_crypto::seal_object(&ctx.vault.key, &key_aad(version), key.pkcs8_der())
        .map_err(|e| ApiError::internal(&e))
}

fn deleted_conflict(n: &ObjectName) -> ApiError {
    ApiError::conflict(format!(
        "Certificate {n} is currently in a deleted but recoverable state, and its name cannot be reused; \
         either recover or purge it."
    ))
    .inner("ObjectIsDeletedButRecoverable")
}

fn map_store(n: &ObjectName) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::Conflict(Conflict::Deleted) => deleted_conflict(n),
        other => ApiError::from(other),
    }
}

#[derive(Deserialize)]
struct CreateBody {
    policy: Option<PolicyIn>,
    #[serde(rename = "preserveCertOrder")]
    preserve: Option<bool>,
    attributes: Option<AttributesIn>,
    tags: Option<Map<String, Value>>,
}

/// POST /certificates/{n}/create
pub async fn create(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    create_with(ctx, seg, false, None).await.map(|(r, _)| r)
}

/// What makes a create a renewal (`crate::lifecycle::renew_with`).
#[derive(Debug, Clone)]
pub struct RenewalTerms {
    /// The version the renewal read as current: the new version (or operation) is stored
    /// only while it still is, and no operation is in progress; else nothing is written and
    /// the answer is [`ApiError::superseded`].
    pub expected: String,
    /// The ARI certificate id the ACME order replaces.
    pub replaces: Option<String>,
    /// The renewal's audit record, committed with the version (the engine's
    /// `certificates.autorenew`; a request is audited by the HTTP layer instead).
    pub audit: Option<RenewalAudit>,
}

/// The audit record of a renewal, stored in the audit outbox with the new version.
#[derive(Debug, Clone)]
pub struct RenewalAudit {
    /// Operation name.
    pub operation: String,
    /// Object (`certificates/<name>`).
    pub object: String,
    /// Detail; `version` and `status` of the new version are added.
    pub detail: Value,
    /// The lease owner of this process (it drains the outbox row first).
    pub owner: String,
    /// End of that lease (server clock).
    pub lease_until: i64,
}

/// Create (or create again: renew) with the body of `ctx`; `force_new_key` makes a new key
/// even when the policy says `reuse_key` (renew with rekey); `renewal` makes the write
/// conditional on the version the renewal read. Returns the answer and, for a renewal with an
/// audit record, the id of its audit outbox row.
pub async fn create_with(
    ctx: &Ctx<'_>,
    seg: &str,
    force_new_key: bool,
    renewal: Option<RenewalTerms>,
) -> ApiResult<(Response<Body>, Option<i64>)> {
    let n = name(seg)?;
    let body: CreateBody = ctx.json()?;
    let store = &ctx.state.store;
    let existing = store.certificate(ctx.vault_id(), &n.key()).await?;
    if existing.as_ref().is_some_and(|c| c.deleted_at.is_some()) {
        return Err(deleted_conflict(&n));
    }
    let policy = match (&body.policy, &existing) {
        (Some(p), Some(c)) => {
            let mut base = stored_policy(c)?.to_input();
            base.merge(p);
            Policy::resolve(&base, Origin::Created, true)?
        }
        (Some(p), None) => Policy::resolve(p, Origin::Created, true)?,
        (None, Some(c)) => stored_policy(c)?,
        (None, None) => {
            return Err(ApiError::bad(
                "A policy is required to create a new certificate.",
            ));
        }
    };
    if !policy.subject().is_empty() {
        certvault_crypto::validate_subject(policy.subject())?;
    }
    let issuer = policy.issuer_name().to_owned();
    let mut acme = None;
    if issuer != ISSUER_SELF && issuer != ISSUER_UNKNOWN {
        let rec = store
            .issuer(ctx.vault_id(), &issuer.to_ascii_lowercase())
            .await?;
        match rec {
            Some(r) if crate::acme::is_acme(&r.provider) => {
                let mut plan = crate::acme::prepare(ctx, &policy, &r)?;
                plan.replaces = renewal.as_ref().and_then(|t| t.replaces.clone());
                acme = Some(plan);
            }
            None => {
                return Err(ApiError::bad(format!(
                    "The issuer '{issuer}' does not exist in this vault."
                )));
            }
            Some(r) => {
                return Err(ApiError::bad(format!(
                    "Issuer '{issuer}' uses provider '{}', which cannot issue certificates on this server yet.",
                    r.provider
                )));
            }
        }
    }
    if let Some(c) = &existing
        && has_pending_op(ctx, c.id).await?
    {
        // A renewal read no operation in progress: one started since is another renewal's.
        if renewal.is_some() {
            return Err(ApiError::superseded());
        }
        return Err(ApiError::conflict(
            "A certificate operation is already in progress for this certificate.",
        ));
    }
    let tags = body.tags.as_ref().map(model::tags_json).transpose()?;
    let enabled = body
        .attributes
        .as_ref()
        .and_then(|a| a.enabled)
        .unwrap_or(true);

    // The key: reused from the newest version when the policy says so, else a new one.
    let version = VersionId::generate();
    let mut reuse = None;
    if policy.reuse_key()
        && !force_new_key
        && existing.is_some()
        && let Some((_, v)) = store
            .cert_version(ctx.vault_id(), &n.key(), false, Which::LatestCompleted)
            .await?
    {
        let k = KeyMaterial::of_version(ctx, &v)?;
        if k.public().alg() == key_alg(&policy) && k.is_hsm() == policy.kty().is_hsm() {
            reuse = Some(k);
        }
    }
    let key = match reuse {
        Some(k) => k,
        None => KeyMaterial::generate(ctx, &policy, &n, version.as_str()).await?,
    };
    let now = ctx.now;
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let (key_blob, key_ref) = key.storage(ctx, version.as_str())?;
    let spki = key.public().spki_der().to_vec();
    let content_type = policy.content_type().as_str().to_owned();
    let exportable = policy.exportable();

    // A version and an operation as for issuer Unknown: pending, with a CSR. Self signs at
    // once and completes both.
    let mut record = VersionRecord {
        cert_id: 0,
        version: version.as_str().to_owned(),
        seq: 0,
        created: now,
        updated: now,
        enabled: false,
        nbf: None,
        exp: None,
        tags,
        cer: None,
        chain: vec![],
        key_blob,
        key_ref,
        spki,
        content_type,
        exportable,
        preserve_order: body.preserve.unwrap_or(false),
        key_ops: Some(key_ops_string(&policy)),
    };
    let mut op = OperationRecord {
        cert_id: 0,
        request_id,
        version: version.as_str().to_owned(),
        issuer_name: issuer.clone(),
        status: "inProgress".into(),
        status_details:
            "Pending certificate created. Please Perform Merge to complete the request.".into(),
        csr: None,
        error: None,
        cancellation_requested: false,
        created: now,
        updated: now,
    };
    if issuer == ISSUER_SELF {
        let nbf = now - 600;
        let exp = model::add_months(now, policy.validity_months());
        let params = cert_params(&policy, nbf, exp)?;
        let der = blocking(move || key.self_signed(&params)).await?;
        record.cer = Some(der);
        record.enabled = enabled;
        record.nbf = Some(nbf);
        record.exp = Some(exp);
        op.status = "completed".into();
        op.status_details = String::new();
    } else {
        let mut params = cert_params(
            &policy,
            now,
            model::add_months(now, policy.validity_months()),
        )?;
        if let Some(plan) = &acme {
            // The CA wants the CSR's names to be exactly the order's.
            params.dns_names = plan.identifiers.clone();
            op.status_details = plan.status_details();
        }
        let csr = blocking(move || key.csr(&params)).await?;
        op.csr = Some(csr);
    }
    let order = match &acme {
        Some(plan) => Some(
            plan.insert(ctx, &n.key(), version.as_str(), enabled)
                .await?,
        ),
        None => None,
    };
    let policy_json = serde_json::to_string(&policy).map_err(|e| ApiError::internal(&e))?;
    let new = NewVersion {
        record,
        operation: Some(op.clone()),
    };
    let added = match renewal {
        None => store
            .add_version(ctx.vault_id(), n.as_str(), policy_json, now, new)
            .await
            .map(|(c, v)| (c, v, None)),
        Some(terms) => {
            let audit = terms.audit.map(|a| {
                let mut detail = a.detail;
                detail["version"] = json!(version.as_str());
                detail["status"] = json!(op.status);
                AuditIntent {
                    operation: a.operation,
                    vault: Some(ctx.vault.vault.name.clone()),
                    object: Some(a.object),
                    outcome: crate::audit::Outcome::Ok.as_str().to_owned(),
                    detail: Some(detail.to_string()),
                    owner: a.owner,
                    lease_until: a.lease_until,
                }
            });
            let guard = RenewalGuard {
                expected: terms.expected,
                audit,
            };
            // Test hook: lets a test put another renewal between this one's reads and its
            // write (the window the guard closes).
            let _pass = ctx.state.lifecycle.renewal_gate_pass().await;
            store
                .renew_version(ctx.vault_id(), n.as_str(), policy_json, now, new, guard)
                .await
        }
    };
    if let (Err(_), Some(o)) = (&added, &order) {
        crate::acme::discard(ctx.state, o).await;
    }
    let (cert, _, outbox) = added.map_err(map_store(&n))?;
    if let Some(o) = &order {
        crate::acme::start(ctx.state, o.id);
    }
    // The 202 always says inProgress; completion shows on the next GET of the operation.
    let mut shown = op;
    shown.status = "inProgress".into();
    if shown.status_details.is_empty() {
        shown.status_details =
            "Pending certificate created. Certificate request is in progress. This may take some time based on the issuer provider. Please check again later."
                .into();
    }
    let mut resp = json_response(StatusCode::ACCEPTED, &model::operation(ctx, &cert, &shown));
    let loc = format!(
        "{}/certificates/{}/pending?api-version={}&request_id={}",
        ctx.base, cert.name, ctx.api_version, shown.request_id
    );
    if let Ok(v) = HeaderValue::from_str(&loc) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    Ok((resp, outbox))
}

#[derive(Deserialize)]
struct ImportBody {
    value: String,
    #[serde(rename = "preserveCertOrder")]
    preserve: Option<bool>,
    pwd: Option<String>,
    policy: Option<PolicyIn>,
    attributes: Option<AttributesIn>,
    tags: Option<Map<String, Value>>,
}

fn starts_with_pem(b: &[u8]) -> bool {
    let t = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .map_or(&b[..0], |i| &b[i..]);
    t.starts_with(b"-----BEGIN")
}

/// Decodes an import `value`: raw PEM text, base64 of PEM, or base64 of PKCS#12.
fn decode_import(
    value: &str,
    pwd: Option<&str>,
) -> ApiResult<(
    certvault_crypto::Bundle,
    certvault_core::policy::ContentType,
)> {
    use certvault_core::policy::ContentType;
    if starts_with_pem(value.as_bytes()) {
        return Ok((
            certvault_crypto::parse_pem(value.as_bytes())?,
            ContentType::Pem,
        ));
    }
    let raw = model::from_b64(value, "value")?;
    if starts_with_pem(&raw) {
        return Ok((certvault_crypto::parse_pem(&raw)?, ContentType::Pem));
    }
    let bundle = certvault_crypto::parse_pfx(&raw, pwd.unwrap_or("")).map_err(|e| match e {
        certvault_crypto::CryptoError::BadPassword => {
            ApiError::bad("The PFX password is wrong, or the PFX is password-protected and no password was given.")
        }
        other => ApiError::from(other),
    })?;
    Ok((bundle, ContentType::Pkcs12))
}

fn policy_from_cert(
    info: &certvault_crypto::CertInfo,
    key: &PublicKey,
    ct: certvault_core::policy::ContentType,
) -> PolicyIn {
    let lifetime_days = (info.not_after - info.not_before).max(0) / 86_400;
    let months = u32::try_from(((lifetime_days as f64) / 30.4375).round() as i64)
        .unwrap_or(12)
        .max(1);
    let (kty, key_size, crv) = match key.alg() {
        KeyAlg::Rsa(bits) => (certvault_core::policy::KeyType::Rsa, Some(bits), None),
        KeyAlg::Ec(c) => (certvault_core::policy::KeyType::Ec, None, Some(c)),
    };
    PolicyIn {
        key_props: Some(KeyPropsIn {
            exportable: Some(true),
            kty: Some(kty),
            key_size,
            reuse_key: Some(false),
            crv,
        }),
        secret_props: Some(SecretPropsIn {
            content_type: Some(ct),
        }),
        x509_props: Some(X509PropsIn {
            subject: Some(info.subject.clone()),
            ekus: Some(info.ekus.clone()),
            sans: Some(Sans {
                dns_names: Some(info.dns_names.clone()),
                emails: Some(info.emails.clone()),
                upns: Some(info.upns.clone()),
                uris: Some(info.uris.clone()),
                ip_addresses: Some(info.ip_addresses.clone()),
            }),
            key_usage: Some(info.key_usage.clone()),
            validity_months: Some(months.min(certvault_core::policy::MAX_VALIDITY_MONTHS)),
            basic_constraints: Some(certvault_core::policy::BasicConstraints { ca: info.is_ca }),
        }),
        lifetime_actions: None,
        issuer: Some(certvault_core::policy::IssuerParams {
            name: Some(ISSUER_UNKNOWN.into()),
            cty: None,
            cert_transparency: None,
        }),
        attributes: None,
        platform_managed: None,
    }
}

/// POST /certificates/{n}/import
pub async fn import(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let body: ImportBody = ctx.json()?;
    let value = body.value.clone();
    let pwd = body.pwd.clone();
    let (bundle, detected) = blocking(move || decode_import(&value, pwd.as_deref())).await?;
    let key = bundle
        .key
        .ok_or_else(|| ApiError::bad("The imported content holds no private key."))?;
    if bundle.certs.is_empty() {
        return Err(ApiError::bad("The imported content holds no certificate."));
    }
    let public = key.public_key();
    let chain = arrange(&public, bundle.certs, body.preserve.unwrap_or(false))?;
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| ApiError::bad("The imported content holds no certificate."))?;
    let info = certvault_crypto::parse_certificate(leaf)?;
    if info.public_key.spki_der() != public.spki_der() {
        return Err(ApiError::bad(
            "The private key does not match any imported certificate.",
        ));
    }
    let store = &ctx.state.store;
    let existing = store.certificate(ctx.vault_id(), &n.key()).await?;
    if existing.as_ref().is_some_and(|c| c.deleted_at.is_some()) {
        return Err(deleted_conflict(&n));
    }
    let mut input = policy_from_cert(&info, &public, detected);
    if let Some(p) = &body.policy {
        input.merge(p);
    }
    let policy = Policy::resolve(&input, Origin::Imported, false)?;
    let tags = body.tags.as_ref().map(model::tags_json).transpose()?;
    let enabled = body
        .attributes
        .as_ref()
        .and_then(|a| a.enabled)
        .unwrap_or(true);
    let version = VersionId::generate();
    let now = ctx.now;
    let record = VersionRecord {
        cert_id: 0,
        version: version.as_str().to_owned(),
        seq: 0,
        created: now,
        updated: now,
        enabled,
        nbf: Some(info.not_before),
        exp: Some(info.not_after),
        tags,
        cer: Some(leaf.clone()),
        chain: rest.to_vec(),
        key_blob: Some(seal_key(ctx, version.as_str(), &key)?),
        key_ref: None,
        spki: public.spki_der().to_vec(),
        content_type: policy.content_type().as_str().to_owned(),
        exportable: policy.exportable(),
        preserve_order: body.preserve.unwrap_or(false),
        key_ops: Some(key_ops_string(&policy)),
    };
    let policy_json = serde_json::to_string(&policy).map_err(|e| ApiError::internal(&e))?;
    let (cert, v) = store
        .add_version(
            ctx.vault_id(),
            n.as_str(),
            policy_json,
            now,
            NewVersion {
                record,
                operation: None,
            },
        )
        .await
        .map_err(map_store(&n))?;
    ok(&model::bundle(ctx, &cert, &v, Some(&policy), false))
}

/// GET /certificates/{n}/{version?}
pub async fn get(ctx: &Ctx<'_>, seg: &str, version: Option<&str>) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let (cert, v) = live(ctx, &n, version).await?;
    let policy = stored_policy(&cert)?;
    let pending = has_pending_op(ctx, cert.id).await?;
    ok(&model::bundle(ctx, &cert, &v, Some(&policy), pending))
}

#[derive(Deserialize)]
struct UpdateBody {
    attributes: Option<AttributesIn>,
    tags: Option<Map<String, Value>>,
    policy: Option<PolicyIn>,
}

/// PATCH /certificates/{n}/{version?}
pub async fn update(ctx: &Ctx<'_>, seg: &str, version: Option<&str>) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let body: UpdateBody = ctx.json()?;
    let (cert, v) = live(ctx, &n, version).await?;
    let tags = body.tags.as_ref().map(model::tags_json).transpose()?;
    let new_policy = match &body.policy {
        Some(p) => {
            let mut base = stored_policy(&cert)?.to_input();
            base.merge(p);
            let resolved = Policy::resolve(&base, Origin::Created, false)?;
            if !resolved.subject().is_empty() {
                certvault_crypto::validate_subject(resolved.subject())?;
            }
            Some(resolved)
        }
        None => None,
    };
    let a = body.attributes.unwrap_or_default();
    if let (Some(Some(nbf)), Some(Some(exp))) = (a.nbf, a.exp)
        && nbf >= exp
    {
        return Err(ApiError::bad("nbf must be before exp."));
    }
    if v.is_pending() && a.enabled == Some(true) {
        return Err(ApiError::bad(
            "A pending certificate version cannot be enabled before it is merged.",
        ));
    }
    let store = &ctx.state.store;
    let cert = match &new_policy {
        Some(p) => {
            store
                .update_policy(
                    cert.id,
                    serde_json::to_string(p).map_err(|e| ApiError::internal(&e))?,
                    ctx.now,
                )
                .await?
        }
        None => cert,
    };
    let v = store
        .update_version(
            cert.id,
            &v.version,
            VersionUpdate {
                enabled: a.enabled,
                nbf: a.nbf,
                exp: a.exp,
                tags: tags.map(Some),
            },
            ctx.now,
        )
        .await?;
    let policy = stored_policy(&cert)?;
    let pending = has_pending_op(ctx, cert.id).await?;
    ok(&model::bundle(ctx, &cert, &v, Some(&policy), pending))
}

fn page_token(s: Option<String>) -> Option<String> {
    s.map(|t| t.to_ascii_lowercase())
}

/// GET /certificates and GET /deletedcertificates
pub async fn list(ctx: &Ctx<'_>, deleted: bool) -> ApiResult<Response<Body>> {
    let max = ctx.max_results()?;
    let include_pending = ctx
        .param("includePending")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let after = page_token(ctx.skiptoken());
    let rows = ctx
        .state
        .store
        .list_certificates(ctx.vault_id(), deleted, after, max + 1, include_pending)
        .await?;
    let path = if deleted {
        "/deletedcertificates"
    } else {
        "/certificates"
    };
    let extra: &[(&str, &str)] = if include_pending {
        &[("includePending", "true")]
    } else {
        &[]
    };
    let item = |(c, v): &(CertRecord, VersionRecord)| {
        let mut i = model::item(ctx, c, v, false);
        if deleted {
            model::add_deleted(ctx, c, &mut i);
        }
        Some(i)
    };
    Ok(super::page(ctx, path, &rows, max, extra, item, |(c, _)| {
        Store::name_key(c)
    }))
}

/// GET /certificates/{n}/versions
pub async fn versions(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let max = ctx.max_results()?;
    let cert = ctx
        .state
        .store
        .certificate(ctx.vault_id(), &n.key())
        .await?
        .filter(|c| c.deleted_at.is_none())
        .ok_or_else(|| ApiError::cert_not_found(n.as_str()))?;
    let after = match ctx.skiptoken() {
        Some(t) => t
            .parse::<i64>()
            .map_err(|_| ApiError::bad("Invalid $skiptoken."))?,
        None => 0,
    };
    let rows = ctx
        .state
        .store
        .list_versions(cert.id, after, max + 1)
        .await?;
    let path = format!("/certificates/{}/versions", cert.name);
    let item = |v: &VersionRecord| Some(model::item(ctx, &cert, v, true));
    Ok(super::page(ctx, &path, &rows, max, &[], item, |v| {
        v.seq.to_string()
    }))
}

async fn live_cert(ctx: &Ctx<'_>, n: &ObjectName) -> ApiResult<CertRecord> {
    ctx.state
        .store
        .certificate(ctx.vault_id(), &n.key())
        .await?
        .filter(|c| c.deleted_at.is_none())
        .ok_or_else(|| ApiError::cert_not_found(n.as_str()))
}

/// GET /certificates/{n}/policy
pub async fn get_policy(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let cert = live_cert(ctx, &n).await?;
    ok(&model::policy_json(ctx, &cert, &stored_policy(&cert)?))
}

/// PATCH /certificates/{n}/policy
pub async fn update_policy(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let patch: PolicyIn = ctx.json()?;
    let cert = live_cert(ctx, &n).await?;
    let mut base = stored_policy(&cert)?.to_input();
    base.merge(&patch);
    let policy = Policy::resolve(&base, Origin::Created, false)?;
    if !policy.subject().is_empty() {
        certvault_crypto::validate_subject(policy.subject())?;
    }
    let cert = ctx
        .state
        .store
        .update_policy(
            cert.id,
            serde_json::to_string(&policy).map_err(|e| ApiError::internal(&e))?,
            ctx.now,
        )
        .await?;
    ok(&model::policy_json(ctx, &cert, &policy))
}

fn pending_not_found(n: &ObjectName) -> ApiError {
    ApiError::not_found(
        "PendingCertificateNotFound",
        format!("Pending certificate not found: {n}"),
    )
}

async fn op_of(ctx: &Ctx<'_>, n: &ObjectName) -> ApiResult<(CertRecord, OperationRecord)> {
    let cert = live_cert(ctx, n).await.map_err(|_| pending_not_found(n))?;
    let op = ctx
        .state
        .store
        .operation(cert.id)
        .await?
        .ok_or_else(|| pending_not_found(n))?;
    Ok((cert, op))
}

fn op_response(
    ctx: &Ctx<'_>,
    cert: &CertRecord,
    op: &OperationRecord,
) -> ApiResult<Response<Body>> {
    let mut r = json_response(StatusCode::OK, &model::operation(ctx, cert, op));
    if op.status == "inProgress" {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    }
    Ok(r)
}

/// GET /certificates/{n}/pending
pub async fn get_pending(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let (cert, op) = op_of(ctx, &n).await?;
    op_response(ctx, &cert, &op)
}

#[derive(Deserialize)]
struct CancelBody {
    cancellation_requested: bool,
}

/// PATCH /certificates/{n}/pending
pub async fn cancel_pending(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let body: CancelBody = ctx.json()?;
    let (cert, op) = op_of(ctx, &n).await?;
    if !body.cancellation_requested || op.status != "inProgress" {
        return op_response(ctx, &cert, &op);
    }
    let op = ctx
        .state
        .store
        .finish_operation(
            cert.id,
            "cancelled",
            "The certificate operation was cancelled.".into(),
            None,
            true,
            ctx.now,
        )
        .await?;
    crate::acme::cancel_requested(ctx.state, ctx.vault_id(), &n.key(), &op.version);
    op_response(ctx, &cert, &op)
}

/// POST /certificates/{n}/pending/acknowledge (certvault extension): the user has created the
/// DNS-01 TXT records of an ACME order in `notify` mode; the CA is asked to validate without
/// waiting for the authoritative check.
pub async fn acknowledge_pending(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let (cert, op) = op_of(ctx, &n).await?;
    if op.status != "inProgress" {
        return Err(pending_not_found(&n));
    }
    let found = ctx
        .state
        .store
        .acknowledge_acme_order(ctx.vault_id(), &n.key(), &op.version, ctx.now)
        .await?;
    if !found {
        return Err(ApiError::bad(
            "This certificate operation is not an ACME order; there is nothing to acknowledge.",
        ));
    }
    op_response(ctx, &cert, &op)
}

/// DELETE /certificates/{n}/pending
pub async fn delete_pending(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let (cert, _) = op_of(ctx, &n).await?;
    let op = ctx.state.store.delete_operation(cert.id).await?;
    crate::acme::cancel_requested(ctx.state, ctx.vault_id(), &n.key(), &op.version);
    op_response(ctx, &cert, &op)
}

#[derive(Deserialize)]
struct MergeBody {
    x5c: Vec<String>,
    attributes: Option<AttributesIn>,
    tags: Option<Map<String, Value>>,
}

/// Puts the certificate of `key` first. The others follow in issuing order, or, with
/// `preserve` (the client's `preserveCertOrder`), in the order they were given.
fn arrange(key: &PublicKey, certs: Vec<Vec<u8>>, preserve: bool) -> ApiResult<Vec<Vec<u8>>> {
    if !preserve {
        return Ok(certvault_crypto::order_chain(Some(key), certs)?);
    }
    let mut leaf = None;
    let mut rest = Vec::with_capacity(certs.len());
    for c in certs {
        let info = certvault_crypto::parse_certificate(&c)?;
        if leaf.is_none() && info.public_key.spki_der() == key.spki_der() {
            leaf = Some(c);
        } else {
            rest.push(c);
        }
    }
    let mut out = vec![leaf.ok_or_else(|| {
        ApiError::bad("Public key from x509 certificate and key of this instance doesn't match")
    })?];
    out.extend(rest);
    Ok(out)
}

fn decode_x5c(items: &[String]) -> ApiResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for s in items {
        if starts_with_pem(s.as_bytes()) {
            out.extend(certvault_crypto::parse_pem(s.as_bytes())?.certs);
            continue;
        }
        let raw = model::from_b64(s, "x5c")?;
        if starts_with_pem(&raw) {
            out.extend(certvault_crypto::parse_pem(&raw)?.certs);
        } else {
            out.push(raw);
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad("x5c holds no certificate."));
    }
    Ok(out)
}

/// POST /certificates/{n}/pending/merge
pub async fn merge(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let body: MergeBody = ctx.json()?;
    let (cert, op) = op_of(ctx, &n).await?;
    if op.status != "inProgress" {
        return Err(pending_not_found(&n));
    }
    let (_, v) = live(ctx, &n, Some(&op.version)).await?;
    let certs = decode_x5c(&body.x5c)?;
    let key = PublicKey::from_spki_der(&v.spki).map_err(|e| ApiError::internal(&e))?;
    let chain = arrange(&key, certs, v.preserve_order)?;
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| ApiError::bad("x5c holds no certificate."))?;
    let info = certvault_crypto::parse_certificate(leaf)?;
    if info.public_key.spki_der() != v.spki.as_slice() {
        return Err(ApiError::bad(
            "Public key from x509 certificate and key of this instance doesn't match",
        ));
    }
    let a = body.attributes.unwrap_or_default();
    let tags = body.tags.as_ref().map(model::tags_json).transpose()?;
    let update = VersionUpdate {
        enabled: Some(a.enabled.unwrap_or(true)),
        nbf: Some(Some(info.not_before)),
        exp: Some(Some(info.not_after)),
        tags: tags.map(Some),
    };
    let v = ctx
        .state
        .store
        .complete_version(
            cert.id,
            &v.version,
            leaf.clone(),
            rest.to_vec(),
            update,
            "Certificate merged.".into(),
            ctx.now,
        )
        .await?;
    let policy = stored_policy(&cert)?;
    let mut r = json_response(
        StatusCode::CREATED,
        &model::bundle(ctx, &cert, &v, Some(&policy), false),
    );
    if let Ok(h) = HeaderValue::from_str(&format!(
        "{}/certificates/{}?api-version={}",
        ctx.base, cert.name, ctx.api_version
    )) {
        r.headers_mut().insert(header::LOCATION, h);
    }
    Ok(r)
}

/// DELETE /certificates/{n}
pub async fn delete(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let (cert, v) = live(ctx, &n, None).await?;
    let purge_at = ctx.now + ctx.vault.vault.recoverable_days * 86_400;
    let cert = ctx
        .state
        .store
        .soft_delete(cert.id, ctx.now, purge_at)
        .await?;
    let policy = stored_policy(&cert)?;
    let mut b = model::bundle(ctx, &cert, &v, Some(&policy), false);
    model::add_deleted(ctx, &cert, &mut b);
    ok(&b)
}

async fn deleted(ctx: &Ctx<'_>, n: &ObjectName) -> ApiResult<(CertRecord, VersionRecord)> {
    ctx.state
        .store
        .cert_version(ctx.vault_id(), &n.key(), true, Which::Latest)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "CertificateNotFound",
                format!("Deleted Certificate not found: {n}"),
            )
        })
}

/// GET /deletedcertificates/{n}
pub async fn get_deleted(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let (cert, v) = deleted(ctx, &n).await?;
    let policy = stored_policy(&cert)?;
    let mut b = model::bundle(ctx, &cert, &v, Some(&policy), false);
    model::add_deleted(ctx, &cert, &mut b);
    ok(&b)
}

/// POST /deletedcertificates/{n}/recover
pub async fn recover(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let (cert, v) = deleted(ctx, &n).await?;
    let cert = ctx.state.store.recover(cert.id, ctx.now).await?;
    let policy = stored_policy(&cert)?;
    ok(&model::bundle(ctx, &cert, &v, Some(&policy), false))
}

/// DELETE /deletedcertificates/{n}
pub async fn purge(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let cert = ctx
        .state
        .store
        .certificate(ctx.vault_id(), &n.key())
        .await?
        .filter(|c| c.deleted_at.is_some())
        .ok_or_else(|| {
            ApiError::not_found(
                "CertificateNotFound",
                format!("Deleted Certificate not found: {n}"),
            )
        })?;
    let refs = ctx.state.store.purge(cert.id).await?;
    ctx.state.key_cache.clear();
    ctx.state.destroy_hsm_keys(refs).await;
    Ok(empty(StatusCode::NO_CONTENT))
}

const BACKUP_AAD: &[u8] = b"certvault/backup/v1";

/// POST /certificates/{n}/backup
pub async fn backup(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = name(seg)?;
    let cert = live_cert(ctx, &n).await?;
    let dump = ctx.state.store.dump(cert.id).await?;
    let mut versions = Vec::new();
    for v in &dump.versions {
        let key = match &v.key_blob {
            Some(_) => {
                let k = open_key(ctx, v)?;
                Some(model::b64(
                    &certvault_crypto::seal_object(
                        &ctx.state.backup_key,
                        &key_aad(&v.version),
                        k.pkcs8_der(),
                    )
                    .map_err(|e| ApiError::internal(&e))?,
                ))
            }
            None => None,
        };
        versions.push(json!({
            "version": v.version, "created": v.created, "updated": v.updated, "enabled": v.enabled,
            "nbf": v.nbf, "exp": v.exp, "tags": v.tags, "cer": v.cer.as_deref().map(model::b64),
            "chain": v.chain.iter().map(|c| model::b64(c)).collect::<Vec<_>>(), "key": key,
            "key_ref": v.key_ref, "spki": model::b64(&v.spki), "content_type": v.content_type,
            "exportable": v.exportable,
            "preserve_order": v.preserve_order,
            "key_ops": v.key_ops,
        }));
    }
    let doc = json!({
        "format": "certvault-backup-1",
        "name": dump.cert.name, "policy": dump.cert.policy, "policy_created": dump.cert.policy_created,
        "policy_updated": dump.cert.policy_updated, "created": dump.cert.created, "versions": versions,
    });
    let plain = serde_json::to_vec(&doc).map_err(|e| ApiError::internal(&e))?;
    let sealed = certvault_crypto::seal(&ctx.state.backup_key, BACKUP_AAD, &plain)
        .map_err(|e| ApiError::internal(&e))?;
    ok(&json!({"value": model::b64url(&sealed)}))
}

#[derive(Deserialize)]
struct BackupVersion {
    version: String,
    created: i64,
    updated: i64,
    enabled: bool,
    nbf: Option<i64>,
    exp: Option<i64>,
    tags: Option<String>,
    cer: Option<String>,
    chain: Vec<String>,
    key: Option<String>,
    key_ref: Option<String>,
    spki: String,
    content_type: String,
    exportable: bool,
    #[serde(default)]
    preserve_order: bool,
    #[serde(default)]
    key_ops: Option<String>,
}

#[derive(Deserialize)]
struct BackupDoc {
    format: String,
    name: String,
    policy: String,
    policy_created: i64,
    policy_updated: i64,
    created: i64,
    versions: Vec<BackupVersion>,
}

#[derive(Deserialize)]
struct RestoreBody {
    value: String,
}

/// POST /certificates/restore
pub async fn restore(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let body: RestoreBody = ctx.json()?;
    let bad = || {
        ApiError::bad("The backup blob is corrupt or was not made by this certvault installation.")
    };
    let sealed = model::from_b64url(&body.value, "value")?;
    let plain =
        certvault_crypto::open(&ctx.state.backup_key, BACKUP_AAD, &sealed).map_err(|_| bad())?;
    let doc: BackupDoc = serde_json::from_slice(&plain).map_err(|_| bad())?;
    if doc.format != "certvault-backup-1" {
        return Err(bad());
    }
    let n = ObjectName::parse(&doc.name)?;
    let _: Policy = serde_json::from_str(&doc.policy).map_err(|_| bad())?;
    let mut versions = Vec::new();
    for (i, bv) in doc.versions.iter().enumerate() {
        let key_blob = match &bv.key {
            Some(k) => {
                let sealed = model::from_b64(k, "key").map_err(|_| bad())?;
                let der = certvault_crypto::open_object(
                    &ctx.state.backup_key,
                    &key_aad(&bv.version),
                    &sealed,
                )
                .map_err(|_| bad())?;
                Some(
                    certvault_crypto::seal_object(&ctx.vault.key, &key_aad(&bv.version), &der)
                        .map_err(|e| ApiError::internal(&e))?,
                )
            }
            None => None,
        };
        versions.push(VersionRecord {
            cert_id: 0,
            version: bv.version.clone(),
            seq: i64::try_from(i).unwrap_or(0) + 1,
            created: bv.created,
            updated: bv.updated,
            enabled: bv.enabled,
            nbf: bv.nbf,
            exp: bv.exp,
            tags: bv.tags.clone(),
            cer: bv
                .cer
                .as_deref()
                .map(|c| model::from_b64(c, "cer"))
                .transpose()
                .map_err(|_| bad())?,
            chain: bv
                .chain
                .iter()
                .map(|c| model::from_b64(c, "chain"))
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?,
            key_blob,
            key_ref: bv.key_ref.clone(),
            spki: model::from_b64(&bv.spki, "spki").map_err(|_| bad())?,
            content_type: bv.content_type.clone(),
            exportable: bv.exportable,
            preserve_order: bv.preserve_order,
            key_ops: bv.key_ops.clone(),
        });
    }
    let cert = CertRecord {
        id: 0,
        vault_id: ctx.vault_id(),
        name: n.as_str().to_owned(),
        policy: doc.policy,
        policy_created: doc.policy_created,
        policy_updated: doc.policy_updated,
        created: doc.created,
        updated: ctx.now,
        deleted_at: None,
        purge_at: None,
    };
    let cert = ctx
        .state
        .store
        .restore(ctx.vault_id(), CertificateDump { cert, versions }, ctx.now)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::conflict(format!(
                "A certificate named {n} already exists in this vault."
            )),
            other => ApiError::from(other),
        })?;
    let (cert, v) = live(ctx, &n, None).await.map(|(_, v)| (cert, v))?;
    let policy = stored_policy(&cert)?;
    ok(&model::bundle(ctx, &cert, &v, Some(&policy), false))
}
