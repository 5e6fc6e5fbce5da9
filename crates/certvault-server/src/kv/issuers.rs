//! Issuer objects and vault contacts.

use certvault_core::ObjectName;
use certvault_store::IssuerRecord;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::http::{Body, json as json_response};

fn issuer_not_found(n: &str) -> ApiError {
    ApiError::not_found(
        "CertificateIssuerNotFound",
        format!("Issuer not found: {n}"),
    )
}

fn issuer_aad(vault_id: i64, name_key: &str) -> Vec<u8> {
    format!("certvault/issuer-credentials/v1/{vault_id}/{name_key}").into_bytes()
}

#[derive(Deserialize, Default)]
struct Credentials {
    account_id: Option<String>,
    pwd: Option<String>,
}

#[derive(Deserialize)]
struct IssuerAttributes {
    enabled: Option<bool>,
}

#[derive(Deserialize)]
struct IssuerBody {
    provider: Option<String>,
    credentials: Option<Credentials>,
    org_details: Option<Value>,
    attributes: Option<IssuerAttributes>,
    /// Settings of the `acme` provider (see `crate::acme::config`).
    acme: Option<Value>,
}

fn render(ctx: &Ctx<'_>, rec: &IssuerRecord) -> Value {
    let body: Value = serde_json::from_str(&rec.body).unwrap_or_else(|_| json!({}));
    let mut out = json!({
        "id": format!("{}/certificates/issuers/{}", ctx.base, rec.name),
        "provider": rec.provider,
        "attributes": {"enabled": rec.enabled, "created": rec.created, "updated": rec.updated},
    });
    if let Some(acct) = body.get("account_id").filter(|v| !v.is_null()) {
        out["credentials"] = json!({"account_id": acct});
    }
    if let Some(org) = body.get("org_details").filter(|v| !v.is_null()) {
        out["org_details"] = org.clone();
    }
    if let Some(acme) = body.get("acme").filter(|v| !v.is_null()) {
        // The public part only: secrets live sealed in the row's `secret`.
        out["acme"] = acme.clone();
    }
    out
}

fn validate_org(org: &Value) -> ApiResult<()> {
    if !org.is_object() {
        return Err(ApiError::bad("org_details must be an object."));
    }
    if let Some(admins) = org.get("admin_details") {
        let list = admins
            .as_array()
            .ok_or_else(|| ApiError::bad("admin_details must be an array."))?;
        for a in list {
            if !a.is_object() {
                return Err(ApiError::bad("Each admin_details entry must be an object."));
            }
        }
    }
    Ok(())
}

async fn save(
    ctx: &Ctx<'_>,
    n: &ObjectName,
    body: IssuerBody,
    existing: Option<IssuerRecord>,
) -> ApiResult<Response<Body>> {
    let mut stored: Value = existing
        .as_ref()
        .and_then(|e| serde_json::from_str(&e.body).ok())
        .unwrap_or_else(|| json!({}));
    let provider = match (&body.provider, &existing) {
        (Some(p), _) if !p.trim().is_empty() => p.trim().to_owned(),
        (None, Some(e)) => e.provider.clone(),
        _ => return Err(ApiError::bad("The issuer's provider is required.")),
    };
    if provider.len() > 64 {
        return Err(ApiError::bad("The provider name is too long."));
    }
    let mut secret = existing.as_ref().and_then(|e| e.secret.clone());
    if let Some(c) = &body.credentials {
        if let Some(a) = &c.account_id {
            stored["account_id"] = json!(a);
        }
        if let Some(p) = &c.pwd {
            secret = Some(
                certvault_crypto::seal(
                    &ctx.vault.key,
                    &issuer_aad(ctx.vault_id(), &n.key()),
                    p.as_bytes(),
                )
                .map_err(|e| ApiError::internal(&e))?,
            );
        }
    }
    if let Some(org) = &body.org_details {
        validate_org(org)?;
        stored["org_details"] = org.clone();
    }
    if crate::acme::is_acme(&provider) {
        let (public, sealed) = acme_settings(ctx, n, &body, existing.as_ref())?;
        stored["acme"] = public;
        secret = Some(sealed);
    } else if body.acme.is_some() {
        return Err(ApiError::bad(
            "acme settings are only valid for an issuer with provider 'acme'.",
        ));
    } else if let Some(o) = stored.as_object_mut() {
        // No longer an ACME issuer: its sealed settings go (unless a new pwd replaced them).
        if o.remove("acme").is_some() && body.credentials.as_ref().is_none_or(|c| c.pwd.is_none()) {
            secret = None;
        }
    }
    let enabled = body
        .attributes
        .and_then(|a| a.enabled)
        .or(existing.as_ref().map(|e| e.enabled))
        .unwrap_or(true);
    let rec = IssuerRecord {
        vault_id: ctx.vault_id(),
        name: existing
            .as_ref()
            .map_or_else(|| n.as_str().to_owned(), |e| e.name.clone()),
        provider,
        body: stored.to_string(),
        secret,
        enabled,
        created: existing.as_ref().map_or(ctx.now, |e| e.created),
        updated: ctx.now,
    };
    let rec = ctx.state.store.put_issuer(rec).await?;
    Ok(json_response(StatusCode::OK, &render(ctx, &rec)))
}

/// The `acme` provider's settings merged over the stored ones: (public JSON, sealed secrets).
/// Key Vault `credentials` map to External Account Binding (`account_id` = key id, `pwd` =
/// HMAC key).
fn acme_settings(
    ctx: &Ctx<'_>,
    n: &ObjectName,
    body: &IssuerBody,
    existing: Option<&IssuerRecord>,
) -> ApiResult<(Value, Vec<u8>)> {
    use crate::acme::config;
    let stored = match existing.filter(|e| crate::acme::is_acme(&e.provider)) {
        Some(e) if e.body.contains("\"acme\"") => {
            let config::AcmeIssuer { public, secrets } =
                config::load(&ctx.vault, &n.key(), &e.body, e.secret.as_deref())?;
            Some((public, secrets))
        }
        _ => None,
    };
    let creds = body.credentials.as_ref();
    let (public, secrets) = config::merge(
        stored,
        body.acme.as_ref(),
        creds.and_then(|c| c.account_id.as_deref()),
        creds.and_then(|c| c.pwd.as_deref()),
    )?;
    let sealed = config::seal(&ctx.vault, &n.key(), &secrets)?;
    Ok((
        serde_json::to_value(&public).map_err(|e| ApiError::internal(&e))?,
        sealed,
    ))
}

fn issuer_name(seg: &str) -> ApiResult<ObjectName> {
    let n = ObjectName::parse(seg)?;
    if n.key() == "self" || n.key() == "unknown" {
        return Err(ApiError::bad(format!("'{n}' is a reserved issuer name.")));
    }
    Ok(n)
}

/// PUT /certificates/issuers/{i}
pub async fn set(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = issuer_name(seg)?;
    let body: IssuerBody = ctx.json()?;
    if body.provider.as_deref().is_none_or(|p| p.trim().is_empty()) {
        return Err(ApiError::bad("The issuer's provider is required."));
    }
    let existing = ctx.state.store.issuer(ctx.vault_id(), &n.key()).await?;
    // PUT replaces the issuer: start from nothing but keep its creation time.
    let base = existing.map(|e| IssuerRecord {
        body: "{}".into(),
        secret: None,
        ..e
    });
    save(ctx, &n, body, base).await
}

/// PATCH /certificates/issuers/{i}
pub async fn update(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = issuer_name(seg)?;
    let body: IssuerBody = ctx.json()?;
    let existing = ctx
        .state
        .store
        .issuer(ctx.vault_id(), &n.key())
        .await?
        .ok_or_else(|| issuer_not_found(n.as_str()))?;
    save(ctx, &n, body, Some(existing)).await
}

/// GET /certificates/issuers/{i}
pub async fn get(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = ObjectName::parse(seg).map_err(|_| issuer_not_found(seg))?;
    let rec = ctx
        .state
        .store
        .issuer(ctx.vault_id(), &n.key())
        .await?
        .ok_or_else(|| issuer_not_found(n.as_str()))?;
    Ok(json_response(StatusCode::OK, &render(ctx, &rec)))
}

/// DELETE /certificates/issuers/{i}
pub async fn delete(ctx: &Ctx<'_>, seg: &str) -> ApiResult<Response<Body>> {
    let n = ObjectName::parse(seg).map_err(|_| issuer_not_found(seg))?;
    let rec = ctx
        .state
        .store
        .delete_issuer(ctx.vault_id(), &n.key())
        .await
        .map_err(|e| match e {
            certvault_store::StoreError::NotFound => issuer_not_found(n.as_str()),
            other => ApiError::from(other),
        })?;
    Ok(json_response(StatusCode::OK, &render(ctx, &rec)))
}

/// GET /certificates/issuers
pub async fn list(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let max = ctx.max_results()?;
    let after = ctx.skiptoken().map(|t| t.to_ascii_lowercase());
    let rows = ctx
        .state
        .store
        .list_issuers(ctx.vault_id(), after, max + 1)
        .await?;
    let item = |r: &IssuerRecord| {
        Some(
            json!({"id": format!("{}/certificates/issuers/{}", ctx.base, r.name), "provider": r.provider}),
        )
    };
    Ok(super::page(
        ctx,
        "/certificates/issuers",
        &rows,
        max,
        &[],
        item,
        |r| r.name.to_ascii_lowercase(),
    ))
}

#[derive(Deserialize, serde::Serialize)]
struct Contact {
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phone: Option<String>,
}

#[derive(Deserialize)]
struct ContactsBody {
    contacts: Vec<Contact>,
}

fn contacts_json(ctx: &Ctx<'_>, body: &str) -> Value {
    let list: Value = serde_json::from_str(body).unwrap_or_else(|_| json!([]));
    json!({"id": format!("{}/certificates/contacts", ctx.base), "contacts": list})
}

fn contacts_not_found() -> ApiError {
    ApiError::not_found("ContactsNotFound", "Contacts not found")
}

/// PUT /certificates/contacts
pub async fn set_contacts(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let body: ContactsBody = ctx.json()?;
    if body.contacts.len() > 100 {
        return Err(ApiError::bad("At most 100 contacts are allowed."));
    }
    for c in &body.contacts {
        match &c.email {
            Some(e) if e.contains('@') && e.len() <= 254 && !e.chars().any(char::is_whitespace) => {
            }
            _ => return Err(ApiError::bad("Each contact needs a valid email address.")),
        }
    }
    let stored = serde_json::to_string(&body.contacts).map_err(|e| ApiError::internal(&e))?;
    ctx.state
        .store
        .set_contacts(ctx.vault_id(), stored.clone())
        .await?;
    Ok(json_response(StatusCode::OK, &contacts_json(ctx, &stored)))
}

/// GET /certificates/contacts
pub async fn get_contacts(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let body = ctx
        .state
        .store
        .contacts(ctx.vault_id())
        .await?
        .ok_or_else(contacts_not_found)?;
    Ok(json_response(StatusCode::OK, &contacts_json(ctx, &body)))
}

/// DELETE /certificates/contacts
pub async fn delete_contacts(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let body = ctx
        .state
        .store
        .delete_contacts(ctx.vault_id())
        .await?
        .ok_or_else(contacts_not_found)?;
    Ok(json_response(StatusCode::OK, &contacts_json(ctx, &body)))
}
