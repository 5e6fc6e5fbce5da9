//! The managed key of each certificate version: JWK (public members only) and the key
//! operations sign, verify, encrypt, decrypt, wrapkey and unwrapkey.

use std::borrow::Cow;

use certvault_crypto::{EncAlg, Jwk, PublicKey, SignAlg};
use certvault_store::{CertRecord, VersionRecord};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Ctx;
use super::certs::KeyMaterial;
use super::key_version_cache::CachedKeyVersion;
use super::model::{self, b64url, from_b64url, stored_policy};
use super::secrets::{check_usable, list_object_versions, list_objects, version_for};
use crate::error::{ApiError, ApiResult};
use crate::http::{Body, json as json_response, json_bytes, push_json_str};

fn key_not_found(what: &str) -> ApiError {
    ApiError::not_found(
        "KeyNotFound",
        format!("A key with (name/id) {what} was not found in this key vault."),
    )
}

/// The JWK `kty` of a version's key: its family, in the HSM form when the key lives in an HSM.
fn kty(public: &PublicKey, v: &VersionRecord) -> &'static str {
    match (public.alg().is_ec(), v.key_ref.is_some()) {
        (true, true) => "EC-HSM",
        (true, false) => "EC",
        (false, true) => "RSA-HSM",
        (false, false) => "RSA",
    }
}

/// The key operations a version's key allows: fixed when the version was created, or (for
/// versions stored before that was recorded) derived from the certificate's policy.
pub fn key_ops(cert: &CertRecord, v: &VersionRecord) -> Vec<String> {
    match &v.key_ops {
        Some(ops) => ops
            .split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect(),
        None => stored_policy(cert)
            .map(|p| p.key_ops().iter().map(|o| o.as_str().to_owned()).collect())
            .unwrap_or_default(),
    }
}

fn key_json(ctx: &Ctx<'_>, cert: &CertRecord, v: &VersionRecord) -> ApiResult<Value> {
    let public = PublicKey::from_spki_der(&v.spki).map_err(|e| ApiError::internal(&e))?;
    let ops = key_ops(cert, v);
    let kty = kty(&public, v);
    let kid = format!("{}/keys/{}/{}", ctx.base, cert.name, v.version);
    let key = match public.jwk() {
        Jwk::Rsa { n, e } => {
            json!({"kid": kid, "kty": kty, "key_ops": ops, "n": b64url(&n), "e": b64url(&e)})
        }
        Jwk::Ec { crv, x, y } => {
            json!({"kid": kid, "kty": kty, "key_ops": ops, "crv": crv.as_str(), "x": b64url(&x), "y": b64url(&y)})
        }
    };
    let mut attrs = model::attributes(ctx, v);
    attrs["exportable"] = json!(v.exportable);
    let mut b = json!({"key": key, "attributes": attrs, "managed": true});
    if let Some(t) = v
        .tags
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
    {
        b["tags"] = t;
    }
    Ok(b)
}

/// GET /keys/{n}/{version?}
pub async fn get(ctx: &Ctx<'_>, seg: &str, version: Option<&str>) -> ApiResult<Response<Body>> {
    let (cert, v) = version_for(ctx, seg, version, key_not_found).await?;
    Ok(json_response(StatusCode::OK, &key_json(ctx, &cert, &v)?))
}

fn key_item(ctx: &Ctx<'_>, cert: &CertRecord, v: &VersionRecord, versioned: bool) -> Value {
    let kid = if versioned {
        format!("{}/keys/{}/{}", ctx.base, cert.name, v.version)
    } else {
        format!("{}/keys/{}", ctx.base, cert.name)
    };
    let mut attrs = model::attributes(ctx, v);
    attrs["exportable"] = json!(v.exportable);
    let mut i = json!({"kid": kid, "attributes": attrs, "managed": true});
    if let Some(t) = v
        .tags
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
    {
        i["tags"] = t;
    }
    i
}

/// GET /keys
pub async fn list(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    list_objects(ctx, "keys", key_item).await
}

/// GET /keys/{n}/versions
pub async fn versions(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    list_object_versions(ctx, "keys", seg, key_not_found, key_item).await
}

#[derive(Deserialize)]
struct OpBody<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow)]
    value: Cow<'a, str>,
    #[serde(borrow, default)]
    digest: Option<Cow<'a, str>>,
}

/// A key operation named in the path (matched case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyOp {
    Sign,
    Verify,
    Encrypt,
    Decrypt,
    WrapKey,
    UnwrapKey,
}

impl KeyOp {
    const ALL: [Self; 6] = [
        Self::Sign,
        Self::Verify,
        Self::Encrypt,
        Self::Decrypt,
        Self::WrapKey,
        Self::UnwrapKey,
    ];

    fn parse(op: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|o| o.wire().eq_ignore_ascii_case(op))
    }

    /// The name in `key_ops` and in the Key Vault API.
    fn wire(self) -> &'static str {
        match self {
            Self::Sign => "sign",
            Self::Verify => "verify",
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::WrapKey => "wrapKey",
            Self::UnwrapKey => "unwrapKey",
        }
    }

    /// The name as the route spells it (lower case), used in messages.
    fn route(self) -> &'static str {
        match self {
            Self::WrapKey => "wrapkey",
            Self::UnwrapKey => "unwrapkey",
            other => other.wire(),
        }
    }
}

/// The body of a key operation's answer: `{"kid": …, "value": base64url}` (`kid` left out
/// when `None`), written directly rather than through a `serde_json::Value` tree.
fn op_answer(kid: Option<&str>, value: &[u8]) -> Response<Body> {
    use base64::Engine as _;
    let mut out = Vec::with_capacity(32 + kid.map_or(0, str::len) + value.len() * 4 / 3);
    out.push(b'{');
    if let Some(kid) = kid {
        out.extend_from_slice(b"\"kid\":");
        push_json_str(&mut out, kid);
        out.push(b',');
    }
    out.extend_from_slice(b"\"value\":\"");
    let mut b64 = String::with_capacity(value.len() * 4 / 3 + 4);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(value, &mut b64);
    out.extend_from_slice(b64.as_bytes());
    out.extend_from_slice(b"\"}");
    json_bytes(StatusCode::OK, out)
}

/// POST /keys/{n}/{version}/{op}
pub async fn operation(
    ctx: &Ctx<'_>,
    seg: &str,
    version: &str,
    op: &str,
) -> ApiResult<Response<Body>> {
    let Some(op) = KeyOp::parse(op) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "No such key operation.",
        ));
    };
    let body: OpBody<'_> = ctx.json_ref()?;
    let resolved = resolve_for_op(ctx, seg, version).await?;
    let (cert, v) = (&resolved.cert, &resolved.version);
    check_usable(ctx, v, "key", op.route())?;
    let wire_op = op.wire();
    if !resolved.key_ops.iter().any(|o| o == wire_op) {
        return Err(ApiError::forbidden(format!(
            "Operation {wire_op} is not permitted on this key: its key_ops follow the certificate \
             policy's key usage."
        ))
        .inner("KeyOperationForbidden"));
    }
    let kid = format!("{}/keys/{}/{}", ctx.base, cert.name, v.version);
    let value = from_b64url(&body.value, "value")?;
    let public = &resolved.public;
    let out = match op {
        KeyOp::Sign => {
            let alg: SignAlg = body.alg.parse().map_err(|_| unknown_alg(&body.alg))?;
            let key = KeyMaterial::of_version(ctx, v)?;
            let sig = run_key_op(key, move |k| k.sign(alg, &value)).await?;
            op_answer(Some(&kid), &sig)
        }
        KeyOp::Verify => {
            let alg: SignAlg = body.alg.parse().map_err(|_| unknown_alg(&body.alg))?;
            let digest = from_b64url(
                body.digest
                    .as_deref()
                    .ok_or_else(|| ApiError::bad("'digest' is required for verify."))?,
                "digest",
            )?;
            let ok = certvault_crypto::verify(public, alg, &digest, &value)?;
            json_response(StatusCode::OK, &json!({"value": ok}))
        }
        KeyOp::Encrypt | KeyOp::WrapKey => {
            let alg: EncAlg = body.alg.parse().map_err(|_| unknown_alg(&body.alg))?;
            let ct = certvault_crypto::encrypt(public, alg, &value)?;
            op_answer(Some(&kid), &ct)
        }
        KeyOp::Decrypt | KeyOp::UnwrapKey => {
            let alg: EncAlg = body.alg.parse().map_err(|_| unknown_alg(&body.alg))?;
            let key = KeyMaterial::of_version(ctx, v)?;
            let pt = run_key_op(key, move |k| k.decrypt(alg, &value)).await?;
            op_answer(Some(&kid), &pt)
        }
    };
    Ok(out)
}

/// The key version a key operation uses: from the epoch cache when it was resolved since the
/// last change, else read from the store (the latest completed version when `version` is
/// empty) and cached.
async fn resolve_for_op(
    ctx: &Ctx<'_>,
    seg: &str,
    version: &str,
) -> ApiResult<std::sync::Arc<CachedKeyVersion>> {
    let cache_key = (
        ctx.vault_id(),
        seg.to_ascii_lowercase(),
        version.to_ascii_lowercase(),
    );
    let epoch = ctx.state.store.epoch();
    if let Some(hit) = ctx.state.key_version_cache.get(&cache_key, epoch) {
        if version.is_empty() {
            let _ = ctx.resolved_version.set(hit.version.version.clone());
        }
        return Ok(hit);
    }
    let (cert, v) = version_for(
        ctx,
        seg,
        Some(version).filter(|v| !v.is_empty()),
        key_not_found,
    )
    .await?;
    let public = PublicKey::from_spki_der(&v.spki).map_err(|e| ApiError::internal(&e))?;
    let entry = std::sync::Arc::new(CachedKeyVersion {
        key_ops: key_ops(&cert, &v),
        cert,
        version: v,
        public,
    });
    ctx.state
        .key_version_cache
        .put(cache_key, entry.clone(), epoch, ctx.state.store.epoch());
    Ok(entry)
}

/// Runs a private-key operation. A software key signs or decrypts on the calling task: an
/// ECDSA signature takes ~25 µs and an RSA-2048 one ~250 µs here, while handing the work to a
/// blocking thread and back cost two thread wake-ups and context switches per request (the
/// largest item in the profile of ES256 signing). A key in the token goes to a blocking thread:
/// a PKCS#11 call may wait for the device or for a session.
async fn run_key_op<T: Send + 'static>(
    key: KeyMaterial,
    f: impl FnOnce(&KeyMaterial) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    match key {
        KeyMaterial::Soft(_) => f(&key),
        KeyMaterial::Hsm { .. } => tokio::task::spawn_blocking(move || f(&key))
            .await
            .map_err(|e| ApiError::internal(&e))?,
    }
}

fn unknown_alg(alg: &str) -> ApiError {
    ApiError::bad(format!(
        "The algorithm '{}' is not supported for this operation and key.",
        certvault_core::names::truncate(alg, 40)
    ))
}

/// DELETE or PATCH on a managed key: 403 with the inner code `KeyManagedByKeyVault` (as
/// secrets answer `SecretManagedByKeyVault`), never confused with a permission denial
/// (`ForbiddenByPolicy`).
pub async fn refuse(_ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    Err(ApiError::forbidden(format!(
        "The key '{}' is managed by its certificate; change or delete the certificate instead.",
        certvault_core::names::truncate(seg, 127)
    ))
    .inner("KeyManagedByKeyVault"))
}
