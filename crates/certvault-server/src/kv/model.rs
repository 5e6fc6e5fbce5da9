//! JSON rendering of certificates, policies, operations and attributes in the wire shape, and
//! small codecs shared by the handlers.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use certvault_core::policy::Policy;
use certvault_store::{CertRecord, OperationRecord, VersionRecord};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Ctx;
use crate::error::{ApiError, ApiResult};

/// Standard base64 with padding.
pub fn b64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// base64url without padding.
pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Decodes base64url, tolerating padding and the standard alphabet.
pub fn from_b64url(s: &str, field: &str) -> ApiResult<Vec<u8>> {
    let trimmed = s.trim().trim_end_matches('=');
    if !trimmed.bytes().any(|b| b == b'+' || b == b'/') {
        return URL_SAFE_NO_PAD
            .decode(trimmed.as_bytes())
            .map_err(|_| ApiError::bad(format!("'{field}' is not valid base64url.")));
    }
    let cleaned: String = s
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD
        .decode(cleaned.as_bytes())
        .map_err(|_| ApiError::bad(format!("'{field}' is not valid base64url.")))
}

/// Decodes standard base64, tolerating whitespace, missing padding and the URL alphabet.
pub fn from_b64(s: &str, field: &str) -> ApiResult<Vec<u8>> {
    let cleaned: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let trimmed = cleaned.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed.as_bytes())
        .map_err(|_| ApiError::bad(format!("'{field}' is not valid base64.")))
}

/// Attributes a client may send.
#[derive(Debug, Default, Deserialize)]
pub struct AttributesIn {
    /// Enabled flag.
    pub enabled: Option<bool>,
    /// Not before (Unix seconds).
    #[serde(default, deserialize_with = "nullable")]
    pub nbf: Option<Option<i64>>,
    /// Expiry (Unix seconds).
    #[serde(default, deserialize_with = "nullable")]
    pub exp: Option<Option<i64>>,
}

fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Ok(Some(Option::<i64>::deserialize(d)?))
}

/// Validates tags (at most 15; keys up to 512 and values up to 256 characters) and returns
/// them as a JSON string.
pub fn tags_json(tags: &Map<String, Value>) -> ApiResult<String> {
    if tags.len() > 15 {
        return Err(ApiError::bad("At most 15 tags are allowed."));
    }
    for (k, v) in tags {
        let Some(s) = v.as_str() else {
            return Err(ApiError::bad(format!(
                "The value of tag '{}' must be a string.",
                trunc(k)
            )));
        };
        if k.is_empty() || k.chars().count() > 512 || s.chars().count() > 256 {
            return Err(ApiError::bad(
                "Tag names are 1 to 512 characters and values at most 256.",
            ));
        }
    }
    serde_json::to_string(tags).map_err(|e| ApiError::internal(&e))
}

fn trunc(s: &str) -> String {
    certvault_core::names::truncate(s, 60)
}

/// The stored policy of a certificate.
pub fn stored_policy(cert: &CertRecord) -> ApiResult<Policy> {
    serde_json::from_str(&cert.policy).map_err(|e| ApiError::internal(&e))
}

/// `recoveryLevel` for a retention period.
pub fn recovery_level(days: i64) -> &'static str {
    if days >= 90 {
        "Recoverable+Purgeable"
    } else {
        "CustomizedRecoverable+Purgeable"
    }
}

/// Version attributes.
pub fn attributes(ctx: &Ctx<'_>, v: &VersionRecord) -> Value {
    let mut a = json!({
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.updated,
        "recoveryLevel": recovery_level(ctx.vault.vault.recoverable_days),
        "recoverableDays": ctx.vault.vault.recoverable_days,
    });
    if let Some(nbf) = v.nbf {
        a["nbf"] = json!(nbf);
    }
    if let Some(exp) = v.exp {
        a["exp"] = json!(exp);
    }
    a
}

fn tags_value(v: &VersionRecord) -> Option<Value> {
    v.tags.as_deref().and_then(|t| serde_json::from_str(t).ok())
}

/// The policy in wire form.
pub fn policy_json(ctx: &Ctx<'_>, cert: &CertRecord, policy: &Policy) -> Value {
    let mut p = serde_json::to_value(policy).unwrap_or(Value::Null);
    p["id"] = json!(format!("{}/certificates/{}/policy", ctx.base, cert.name));
    p["attributes"] = json!({
        "enabled": policy.attributes.enabled.unwrap_or(true),
        "created": cert.policy_created,
        "updated": cert.policy_updated,
    });
    p
}

/// A CertificateBundle.
pub fn bundle(
    ctx: &Ctx<'_>,
    cert: &CertRecord,
    v: &VersionRecord,
    policy: Option<&Policy>,
    pending_op: bool,
) -> Value {
    let mut b = json!({
        "id": format!("{}/certificates/{}/{}", ctx.base, cert.name, v.version),
        "attributes": attributes(ctx, v),
        "preserveCertOrder": v.preserve_order,
    });
    if let Some(cer) = &v.cer {
        b["kid"] = json!(format!("{}/keys/{}/{}", ctx.base, cert.name, v.version));
        b["sid"] = json!(format!("{}/secrets/{}/{}", ctx.base, cert.name, v.version));
        b["x5t"] = json!(b64url(&certvault_crypto::sha1(cer)));
        b["cer"] = json!(b64(cer));
    }
    if let Some(t) = tags_value(v) {
        b["tags"] = t;
    }
    if let Some(p) = policy {
        b["policy"] = policy_json(ctx, cert, p);
    }
    if pending_op {
        b["pending"] = json!({"id": format!("{}/certificates/{}/pending", ctx.base, cert.name)});
    }
    b
}

/// The deletion members added to a bundle or item.
pub fn add_deleted(ctx: &Ctx<'_>, cert: &CertRecord, b: &mut Value) {
    b["recoveryId"] = json!(format!("{}/deletedcertificates/{}", ctx.base, cert.name));
    if let Some(d) = cert.deleted_at {
        b["deletedDate"] = json!(d);
    }
    if let Some(p) = cert.purge_at {
        b["scheduledPurgeDate"] = json!(p);
    }
}

/// A CertificateItem (list form). `versioned` puts the version in the id.
pub fn item(ctx: &Ctx<'_>, cert: &CertRecord, v: &VersionRecord, versioned: bool) -> Value {
    let id = if versioned {
        format!("{}/certificates/{}/{}", ctx.base, cert.name, v.version)
    } else {
        format!("{}/certificates/{}", ctx.base, cert.name)
    };
    let mut i = json!({"id": id, "attributes": attributes(ctx, v)});
    if let Some(cer) = &v.cer {
        i["x5t"] = json!(b64url(&certvault_crypto::sha1(cer)));
    }
    if let Some(t) = tags_value(v) {
        i["tags"] = t;
    }
    i
}

/// A CertificateOperation.
pub fn operation(ctx: &Ctx<'_>, cert: &CertRecord, op: &OperationRecord) -> Value {
    let mut o = json!({
        "id": format!("{}/certificates/{}/pending", ctx.base, cert.name),
        "issuer": {"name": op.issuer_name},
        "cancellation_requested": op.cancellation_requested,
        "status": op.status,
        "status_details": op.status_details,
        "request_id": op.request_id,
        "preserveCertOrder": false,
    });
    if let Some(csr) = &op.csr {
        o["csr"] = json!(b64(csr));
    }
    if let Some(err) = op
        .error
        .as_deref()
        .and_then(|e| serde_json::from_str::<Value>(e).ok())
    {
        o["error"] = err;
    }
    if op.status == "completed" {
        o["target"] = json!(format!("{}/certificates/{}", ctx.base, cert.name));
    }
    o
}

/// Adds `months` calendar months to a Unix time, clamping the day to the month's length.
pub fn add_months(ts: i64, months: u32) -> i64 {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(ts) else {
        return ts.saturating_add(i64::from(months) * 30 * 86_400);
    };
    let total = i64::from(t.year()) * 12 + i64::from(u8::from(t.month())) - 1 + i64::from(months);
    let year = i32::try_from(total.div_euclid(12)).unwrap_or(9999);
    let month = u8::try_from(total.rem_euclid(12) + 1).unwrap_or(1);
    let Ok(month) = time::Month::try_from(month) else {
        return ts;
    };
    let day = t.day().min(time::util::days_in_month(month, year));
    match time::Date::from_calendar_date(year, month, day) {
        Ok(d) => d.with_time(t.time()).assume_utc().unix_timestamp(),
        Err(_) => ts,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        // 2024-01-31 + 1 month = 2024-02-29
        let jan31 = 1_706_659_200;
        assert_eq!(add_months(jan31, 1), 1_709_164_800);
        // + 12 months = 2025-01-31
        assert_eq!(add_months(jan31, 12), 1_738_281_600);
    }

    #[test]
    fn base64_flavours() {
        assert_eq!(from_b64("+/8=", "x").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(from_b64("-_8", "x").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(from_b64url("-_8", "x").unwrap(), vec![0xfb, 0xff]);
        assert!(from_b64("!!", "x").is_err());
    }
}
