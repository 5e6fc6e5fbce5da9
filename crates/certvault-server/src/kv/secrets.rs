//! The managed secret of each certificate version: PKCS#12 with an empty password or PEM with
//! the PKCS#8 key first; the key only when the policy makes it exportable.

use base64::Engine;
use certvault_core::ObjectName;
use certvault_core::policy::ContentType;
use certvault_crypto::PrivateKey;
use certvault_store::{CertRecord, VersionRecord, Which};
use http::{Response, StatusCode};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::Ctx;
use super::certs::key_aad;
use super::model;
use super::secret_cache::CachedSecret;
use crate::error::{ApiError, ApiResult};
use crate::http::{Body, json_bytes, push_json_str};

fn secret_not_found(what: &str) -> ApiError {
    ApiError::not_found(
        "SecretNotFound",
        format!("A secret with (name/id) {what} was not found in this key vault."),
    )
}

/// A live certificate's version for the secret and key endpoints.
pub async fn version_for(
    ctx: &Ctx<'_>,
    seg: &str,
    version: Option<&str>,
    not_found: fn(&str) -> ApiError,
) -> ApiResult<(CertRecord, VersionRecord)> {
    let n = ObjectName::parse(seg).map_err(|_| not_found(seg))?;
    let which = match version {
        None | Some("") => Which::LatestCompleted,
        Some(v) => {
            let v =
                certvault_core::VersionId::parse(v).map_err(|_| not_found(&format!("{n}/{v}")))?;
            let r = ctx
                .state
                .store
                .cert_version(ctx.vault_id(), &n.key(), false, Which::Version(v.as_str()))
                .await?;
            return r
                .filter(|(_, v)| !v.is_pending())
                .ok_or_else(|| not_found(&format!("{n}/{v}")));
        }
    };
    let found = ctx
        .state
        .store
        .cert_version(ctx.vault_id(), &n.key(), false, which)
        .await?
        .ok_or_else(|| not_found(n.as_str()))?;
    let _ = ctx.resolved_version.set(found.1.version.clone());
    Ok(found)
}

/// A version's private key as the PKCS#8 DER sealed at rest, without parsing it; the same
/// refusal and errors as `certs::open_key`.
fn open_key_pkcs8(ctx: &Ctx<'_>, v: &VersionRecord) -> ApiResult<Zeroizing<Vec<u8>>> {
    let blob = v.key_blob.as_ref().ok_or_else(|| {
        ApiError::forbidden("The private key of this certificate is not held by this server.")
    })?;
    certvault_crypto::open_object(&ctx.vault.key, &key_aad(&v.version), blob)
        .map_err(|e| ApiError::internal(&e))
}

/// Refuses use of a disabled or out-of-window version.
pub fn check_usable(ctx: &Ctx<'_>, v: &VersionRecord, kind: &str, op: &str) -> ApiResult<()> {
    check_window(ctx, v.enabled, v.nbf, v.exp, kind, op)
}

fn check_window(
    ctx: &Ctx<'_>,
    enabled: bool,
    nbf: Option<i64>,
    exp: Option<i64>,
    kind: &str,
    op: &str,
) -> ApiResult<()> {
    if !enabled {
        return Err(ApiError::forbidden(format!(
            "Operation {op} is not allowed on a disabled {kind}."
        )));
    }
    if nbf.is_some_and(|nbf| ctx.now < nbf) {
        return Err(ApiError::forbidden(format!(
            "Operation {op} is not allowed on a {kind} that is not yet valid."
        )));
    }
    if exp.is_some_and(|exp| ctx.now > exp) {
        return Err(ApiError::forbidden(format!(
            "Operation {op} is not allowed on an expired {kind}."
        )));
    }
    Ok(())
}

fn secret_attributes(ctx: &Ctx<'_>, v: &VersionRecord) -> Value {
    model::attributes(ctx, v)
}

/// The requested output type: `outContentType` or the stored type.
fn output_type(ctx: &Ctx<'_>, stored: ContentType) -> ApiResult<ContentType> {
    match ctx.param("outContentType") {
        None | Some("") => Ok(stored),
        Some(s) => match ContentType::parse(s) {
            Some(ContentType::Pem) => Ok(ContentType::Pem),
            Some(ContentType::Pkcs12) if stored == ContentType::Pkcs12 => Ok(ContentType::Pkcs12),
            _ => Err(ApiError::bad(format!(
                "Converting the secret from {} to '{}' is not supported.",
                stored.as_str(),
                certvault_core::names::truncate(s, 60)
            ))),
        },
    }
}

/// The body of a cached secret for this request: the ids carry the request's origin.
fn cached_body(ctx: &Ctx<'_>, e: &CachedSecret) -> Vec<u8> {
    let id = format!("{}/secrets/{}/{}", ctx.base, e.name, e.version);
    let kid = format!("{}/keys/{}/{}", ctx.base, e.name, e.version);
    let mut b = Vec::with_capacity(e.head.len() + e.tail.len() + 2 * id.len() + 16);
    b.extend_from_slice(&e.head);
    push_json_str(&mut b, &id);
    b.extend_from_slice(b",\"kid\":");
    push_json_str(&mut b, &kid);
    b.extend_from_slice(&e.tail);
    b
}

/// The response of a cached secret: its shared body when this request has the origin that
/// body was made for, else a body of its own.
fn shared_body(ctx: &Ctx<'_>, e: &CachedSecret) -> Response<Body> {
    let body = e.body.get_or_init(|| {
        let b = Zeroizing::new(cached_body(ctx, e));
        (ctx.base.to_string(), bytes::Bytes::from_owner(b))
    });
    let bytes = if body.0 == ctx.base {
        body.1.clone()
    } else {
        bytes::Bytes::from_owner(Zeroizing::new(cached_body(ctx, e)))
    };
    let mut r = Response::new(Body::new(bytes));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// GET /secrets/{n}/{version?}
///
/// Rendered secrets are cached per store epoch (`secret_cache`): a hit costs no store read,
/// no unsealing and no rendering; the permission check (done by the router), the version's
/// enabled flag and validity window and the audit record are the same as on a miss.
pub async fn get(ctx: &Ctx<'_>, seg: &str, version: Option<&str>) -> ApiResult<Response<Body>> {
    let requested = version.unwrap_or("").to_ascii_lowercase();
    let want = match ctx.param("outContentType") {
        None | Some("") => 0u8,
        Some(s) => match ContentType::parse(s) {
            Some(ContentType::Pem) => 1,
            Some(ContentType::Pkcs12) => 2,
            None => 3,
        },
    };
    let cache_key = (ctx.vault_id(), seg.to_lowercase(), requested, want);
    let epoch = ctx.state.store.epoch();
    if let Some(e) = ctx.state.secret_cache.get(&cache_key, epoch) {
        if version.is_none_or(str::is_empty) {
            let _ = ctx.resolved_version.set(e.version.clone());
        }
        check_window(ctx, e.enabled, e.nbf, e.exp, "secret", "get")?;
        return Ok(shared_body(ctx, &e));
    }
    let (cert, v) = version_for(ctx, seg, version, secret_not_found).await?;
    check_usable(ctx, &v, "secret", "get")?;
    let stored = ContentType::parse(&v.content_type).unwrap_or_default();
    let out = output_type(ctx, stored)?;
    // The key's PKCS#8 DER as sealed at rest (the canonical encoding `certs::open_key` would
    // re-create after parsing and validating it, which costs more than the rest of this
    // request; PEM writes the bytes as they are).
    let key_der = if v.exportable {
        Some(open_key_pkcs8(ctx, &v)?)
    } else {
        None
    };
    let value = Zeroizing::new(match out {
        ContentType::Pem => {
            let chain: Vec<&[u8]> = v
                .cer
                .iter()
                .chain(v.chain.iter())
                .map(Vec::as_slice)
                .collect();
            certvault_crypto::to_pem_pkcs8(key_der.as_deref().map(Vec::as_slice), &chain)
        }
        ContentType::Pkcs12 => {
            let mut chain = Vec::with_capacity(v.chain.len() + 1);
            if let Some(cer) = &v.cer {
                chain.push(cer.clone());
            }
            chain.extend(v.chain.iter().cloned());
            let key = key_der
                .map(|d| PrivateKey::from_pkcs8_der(&d))
                .transpose()
                .map_err(|e| ApiError::internal(&e))?;
            let pfx = tokio::task::spawn_blocking(move || {
                certvault_crypto::write_pfx(key.as_ref(), &chain, "")
            })
            .await
            .map_err(|e| ApiError::internal(&e))?
            .map_err(|e| ApiError::internal(&e))?;
            base64::engine::general_purpose::STANDARD.encode(pfx)
        }
    });
    let tags = v
        .tags
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok());
    let (head, tail) = secret_bundle_parts(
        &value,
        out.as_str(),
        &secret_attributes(ctx, &v),
        tags.as_ref(),
    )
    .map_err(|e| ApiError::internal(&e))?;
    let entry = CachedSecret {
        epoch,
        name: cert.name.clone(),
        version: v.version.clone(),
        enabled: v.enabled,
        nbf: v.nbf,
        exp: v.exp,
        head,
        tail,
        body: std::sync::OnceLock::new(),
    };
    let body = cached_body(ctx, &entry);
    ctx.state
        .secret_cache
        .put(cache_key, entry, ctx.state.store.epoch());
    Ok(json_bytes(StatusCode::OK, body))
}

/// The SecretBundle of a managed secret, split around the ids, which depend on the request:
/// the bytes `serde_json` writes for `{"value", "contentType", "id", "managed", "kid",
/// "attributes", "tags"?}` (its maps order members by name) are `head ‖ id ‖ ,"kid": ‖ kid ‖
/// tail`, built without a `Value` around the kilobytes of `value` and with the faster string
/// escaping of [`push_json_str`].
fn secret_bundle_parts(
    value: &str,
    content_type: &str,
    attributes: &Value,
    tags: Option<&Value>,
) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), serde_json::Error> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"{\"attributes\":");
    serde_json::to_writer(&mut head, attributes)?;
    head.extend_from_slice(b",\"contentType\":");
    push_json_str(&mut head, content_type);
    head.extend_from_slice(b",\"id\":");
    let mut tail = Zeroizing::new(Vec::with_capacity(value.len() + value.len() / 32 + 256));
    tail.extend_from_slice(b",\"managed\":true");
    if let Some(t) = tags {
        tail.extend_from_slice(b",\"tags\":");
        serde_json::to_writer(&mut *tail, t)?;
    }
    tail.extend_from_slice(b",\"value\":");
    push_json_str(&mut tail, value);
    tail.push(b'}');
    Ok((head, tail))
}

fn secret_item(ctx: &Ctx<'_>, cert: &CertRecord, v: &VersionRecord, versioned: bool) -> Value {
    let id = if versioned {
        format!("{}/secrets/{}/{}", ctx.base, cert.name, v.version)
    } else {
        format!("{}/secrets/{}", ctx.base, cert.name)
    };
    let mut i = json!({"id": id, "attributes": secret_attributes(ctx, v), "contentType": v.content_type, "managed": true});
    if let Some(t) = v
        .tags
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
    {
        i["tags"] = t;
    }
    i
}

/// GET /secrets
pub async fn list(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    list_objects(ctx, "secrets", secret_item).await
}

/// Lists the managed objects (keys or secrets) of completed certificates.
pub async fn list_objects(
    ctx: &Ctx<'_>,
    kind: &str,
    render: fn(&Ctx<'_>, &CertRecord, &VersionRecord, bool) -> Value,
) -> ApiResult<Response<Body>> {
    let max = ctx.max_results()?;
    let after = ctx.skiptoken().map(|t| t.to_ascii_lowercase());
    let rows = ctx
        .state
        .store
        .list_certificates(ctx.vault_id(), false, after, max + 1, false)
        .await?;
    let item = |(c, v): &(CertRecord, VersionRecord)| Some(render(ctx, c, v, false));
    Ok(super::page(
        ctx,
        &format!("/{kind}"),
        &rows,
        max,
        &[],
        item,
        |(c, _)| c.name.to_ascii_lowercase(),
    ))
}

/// Lists the versions of a managed object.
pub async fn list_object_versions(
    ctx: &Ctx<'_>,
    kind: &str,
    seg: &str,
    not_found: fn(&str) -> ApiError,
    render: fn(&Ctx<'_>, &CertRecord, &VersionRecord, bool) -> Value,
) -> ApiResult<Response<Body>> {
    let max = ctx.max_results()?;
    let n = ObjectName::parse(seg).map_err(|_| not_found(seg))?;
    let cert = ctx
        .state
        .store
        .certificate(ctx.vault_id(), &n.key())
        .await?
        .filter(|c| c.deleted_at.is_none())
        .ok_or_else(|| not_found(n.as_str()))?;
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
    let path = format!("/{kind}/{}/versions", cert.name);
    let item = |v: &VersionRecord| (!v.is_pending()).then(|| render(ctx, &cert, v, true));
    Ok(super::page(ctx, &path, &rows, max, &[], item, |v| {
        v.seq.to_string()
    }))
}

/// GET /secrets/{n}/versions
pub async fn versions(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    list_object_versions(ctx, "secrets", seg, secret_not_found, secret_item).await
}

/// PUT, PATCH or DELETE on a managed secret: 403 with Key Vault's inner code
/// `SecretManagedByKeyVault`, which also tells it apart from a permission denial
/// (`ForbiddenByPolicy`).
pub async fn refuse(_ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    Err(ApiError::forbidden(format!(
        "The secret '{}' is managed by its certificate; change or delete the certificate instead.",
        certvault_core::names::truncate(seg, 127)
    ))
    .inner("SecretManagedByKeyVault"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_bundle_is_what_serde_json_writes() {
        let attributes = json!({"enabled": true, "created": 1, "updated": 2, "nbf": 0,
            "exp": 99, "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90});
        let value = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";
        let tags = json!({"env": "prod \"quoted\" \\ é", "z": "", "a": "1"});
        for tags in [None, Some(&tags)] {
            for ct in ["application/x-pem-file", "application/x-pkcs12"] {
                let id =
                    "https://v.certvault.test:8443/secrets/Web-1/0123456789abcdef0123456789abcdef";
                let kid =
                    "https://v.certvault.test:8443/keys/Web-1/0123456789abcdef0123456789abcdef";
                let mut want = json!({
                    "value": value,
                    "contentType": ct,
                    "id": id,
                    "managed": true,
                    "kid": kid,
                    "attributes": attributes,
                });
                if let Some(t) = tags {
                    want["tags"] = t.clone();
                }
                let (head, tail) = secret_bundle_parts(value, ct, &attributes, tags).unwrap();
                let mut got = head;
                push_json_str(&mut got, id);
                got.extend_from_slice(b",\"kid\":");
                push_json_str(&mut got, kid);
                got.extend_from_slice(&tail);
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    serde_json::to_string(&want).unwrap()
                );
            }
        }
    }
}
