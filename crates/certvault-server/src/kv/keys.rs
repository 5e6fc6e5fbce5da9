//! The managed key of each certificate version: JWK (public members only) and the key
//! operations sign, verify, encrypt, decrypt, wrapkey and unwrapkey.

use certvault_crypto::{EncAlg, Jwk, PublicKey, SignAlg};
use certvault_store::{CertRecord, VersionRecord};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Ctx;
use super::certs::open_key;
use super::model::{self, b64url, from_b64url, stored_policy};
use super::secrets::{check_usable, list_object_versions, list_objects, version_for};
use crate::error::{ApiError, ApiResult};
use crate::http::{Body, json as json_response};

fn key_not_found(what: &str) -> ApiError {
    ApiError::not_found(
        "KeyNotFound",
        format!("A key with (name/id) {what} was not found in this key vault."),
    )
}

fn kty_and_ops(cert: &CertRecord) -> (String, Vec<&'static str>) {
    match stored_policy(cert) {
        Ok(p) => (
            p.kty().as_str().to_owned(),
            p.key_ops().into_iter().map(|o| o.as_str()).collect(),
        ),
        Err(_) => ("RSA".to_owned(), vec![]),
    }
}

fn key_json(ctx: &Ctx<'_>, cert: &CertRecord, v: &VersionRecord) -> ApiResult<Value> {
    let public = PublicKey::from_spki_der(&v.spki).map_err(|e| ApiError::internal(&e))?;
    let (kty, ops) = kty_and_ops(cert);
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
struct OpBody {
    alg: String,
    value: String,
    digest: Option<String>,
}

/// POST /keys/{n}/{version}/{op}
pub async fn operation(
    ctx: &Ctx<'_>,
    seg: &str,
    version: &str,
    op: &str,
) -> ApiResult<Response<Body>> {
    let op = op.to_ascii_lowercase();
    if ![
        "sign",
        "verify",
        "encrypt",
        "decrypt",
        "wrapkey",
        "unwrapkey",
    ]
    .contains(&op.as_str())
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "No such key operation.",
        ));
    }
    let body: OpBody = ctx.json()?;
    let (cert, v) = version_for(
        ctx,
        seg,
        Some(version).filter(|v| !v.is_empty()),
        key_not_found,
    )
    .await?;
    check_usable(ctx, &v, "key", &op)?;
    let kid = format!("{}/keys/{}/{}", ctx.base, cert.name, v.version);
    let value = from_b64url(&body.value, "value")?;
    let public = PublicKey::from_spki_der(&v.spki).map_err(|e| ApiError::internal(&e))?;
    let out = match op.as_str() {
        "sign" => {
            let alg: SignAlg = body.alg.parse().map_err(|_| unknown_alg(&body.alg))?;
            let key = open_key(ctx, &v)?;
            let sig =
                tokio::task::spawn_blocking(move || certvault_crypto::sign(&key, alg, &value))
                    .await
                    .map_err(|e| ApiError::internal(&e))??;
            json!({"kid": kid, "value": b64url(&sig)})
        }
        "verify" => {
            let alg: SignAlg = body.alg.parse().map_err(|_| unknown_alg(&body.alg))?;
            let digest = from_b64url(
                body.digest
                    .as_deref()
                    .ok_or_else(|| ApiError::bad("'digest' is required for verify."))?,
                "digest",
            )?;
            let ok = certvault_crypto::verify(&public, alg, &digest, &value)?;
            json!({"value": ok})
        }
        "encrypt" | "wrapkey" => {
            let alg: EncAlg = body.alg.parse().map_err(|_| unknown_alg(&body.alg))?;
            let ct = certvault_crypto::encrypt(&public, alg, &value)?;
            json!({"kid": kid, "value": b64url(&ct)})
        }
        _ => {
            let alg: EncAlg = body.alg.parse().map_err(|_| unknown_alg(&body.alg))?;
            let key = open_key(ctx, &v)?;
            let pt =
                tokio::task::spawn_blocking(move || certvault_crypto::decrypt(&key, alg, &value))
                    .await
                    .map_err(|e| ApiError::internal(&e))?
                    .map_err(|_| {
                        ApiError::bad(
                            "The ciphertext could not be decrypted with this key and algorithm.",
                        )
                    })?;
            json!({"kid": kid, "value": b64url(&pt)})
        }
    };
    Ok(json_response(StatusCode::OK, &out))
}

fn unknown_alg(alg: &str) -> ApiError {
    ApiError::bad(format!(
        "The algorithm '{}' is not supported for this operation and key.",
        certvault_core::names::truncate(alg, 40)
    ))
}

/// DELETE or PATCH on a managed key.
pub async fn refuse(_ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    Err(ApiError::forbidden(format!(
        "The key '{}' is managed by its certificate; change or delete the certificate instead.",
        certvault_core::names::truncate(seg, 127)
    )))
}
