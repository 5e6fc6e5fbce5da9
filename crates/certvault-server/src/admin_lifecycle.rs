//! Admin API for the lifecycle engine and notifications (under `/admin/v1/`; the caller is
//! already known to be an administrator).
//!
//! | method and path | does |
//! |---|---|
//! | `GET /test-clock`, `POST /test-clock/advance` | read the clock; move a test clock (`{seconds}`) |
//! | `POST /vaults/{v}/certificates/{n}/renew` | renew now (`{rekey?}`) |
//! | `GET`, `POST /vaults/{v}/channels` | list, create (`{name, type: webhook\|slack, url, secret?, payload_version?, enabled?}`) |
//! | `GET`, `PATCH`, `DELETE /vaults/{v}/channels/{c}` | read, change (`{url?, secret?, payload_version?, enabled?}`), delete |
//! | `POST /vaults/{v}/channels/{c}/test` | send a `test` event now and report the receiver's answer |
//! | `GET /vaults/{v}/channels/{c}/deliveries` | the channel's delivery history (`status`, `after`, `limit`) |
//! | `GET /vaults/{v}/deliveries` | deliveries of the vault (`status=dead`: the dead letters) |
//! | `GET /vaults/{v}/deliveries/{id}` | one delivery with its attempts |
//! | `POST /vaults/{v}/deliveries/{id}/replay` | send a dead delivery again |
//! | `GET /vaults/{v}/events` | events (`certificate`, `type`, `after`, `limit`) |

use std::sync::Arc;

use certvault_store::{ChannelRecord, DeliveryFilter, DeliveryRecord, EventFilter, EventRecord};
use http::{Method, Response, StatusCode, request::Parts};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::http::{Body, empty, json as json_response};
use crate::notify::{ChannelSecret, channel_aad, open_channel, send_channel};
use crate::state::{AppState, VaultCtx};

const PREFIX: &str = "/admin/v1/";

/// Routes the lifecycle part of the admin API; `None` when the path is not one of its.
pub async fn dispatch(
    state: &Arc<AppState>,
    parts: &Parts,
    body: &[u8],
    path: &str,
) -> Option<ApiResult<Response<Body>>> {
    let rest = path.strip_prefix(PREFIX)?;
    let segs: Vec<&str> = rest.split('/').collect();
    let a = Admin {
        state,
        body,
        query: parts.uri.query().unwrap_or(""),
    };
    let r = match (segs.as_slice(), &parts.method) {
        (["test-clock"], &Method::GET) => a.clock(),
        (["test-clock", "advance"], &Method::POST) => a.advance(),
        (["vaults", v, "certificates", n, "renew"], &Method::POST) => a.renew(v, n).await,
        (["vaults", v, "channels"], &Method::GET) => a.list_channels(v).await,
        (["vaults", v, "channels"], &Method::POST) => a.create_channel(v).await,
        (["vaults", v, "channels", c], &Method::GET) => a.get_channel(v, c).await,
        (["vaults", v, "channels", c], &Method::PATCH) => a.update_channel(v, c).await,
        (["vaults", v, "channels", c], &Method::DELETE) => a.delete_channel(v, c).await,
        (["vaults", v, "channels", c, "test"], &Method::POST) => a.test_channel(v, c).await,
        (["vaults", v, "channels", c, "deliveries"], &Method::GET) => {
            a.deliveries(v, Some(c)).await
        }
        (["vaults", v, "deliveries"], &Method::GET) => a.deliveries(v, None).await,
        (["vaults", v, "deliveries", id], &Method::GET) => a.delivery(v, id).await,
        (["vaults", v, "deliveries", id, "replay"], &Method::POST) => a.replay(v, id).await,
        (["vaults", v, "events"], &Method::GET) => a.events(v).await,
        _ => return None,
    };
    Some(r)
}

struct Admin<'a> {
    state: &'a Arc<AppState>,
    body: &'a [u8],
    query: &'a str,
}

fn ok(v: &Value) -> ApiResult<Response<Body>> {
    Ok(json_response(StatusCode::OK, v))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("Invalid request body: {e}")))
}

fn channel_not_found(c: &str) -> ApiError {
    ApiError::not_found(
        "ChannelNotFound",
        format!(
            "No notification channel '{}' in this vault.",
            certvault_core::names::truncate(c, 64)
        ),
    )
}

fn valid_name(s: &str) -> ApiResult<()> {
    if !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(ApiError::bad(
            "A channel name is 1 to 64 letters, digits, '-' or '_'.",
        ))
    }
}

/// Checks a receiver URL: https, or http to a loopback host.
fn valid_url(url: &str) -> ApiResult<reqwest::Url> {
    let u = reqwest::Url::parse(url).map_err(|_| ApiError::bad("'url' is not a valid URL."))?;
    let host = u.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match u.scheme() {
        "https" if u.host().is_some() => Ok(u),
        "http" if loopback => Ok(u),
        _ => Err(ApiError::bad(
            "'url' must be an https:// URL (http:// only to a loopback address).",
        )),
    }
}

/// What is shown of a target: a webhook's URL without credentials or query; for Slack only
/// the host (the path is the credential).
fn shown_target(kind: &str, u: &reqwest::Url) -> String {
    let host = u.host_str().unwrap_or("");
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    if kind == "slack" {
        format!("{}://{host}{port}/…", u.scheme())
    } else {
        format!("{}://{host}{port}{}", u.scheme(), u.path())
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    crate::kv::parse_query(Some(query))
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn channel_json(ch: &ChannelRecord) -> Value {
    json!({
        "name": ch.name,
        "type": ch.kind,
        "target": ch.target,
        "payload_version": ch.payload_version,
        "enabled": ch.enabled,
        "created": ch.created,
        "updated": ch.updated,
    })
}

fn delivery_json(d: &DeliveryRecord) -> Value {
    json!({
        "id": d.id,
        "event_id": d.event_uid,
        "event_type": d.event_kind,
        "certificate": d.cert_name,
        "channel": d.channel.clone().unwrap_or_else(|| "email".into()),
        "status": d.status,
        "attempts": d.attempts,
        "next_try": if d.status == "pending" { json!(d.next_try) } else { json!(null) },
        "last_status": d.last_status,
        "last_error": d.last_error,
        "delivered_at": d.delivered_at,
        "created": d.created,
    })
}

fn event_json(state: &AppState, e: &EventRecord) -> Value {
    crate::notify::webhook_payload(state, e, 1)
}

fn new_secret() -> ApiResult<String> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| ApiError::internal(&"random"))?;
    Ok(format!("cvs_{}", hex::encode(b)))
}

impl Admin<'_> {
    async fn vault(&self, v: &str) -> ApiResult<Arc<VaultCtx>> {
        let ctx = self.state.vault(&v.to_ascii_lowercase()).await?;
        if ctx.vault.deleted_at.is_some() {
            return Err(ApiError::not_found(
                "VaultNotFound",
                format!("The vault '{v}' does not exist."),
            ));
        }
        Ok(ctx)
    }

    fn page(&self) -> ApiResult<(i64, i64)> {
        let num = |n: &str, d: i64| -> ApiResult<i64> {
            match query_param(self.query, n) {
                None => Ok(d),
                Some(s) => s
                    .parse::<i64>()
                    .map_err(|_| ApiError::bad(format!("'{n}' must be a number."))),
            }
        };
        Ok((num("after", 0)?, num("limit", 100)?.clamp(1, 1000)))
    }

    fn clock(&self) -> ApiResult<Response<Body>> {
        ok(&json!({"now": self.state.clock.now(), "test_clock": self.state.clock.is_test()}))
    }

    fn advance(&self) -> ApiResult<Response<Body>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Advance {
            seconds: i64,
        }
        let req: Advance = parse(self.body)?;
        if !(0..=20 * 366 * 86_400).contains(&req.seconds) {
            return Err(ApiError::bad("'seconds' must be from 0 to 20 years."));
        }
        let now = self.state.clock.advance(req.seconds).ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                "The server does not run with --test-clock; its clock cannot be moved.",
            )
        })?;
        tracing::warn!(
            seconds = req.seconds,
            now,
            "TEST CLOCK advanced through the admin API"
        );
        self.state.lifecycle.wake_all();
        ok(&json!({"now": now, "test_clock": true}))
    }

    async fn renew(&self, v: &str, n: &str) -> ApiResult<Response<Body>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Renew {
            rekey: Option<bool>,
        }
        let req: Renew = parse(self.body)?;
        let vault = self.vault(v).await?;
        let r =
            crate::lifecycle::renew(self.state, &vault.vault.name, n, req.rekey.unwrap_or(false))
                .await?;
        self.state.lifecycle.wake_all();
        Ok(json_response(
            StatusCode::CREATED,
            &json!({"certificate": n, "version": r.version, "status": r.status, "csr": r.csr}),
        ))
    }

    async fn list_channels(&self, v: &str) -> ApiResult<Response<Body>> {
        let vault = self.vault(v).await?;
        let list = self.state.store.channels(vault.vault.id).await?;
        ok(&json!({"value": list.iter().map(channel_json).collect::<Vec<_>>()}))
    }

    async fn get_channel(&self, v: &str, c: &str) -> ApiResult<Response<Body>> {
        let vault = self.vault(v).await?;
        let ch = self
            .state
            .store
            .channel(vault.vault.id, c)
            .await?
            .ok_or_else(|| channel_not_found(c))?;
        ok(&channel_json(&ch))
    }

    fn seal(&self, vault: &VaultCtx, name: &str, url: &str, secret: &str) -> ApiResult<Vec<u8>> {
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(&ChannelSecret {
                url: url.to_owned(),
                secret: secret.to_owned(),
            })
            .map_err(|e| ApiError::internal(&e))?,
        );
        certvault_crypto::seal_object(
            &vault.key,
            &channel_aad(
                &vault.vault.name.to_ascii_lowercase(),
                &name.to_ascii_lowercase(),
            ),
            &plain,
        )
        .map_err(|e| ApiError::internal(&e))
    }

    async fn create_channel(&self, v: &str) -> ApiResult<Response<Body>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Create {
            name: String,
            #[serde(rename = "type")]
            kind: String,
            url: String,
            secret: Option<String>,
            payload_version: Option<i64>,
            enabled: Option<bool>,
        }
        let req: Create = parse(self.body)?;
        valid_name(&req.name)?;
        if req.kind != "webhook" && req.kind != "slack" {
            return Err(ApiError::bad("'type' must be 'webhook' or 'slack'."));
        }
        let url = valid_url(&req.url)?;
        let pv = req.payload_version.unwrap_or(1);
        if pv != 1 {
            return Err(ApiError::bad("'payload_version' must be 1."));
        }
        let generated = req.secret.is_none();
        let secret = match req.secret {
            Some(s) if s.len() >= 16 && s.len() <= 256 => s,
            Some(_) => return Err(ApiError::bad("'secret' must be 16 to 256 characters.")),
            None => new_secret()?,
        };
        let vault = self.vault(v).await?;
        let now = self.state.clock.now();
        let ch = ChannelRecord {
            id: 0,
            vault_id: vault.vault.id,
            name: req.name.clone(),
            kind: req.kind.clone(),
            target: shown_target(&req.kind, &url),
            sealed: self.seal(&vault, &req.name, url.as_str(), &secret)?,
            payload_version: pv,
            enabled: req.enabled.unwrap_or(true),
            created: now,
            updated: now,
        };
        let ch = self
            .state
            .store
            .create_channel(ch)
            .await
            .map_err(|e| match e {
                certvault_store::StoreError::Conflict(_) => ApiError::conflict(format!(
                    "A channel named '{}' exists in this vault.",
                    req.name
                )),
                other => other.into(),
            })?;
        let mut out = channel_json(&ch);
        if generated {
            // Shown once: only its sealed form is stored.
            out["secret"] = json!(secret);
        }
        Ok(json_response(StatusCode::CREATED, &out))
    }

    async fn update_channel(&self, v: &str, c: &str) -> ApiResult<Response<Body>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Update {
            url: Option<String>,
            secret: Option<String>,
            payload_version: Option<i64>,
            enabled: Option<bool>,
        }
        let req: Update = parse(self.body)?;
        if req.payload_version.is_some_and(|p| p != 1) {
            return Err(ApiError::bad("'payload_version' must be 1."));
        }
        if req
            .secret
            .as_ref()
            .is_some_and(|s| s.len() < 16 || s.len() > 256)
        {
            return Err(ApiError::bad("'secret' must be 16 to 256 characters."));
        }
        let new_url = req.url.as_deref().map(valid_url).transpose()?;
        let vault = self.vault(v).await?;
        let mut ch = self
            .state
            .store
            .channel(vault.vault.id, c)
            .await?
            .ok_or_else(|| channel_not_found(c))?;
        if new_url.is_some() || req.secret.is_some() {
            let old = open_channel(self.state, &vault, &ch).map_err(|e| ApiError::internal(&e))?;
            let url = new_url
                .as_ref()
                .map(|u| u.as_str().to_owned())
                .unwrap_or_else(|| old.url.clone());
            let secret = req.secret.clone().unwrap_or_else(|| old.secret.clone());
            if let Some(u) = &new_url {
                ch.target = shown_target(&ch.kind, u);
            }
            ch.sealed = self.seal(&vault, &ch.name, &url, &secret)?;
        }
        if let Some(p) = req.payload_version {
            ch.payload_version = p;
        }
        if let Some(e) = req.enabled {
            ch.enabled = e;
        }
        ch.updated = self.state.clock.now();
        let ch = self.state.store.update_channel(ch).await?;
        ok(&channel_json(&ch))
    }

    async fn delete_channel(&self, v: &str, c: &str) -> ApiResult<Response<Body>> {
        let vault = self.vault(v).await?;
        let ch = self
            .state
            .store
            .channel(vault.vault.id, c)
            .await?
            .ok_or_else(|| channel_not_found(c))?;
        self.state.store.delete_channel(ch.id).await?;
        Ok(empty(StatusCode::NO_CONTENT))
    }

    async fn test_channel(&self, v: &str, c: &str) -> ApiResult<Response<Body>> {
        let vault = self.vault(v).await?;
        let ch = self
            .state
            .store
            .channel(vault.vault.id, c)
            .await?
            .ok_or_else(|| channel_not_found(c))?;
        let now = self.state.clock.now();
        let ev = EventRecord {
            id: 0,
            uid: uuid::Uuid::new_v4().simple().to_string(),
            kind: "test".into(),
            vault_id: vault.vault.id,
            vault: vault.vault.name.clone(),
            cert_id: None,
            cert_name: None,
            version: None,
            email: false,
            body: json!({"message": "certvault test notification", "channel": ch.name}),
            created: now,
        };
        let started = std::time::Instant::now();
        let a = send_channel(self.state, &ch, &ev).await;
        ok(&json!({
            "delivered": a.ok(),
            "event_id": ev.uid,
            "status": a.status,
            "body": a.body,
            "error": a.error,
            "millis": i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        }))
    }

    async fn deliveries(&self, v: &str, channel: Option<&str>) -> ApiResult<Response<Body>> {
        let vault = self.vault(v).await?;
        let channel_id = match channel {
            Some(c) => Some(
                self.state
                    .store
                    .channel(vault.vault.id, c)
                    .await?
                    .ok_or_else(|| channel_not_found(c))?
                    .id,
            ),
            None => None,
        };
        let status = query_param(self.query, "status");
        if let Some(s) = &status
            && !["pending", "delivered", "dead", "skipped"].contains(&s.as_str())
        {
            return Err(ApiError::bad(
                "'status' must be pending, delivered, dead or skipped.",
            ));
        }
        let (after, limit) = self.page()?;
        let list = self
            .state
            .store
            .deliveries(
                vault.vault.id,
                DeliveryFilter {
                    channel_id,
                    status,
                    after,
                    limit,
                },
            )
            .await?;
        let next = (i64::try_from(list.len()).unwrap_or(0) == limit)
            .then(|| list.last().map(|d| d.id))
            .flatten();
        ok(&json!({"value": list.iter().map(delivery_json).collect::<Vec<_>>(), "next": next}))
    }

    async fn delivery(&self, v: &str, id: &str) -> ApiResult<Response<Body>> {
        let vault = self.vault(v).await?;
        let id: i64 = id
            .parse()
            .map_err(|_| ApiError::bad("A delivery id is a number."))?;
        let d = self
            .state
            .store
            .deliveries(
                vault.vault.id,
                DeliveryFilter {
                    after: id - 1,
                    limit: 1,
                    ..Default::default()
                },
            )
            .await?
            .into_iter()
            .find(|d| d.id == id)
            .ok_or_else(|| ApiError::not_found("DeliveryNotFound", "No such delivery."))?;
        let attempts = self.state.store.delivery_attempts(id).await?;
        let mut out = delivery_json(&d);
        out["history"] = json!(
            attempts
                .iter()
                .map(|(at, s, e, ms)| json!({"at": at, "status": s, "error": e, "millis": ms}))
                .collect::<Vec<_>>()
        );
        ok(&out)
    }

    async fn replay(&self, v: &str, id: &str) -> ApiResult<Response<Body>> {
        let vault = self.vault(v).await?;
        let id: i64 = id
            .parse()
            .map_err(|_| ApiError::bad("A delivery id is a number."))?;
        let d = self
            .state
            .store
            .replay_delivery(vault.vault.id, id, self.state.clock.now())
            .await
            .map_err(|e| match e {
                certvault_store::StoreError::NotFound => {
                    ApiError::not_found("DeliveryNotFound", "No such delivery.")
                }
                certvault_store::StoreError::Conflict(_) => {
                    ApiError::conflict("Only a dead or skipped delivery can be replayed.")
                }
                other => other.into(),
            })?;
        self.state.lifecycle.wake_delivery.notify_one();
        ok(&delivery_json(&d))
    }

    async fn events(&self, v: &str) -> ApiResult<Response<Body>> {
        let vault = self.vault(v).await?;
        let (after, limit) = self.page()?;
        let list = self
            .state
            .store
            .events(
                vault.vault.id,
                EventFilter {
                    cert_name: query_param(self.query, "certificate"),
                    kind: query_param(self.query, "type"),
                    after,
                    limit,
                },
            )
            .await?;
        let next = (i64::try_from(list.len()).unwrap_or(0) == limit)
            .then(|| list.last().map(|e| e.id))
            .flatten();
        ok(&json!({
            "value": list.iter().map(|e| {
                let mut j = event_json(self.state, e);
                j["seq"] = json!(e.id);
                j
            }).collect::<Vec<_>>(),
            "next": next,
        }))
    }
}
