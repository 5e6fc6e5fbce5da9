//! The OpenAPI 3.1 document of the admin API (`/admin/v1/…`) and the operations endpoints.
//!
//! Generated from the route table below: one [`Route`] per admin operation, naming the
//! method, the path template, the audit operation name the router gives it (a test checks each
//! against `audit::target`, so the table cannot name a route the server does not have), the
//! request body and the responses with their JSON schemas. The document is served at
//! `GET /openapi.json` (no token: it describes the API, it holds no data), printed by
//! `certvault openapi`, and committed as `docs/openapi.json`; a test fails when the committed
//! file differs from [`document_text`].

use serde_json::{Map, Value, json};

/// One operation of the document.
struct Route {
    method: &'static str,
    path: &'static str,
    /// The audit operation name (`admin.vaults.create`): also the `operationId`.
    operation: &'static str,
    summary: &'static str,
    tag: &'static str,
    query: Vec<(&'static str, Value, &'static str)>,
    body: Option<Value>,
    /// Success status, description and schema (`None`: no body).
    ok: (u16, &'static str, Option<Value>),
    /// Error statuses besides 400, 401, 403 and 413 (which every admin operation may answer).
    errors: &'static [u16],
}

fn r(s: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{s}")})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn nullable(t: &str) -> Value {
    json!({"type": [t, "null"]})
}

fn array_of(v: Value) -> Value {
    json!({"type": "array", "items": v})
}

fn object(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}

/// A request body object: unknown members are refused by the server (400).
fn body(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

fn schemas() -> Value {
    json!({
        "Error": object(json!({
            "error": object(json!({
                "code": string(),
                "message": string(),
                "innererror": object(json!({"code": string()}), &["code"]),
            }), &["code", "message"]),
        }), &["error"]),
        "Vault": object(json!({
            "name": string(),
            "url": string(),
            "recoverable_days": {"type": "integer"},
            "created": {"type": "integer", "description": "Unix seconds"},
            "deleted_at": {"type": "integer"},
            "purge_at": {"type": "integer"},
        }), &["name", "url", "recoverable_days", "created"]),
        "Principal": object(json!({
            "name": string(),
            "admin": {"type": "boolean"},
            "metrics": {"type": "boolean", "description": "May read /metrics."},
            "disabled": {"type": "boolean"},
            "description": nullable("string"),
            "created": {"type": "integer"},
            "updated": {"type": "integer"},
        }), &["name", "admin", "metrics", "disabled", "description", "created", "updated"]),
        "Token": object(json!({
            "id": {"type": "integer"},
            "label": nullable("string"),
            "created": {"type": "integer"},
            "expires": nullable("integer"),
            "revoked": nullable("integer"),
            "token": {"type": "string", "description": "The bearer token: shown once, when created."},
        }), &["id", "label", "created", "expires", "revoked"]),
        "Permissions": object(json!({
            "certificates": array_of(string()),
            "keys": array_of(string()),
            "secrets": array_of(string()),
        }), &[]),
        "AccessPolicy": object(json!({
            "vault": string(),
            "principal": string(),
            "permissions": r("Permissions"),
            "updated": {"type": "integer"},
        }), &["vault", "principal", "permissions", "updated"]),
        "Clock": object(json!({
            "now": {"type": "integer"},
            "test_clock": {"type": "boolean"},
        }), &["now", "test_clock"]),
        "Channel": object(json!({
            "name": string(),
            "type": {"type": "string", "enum": ["webhook", "slack"]},
            "target": string(),
            "payload_version": {"type": "integer"},
            "enabled": {"type": "boolean"},
            "created": {"type": "integer"},
            "updated": {"type": "integer"},
            "secret": {"type": "string", "description": "The HMAC secret: shown once, when created or changed."},
        }), &["name", "type", "target", "payload_version", "enabled", "created", "updated"]),
        "Delivery": object(json!({
            "id": {"type": "integer"},
            "event_id": string(),
            "event_type": string(),
            "certificate": nullable("string"),
            "channel": string(),
            "status": {"type": "string", "enum": ["pending", "delivered", "dead", "skipped"]},
            "attempts": {"type": "integer"},
            "next_try": nullable("integer"),
            "last_status": nullable("integer"),
            "last_error": nullable("string"),
            "delivered_at": nullable("integer"),
            "created": {"type": "integer"},
            "history": array_of(object(json!({
                "at": {"type": "integer"},
                "status": nullable("integer"),
                "error": nullable("string"),
                "millis": {"type": "integer"},
            }), &["at", "millis"])),
        }), &["id", "event_id", "event_type", "channel", "status", "attempts", "created"]),
        "AuditRecord": object(json!({
            "seq": {"type": "integer"},
            "time": string(),
            "time_ms": {"type": "integer"},
            "request_id": nullable("string"),
            "principal": string(),
            "source": nullable("string"),
            "vault": nullable("string"),
            "object": nullable("string"),
            "operation": string(),
            "status": nullable("integer"),
            "outcome": {"type": "string", "enum": ["ok", "denied", "error"]},
            "detail": {},
            "prev": string(),
            "mac": string(),
        }), &["seq", "time", "time_ms", "principal", "operation", "outcome", "prev", "mac"]),
    })
}

fn routes() -> Vec<Route> {
    let page = || {
        vec![
            (
                "after",
                json!({"type": "integer", "minimum": 0}),
                "Continue after this id (the `next` of the previous page).",
            ),
            (
                "limit",
                json!({"type": "integer", "minimum": 1, "maximum": 1000}),
                "Page size (default 100).",
            ),
        ]
    };
    let audit_query = || {
        vec![
            (
                "from",
                string(),
                "Records at or after this time (RFC 3339 or Unix seconds).",
            ),
            (
                "to",
                string(),
                "Records before this time (RFC 3339 or Unix seconds).",
            ),
            ("principal", string(), "Only this principal."),
            ("vault", string(), "Only this vault."),
            ("object", string(), "Only this object and what is under it."),
            ("operation", string(), "Only this operation."),
            (
                "after",
                json!({"type": "integer", "minimum": 0}),
                "Records after this seq.",
            ),
            (
                "limit",
                json!({"type": "integer", "minimum": 1}),
                "At most this many records (a page is at most 1000).",
            ),
        ]
    };
    let vaults = json!({"type": "object", "properties": {"vaults": array_of(r("Vault"))}, "required": ["vaults"]});
    let paged = |item: Value| {
        object(
            json!({"value": array_of(item), "next": nullable("integer")}),
            &["value", "next"],
        )
    };
    vec![
        // ------------------------------------------------------------- vaults
        Route {
            method: "get",
            path: "/admin/v1/vaults",
            operation: "admin.vaults.list",
            summary: "List the vaults",
            tag: "vaults",
            query: vec![],
            body: None,
            ok: (200, "The live vaults.", Some(vaults.clone())),
            errors: &[],
        },
        Route {
            method: "post",
            path: "/admin/v1/vaults",
            operation: "admin.vaults.create",
            summary: "Create a vault",
            tag: "vaults",
            query: vec![],
            body: Some(body(
                json!({"name": {"type": "string", "description": "A DNS label: 1 to 63 letters, digits and inner hyphens."}, "recoverable_days": {"type": "integer", "minimum": 7, "maximum": 90}}),
                &["name"],
            )),
            ok: (201, "The new vault.", Some(r("Vault"))),
            errors: &[409],
        },
        Route {
            method: "get",
            path: "/admin/v1/vaults/{vault}",
            operation: "admin.vaults.get",
            summary: "Read a vault",
            tag: "vaults",
            query: vec![],
            body: None,
            ok: (200, "The vault.", Some(r("Vault"))),
            errors: &[404],
        },
        Route {
            method: "patch",
            path: "/admin/v1/vaults/{vault}",
            operation: "admin.vaults.update",
            summary: "Change a vault's retention",
            tag: "vaults",
            query: vec![],
            body: Some(body(
                json!({"recoverable_days": {"type": "integer", "minimum": 7, "maximum": 90}}),
                &[],
            )),
            ok: (200, "The vault.", Some(r("Vault"))),
            errors: &[404],
        },
        Route {
            method: "delete",
            path: "/admin/v1/vaults/{vault}",
            operation: "admin.vaults.delete",
            summary: "Soft-delete a vault",
            tag: "vaults",
            query: vec![],
            body: None,
            ok: (
                200,
                "The deleted vault (recoverable until purge_at).",
                Some(r("Vault")),
            ),
            errors: &[404, 409],
        },
        Route {
            method: "get",
            path: "/admin/v1/deleted-vaults",
            operation: "admin.vaults.list-deleted",
            summary: "List soft-deleted vaults",
            tag: "vaults",
            query: vec![],
            body: None,
            ok: (200, "The deleted vaults.", Some(vaults)),
            errors: &[],
        },
        Route {
            method: "post",
            path: "/admin/v1/deleted-vaults/{vault}/recover",
            operation: "admin.vaults.recover",
            summary: "Recover a soft-deleted vault",
            tag: "vaults",
            query: vec![],
            body: None,
            ok: (200, "The recovered vault.", Some(r("Vault"))),
            errors: &[404, 409],
        },
        Route {
            method: "delete",
            path: "/admin/v1/deleted-vaults/{vault}",
            operation: "admin.vaults.purge",
            summary: "Purge a soft-deleted vault and everything in it",
            tag: "vaults",
            query: vec![],
            body: None,
            ok: (204, "Purged.", None),
            errors: &[404],
        },
        // ------------------------------------------------------------- principals and tokens
        Route {
            method: "get",
            path: "/admin/v1/principals",
            operation: "admin.principals.list",
            summary: "List the principals",
            tag: "principals",
            query: vec![],
            body: None,
            ok: (
                200,
                "The principals.",
                Some(object(
                    json!({"principals": array_of(r("Principal"))}),
                    &["principals"],
                )),
            ),
            errors: &[],
        },
        Route {
            method: "post",
            path: "/admin/v1/principals",
            operation: "admin.principals.create",
            summary: "Create a principal (and a first token)",
            tag: "principals",
            query: vec![],
            body: Some(body(
                json!({
                    "name": {"type": "string", "description": "1 to 64 of letters, digits, '-', '_', '.', '@'."},
                    "admin": {"type": "boolean"},
                    "metrics": {"type": "boolean", "description": "The metrics role: may read /metrics."},
                    "description": {"type": "string"},
                    "token": {"type": "boolean", "description": "Issue a first token (default true)."},
                    "token_label": {"type": "string", "maxLength": 200},
                    "token_expires_in_days": {"type": "integer", "minimum": 1, "maximum": 3650},
                }),
                &["name"],
            )),
            ok: (
                201,
                "The principal and its first token.",
                Some(object(
                    json!({"principal": r("Principal"), "token": r("Token")}),
                    &["principal"],
                )),
            ),
            errors: &[409],
        },
        Route {
            method: "get",
            path: "/admin/v1/principals/{principal}",
            operation: "admin.principals.get",
            summary: "Read a principal with its tokens and access policies",
            tag: "principals",
            query: vec![],
            body: None,
            ok: (
                200,
                "The principal.",
                Some(
                    json!({"allOf": [r("Principal"), object(json!({"tokens": array_of(r("Token")), "access_policies": array_of(r("AccessPolicy"))}), &["tokens", "access_policies"])]}),
                ),
            ),
            errors: &[404],
        },
        Route {
            method: "patch",
            path: "/admin/v1/principals/{principal}",
            operation: "admin.principals.update",
            summary: "Change a principal",
            tag: "principals",
            query: vec![],
            body: Some(body(
                json!({"disabled": {"type": "boolean"}, "admin": {"type": "boolean"}, "metrics": {"type": "boolean"}, "description": {"type": "string"}}),
                &[],
            )),
            ok: (200, "The principal.", Some(r("Principal"))),
            errors: &[404, 409],
        },
        Route {
            method: "delete",
            path: "/admin/v1/principals/{principal}",
            operation: "admin.principals.delete",
            summary: "Delete a principal with its tokens and policies",
            tag: "principals",
            query: vec![],
            body: None,
            ok: (200, "The deleted principal.", Some(r("Principal"))),
            errors: &[404, 409],
        },
        Route {
            method: "get",
            path: "/admin/v1/principals/{principal}/tokens",
            operation: "admin.tokens.list",
            summary: "List a principal's tokens",
            tag: "principals",
            query: vec![],
            body: None,
            ok: (
                200,
                "The tokens (never their values).",
                Some(object(json!({"tokens": array_of(r("Token"))}), &["tokens"])),
            ),
            errors: &[404],
        },
        Route {
            method: "post",
            path: "/admin/v1/principals/{principal}/tokens",
            operation: "admin.tokens.create",
            summary: "Issue a token",
            tag: "principals",
            query: vec![],
            body: Some(body(
                json!({"label": {"type": "string", "maxLength": 200}, "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 3650}}),
                &[],
            )),
            ok: (
                201,
                "The token with its value (shown once).",
                Some(r("Token")),
            ),
            errors: &[404],
        },
        Route {
            method: "delete",
            path: "/admin/v1/principals/{principal}/tokens/{id}",
            operation: "admin.tokens.revoke",
            summary: "Revoke a token",
            tag: "principals",
            query: vec![],
            body: None,
            ok: (200, "The revoked token.", Some(r("Token"))),
            errors: &[404],
        },
        // ------------------------------------------------------------- access policies
        Route {
            method: "get",
            path: "/admin/v1/vaults/{vault}/access-policies",
            operation: "admin.access-policies.list",
            summary: "List a vault's access policies",
            tag: "access policies",
            query: vec![],
            body: None,
            ok: (
                200,
                "The policies.",
                Some(object(
                    json!({"access_policies": array_of(r("AccessPolicy"))}),
                    &["access_policies"],
                )),
            ),
            errors: &[404],
        },
        Route {
            method: "get",
            path: "/admin/v1/vaults/{vault}/access-policies/{principal}",
            operation: "admin.access-policies.get",
            summary: "Read a principal's permissions in a vault",
            tag: "access policies",
            query: vec![],
            body: None,
            ok: (200, "The policy.", Some(r("AccessPolicy"))),
            errors: &[404],
        },
        Route {
            method: "put",
            path: "/admin/v1/vaults/{vault}/access-policies/{principal}",
            operation: "admin.access-policies.set",
            summary: "Set a principal's permissions in a vault",
            tag: "access policies",
            query: vec![],
            body: Some(r("Permissions")),
            ok: (
                200,
                "The policy (permission names normalized).",
                Some(r("AccessPolicy")),
            ),
            errors: &[404],
        },
        Route {
            method: "delete",
            path: "/admin/v1/vaults/{vault}/access-policies/{principal}",
            operation: "admin.access-policies.delete",
            summary: "Remove a principal's permissions in a vault",
            tag: "access policies",
            query: vec![],
            body: None,
            ok: (204, "Removed.", None),
            errors: &[404],
        },
        // ------------------------------------------------------------- lifecycle and notifications
        Route {
            method: "get",
            path: "/admin/v1/test-clock",
            operation: "admin.test-clock.get",
            summary: "Read the server's clock",
            tag: "lifecycle",
            query: vec![],
            body: None,
            ok: (200, "The clock.", Some(r("Clock"))),
            errors: &[],
        },
        Route {
            method: "post",
            path: "/admin/v1/test-clock/advance",
            operation: "admin.test-clock.advance",
            summary: "Move a test clock forward (servers started with --test-clock only)",
            tag: "lifecycle",
            query: vec![],
            body: Some(body(
                json!({"seconds": {"type": "integer", "minimum": 0, "maximum": 632_448_000}}),
                &["seconds"],
            )),
            ok: (200, "The clock.", Some(r("Clock"))),
            errors: &[409],
        },
        Route {
            method: "post",
            path: "/admin/v1/vaults/{vault}/certificates/{name}/renew",
            operation: "certificates.renew",
            summary: "Renew a certificate now",
            tag: "lifecycle",
            query: vec![],
            body: Some(body(json!({"rekey": {"type": "boolean"}}), &[])),
            ok: (
                201,
                "The new version.",
                Some(object(
                    json!({"certificate": string(), "version": string(), "status": string(), "csr": nullable("string")}),
                    &["certificate", "version", "status"],
                )),
            ),
            errors: &[404, 409],
        },
        Route {
            method: "get",
            path: "/admin/v1/vaults/{vault}/channels",
            operation: "admin.channels.list",
            summary: "List a vault's notification channels",
            tag: "notifications",
            query: vec![],
            body: None,
            ok: (
                200,
                "The channels.",
                Some(object(json!({"value": array_of(r("Channel"))}), &["value"])),
            ),
            errors: &[404],
        },
        Route {
            method: "post",
            path: "/admin/v1/vaults/{vault}/channels",
            operation: "admin.channels.create",
            summary: "Create a notification channel",
            tag: "notifications",
            query: vec![],
            body: Some(body(
                json!({
                    "name": string(),
                    "type": {"type": "string", "enum": ["webhook", "slack"]},
                    "url": string(),
                    "secret": string(),
                    "payload_version": {"type": "integer"},
                    "enabled": {"type": "boolean"},
                }),
                &["name", "type", "url"],
            )),
            ok: (
                201,
                "The channel with its secret (shown once).",
                Some(r("Channel")),
            ),
            errors: &[404, 409],
        },
        Route {
            method: "get",
            path: "/admin/v1/vaults/{vault}/channels/{channel}",
            operation: "admin.channels.get",
            summary: "Read a channel",
            tag: "notifications",
            query: vec![],
            body: None,
            ok: (200, "The channel.", Some(r("Channel"))),
            errors: &[404],
        },
        Route {
            method: "patch",
            path: "/admin/v1/vaults/{vault}/channels/{channel}",
            operation: "admin.channels.update",
            summary: "Change a channel",
            tag: "notifications",
            query: vec![],
            body: Some(body(
                json!({"url": string(), "secret": string(), "payload_version": {"type": "integer"}, "enabled": {"type": "boolean"}}),
                &[],
            )),
            ok: (200, "The channel.", Some(r("Channel"))),
            errors: &[404],
        },
        Route {
            method: "delete",
            path: "/admin/v1/vaults/{vault}/channels/{channel}",
            operation: "admin.channels.delete",
            summary: "Delete a channel",
            tag: "notifications",
            query: vec![],
            body: None,
            ok: (204, "Deleted.", None),
            errors: &[404],
        },
        Route {
            method: "post",
            path: "/admin/v1/vaults/{vault}/channels/{channel}/test",
            operation: "admin.channels.test",
            summary: "Send a test event to a channel now",
            tag: "notifications",
            query: vec![],
            body: None,
            ok: (
                200,
                "The receiver's answer.",
                Some(object(
                    json!({"delivered": {"type": "boolean"}, "event_id": string(), "status": nullable("integer"), "body": string(), "error": nullable("string"), "millis": {"type": "integer"}}),
                    &["delivered", "event_id", "millis"],
                )),
            ),
            errors: &[404],
        },
        Route {
            method: "get",
            path: "/admin/v1/vaults/{vault}/channels/{channel}/deliveries",
            operation: "admin.deliveries.list",
            summary: "A channel's delivery history",
            tag: "notifications",
            query: {
                let mut q = page();
                q.push((
                    "status",
                    json!({"type": "string", "enum": ["pending", "delivered", "dead", "skipped"]}),
                    "Only deliveries in this status.",
                ));
                q
            },
            body: None,
            ok: (200, "Deliveries, oldest first.", Some(paged(r("Delivery")))),
            errors: &[404],
        },
        Route {
            method: "get",
            path: "/admin/v1/vaults/{vault}/deliveries",
            operation: "admin.deliveries.list",
            summary: "A vault's deliveries (status=dead: the dead letters)",
            tag: "notifications",
            query: {
                let mut q = page();
                q.push((
                    "status",
                    json!({"type": "string", "enum": ["pending", "delivered", "dead", "skipped"]}),
                    "Only deliveries in this status.",
                ));
                q
            },
            body: None,
            ok: (200, "Deliveries, oldest first.", Some(paged(r("Delivery")))),
            errors: &[404],
        },
        Route {
            method: "get",
            path: "/admin/v1/vaults/{vault}/deliveries/{id}",
            operation: "admin.deliveries.get",
            summary: "A delivery with its attempts",
            tag: "notifications",
            query: vec![],
            body: None,
            ok: (200, "The delivery.", Some(r("Delivery"))),
            errors: &[404],
        },
        Route {
            method: "post",
            path: "/admin/v1/vaults/{vault}/deliveries/{id}/replay",
            operation: "admin.deliveries.replay",
            summary: "Send a dead delivery again",
            tag: "notifications",
            query: vec![],
            body: None,
            ok: (200, "The delivery, pending again.", Some(r("Delivery"))),
            errors: &[404, 409],
        },
        Route {
            method: "get",
            path: "/admin/v1/vaults/{vault}/events",
            operation: "admin.events.list",
            summary: "A vault's events",
            tag: "notifications",
            query: {
                let mut q = page();
                q.push(("certificate", string(), "Only this certificate's events."));
                q.push(("type", string(), "Only events of this type."));
                q
            },
            body: None,
            ok: (
                200,
                "Events in the webhook payload shape, with their seq.",
                Some(paged(json!({"type": "object"}))),
            ),
            errors: &[404],
        },
        // ------------------------------------------------------------- audit and master key
        Route {
            method: "get",
            path: "/admin/v1/audit",
            operation: "admin.audit.list",
            summary: "Query the audit trail",
            tag: "audit",
            query: audit_query(),
            body: None,
            ok: (
                200,
                "A page of records by seq.",
                Some(object(
                    json!({"records": array_of(r("AuditRecord")), "next": nullable("integer")}),
                    &["records", "next"],
                )),
            ),
            errors: &[],
        },
        Route {
            method: "get",
            path: "/admin/v1/audit/export",
            operation: "admin.audit.export",
            summary: "Export the audit trail as JSON lines",
            tag: "audit",
            query: audit_query(),
            body: None,
            ok: (200, "One record per line (application/x-ndjson).", None),
            errors: &[],
        },
        Route {
            method: "post",
            path: "/admin/v1/audit/verify",
            operation: "admin.audit.verify",
            summary: "Verify the audit chain",
            tag: "audit",
            query: vec![],
            body: None,
            ok: (
                200,
                "The result: ok, or the first problem.",
                Some(object(
                    json!({
                        "ok": {"type": "boolean"},
                        "records_checked": {"type": "integer"},
                        "problem": {"type": ["object", "null"], "properties": {"seq": {"type": "integer"}, "kind": string(), "detail": string()}},
                        "head": {"type": ["object", "null"], "properties": {"seq": {"type": "integer"}, "mac": string()}},
                    }),
                    &["ok", "records_checked", "problem", "head"],
                )),
            ),
            errors: &[],
        },
        Route {
            method: "post",
            path: "/admin/v1/backup",
            operation: "admin.backup",
            summary: "Take an online backup of the database",
            tag: "backup",
            query: vec![],
            body: None,
            ok: (
                200,
                "The database as one consistent SQLite file (application/vnd.sqlite3); the audit trail is flushed into it first. master.key is not in it.",
                None,
            ),
            errors: &[],
        },
        Route {
            method: "post",
            path: "/admin/v1/master-key/rotate",
            operation: "admin.master-key.rotate",
            summary: "Rotate the master key (re-wrap every vault key)",
            tag: "master key",
            query: vec![],
            body: Some(body(
                json!({"to": {"type": "string", "enum": ["file", "pkcs11"]}}),
                &[],
            )),
            ok: (
                200,
                "Rotated.",
                Some(object(
                    json!({"rotated_at": {"type": "integer"}, "vault_keys_rewrapped": {"type": "integer"}, "master_key": {"type": "string", "enum": ["file", "pkcs11"]}}),
                    &["rotated_at", "vault_keys_rewrapped", "master_key"],
                )),
            ),
            errors: &[],
        },
    ]
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad input (the error names it); nothing changed.",
        401 => "No token, or the token is not accepted.",
        403 => "The caller is not an administrator.",
        404 => "Not found.",
        409 => "Conflict with the current state.",
        413 => "The request body is larger than the limit.",
        _ => "Error.",
    }
}

fn operation(route: &Route) -> Value {
    let mut params: Vec<Value> = Vec::new();
    for seg in route.path.split('/') {
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (schema, desc) = match name {
                "vault" => (string(), "Vault name."),
                "principal" => (string(), "Principal name."),
                "id" => (json!({"type": "integer"}), "Numeric id."),
                "channel" => (string(), "Channel name."),
                "name" => (string(), "Certificate name."),
                _ => (string(), ""),
            };
            params.push(json!({"name": name, "in": "path", "required": true, "description": desc, "schema": schema}));
        }
    }
    for (name, schema, desc) in &route.query {
        params.push(json!({"name": name, "in": "query", "required": false, "description": desc, "schema": schema}));
    }
    let mut responses = Map::new();
    let (code, desc, schema) = &route.ok;
    let mut ok = json!({"description": desc});
    if let Some(s) = schema {
        ok["content"] = json!({"application/json": {"schema": s}});
    } else if route.operation == "admin.audit.export" {
        ok["content"] = json!({"application/x-ndjson": {"schema": {"type": "string"}}});
    } else if route.operation == "admin.backup" {
        ok["content"] = json!({"application/vnd.sqlite3": {"schema": {"type": "string", "contentMediaType": "application/vnd.sqlite3"}}});
    }
    responses.insert(code.to_string(), ok);
    let mut errors: Vec<u16> = vec![400, 401, 403, 413];
    errors.extend_from_slice(route.errors);
    errors.sort_unstable();
    for e in errors {
        responses.insert(
            e.to_string(),
            json!({"description": reason(e), "content": {"application/json": {"schema": r("Error")}}}),
        );
    }
    // One operation name on two paths: the channel's view gets its own operationId.
    let id = if route.path.ends_with("/channels/{channel}/deliveries") {
        "admin.channels.deliveries"
    } else {
        route.operation
    };
    let mut op = json!({
        "operationId": id,
        "summary": route.summary,
        "tags": [route.tag],
        "responses": responses,
    });
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    if let Some(b) = &route.body {
        op["requestBody"] =
            json!({"required": false, "content": {"application/json": {"schema": b}}});
    }
    op
}

/// The document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for route in routes() {
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method] = operation(&route);
    }
    let text = |desc: &str| json!({"description": desc, "content": {"text/plain": {"schema": {"type": "string"}}}});
    paths.insert(
        "/healthz".into(),
        json!({"get": {"operationId": "ops.healthz", "summary": "Liveness: the process answers", "tags": ["operations"], "security": [], "responses": {"200": text("ok")}}}),
    );
    let check = object(
        json!({"ok": {"type": "boolean"}, "detail": string()}),
        &["ok", "detail"],
    );
    let ready = object(
        json!({
            "status": {"type": "string", "enum": ["ready", "not ready"]},
            "checks": object(json!({
                "database": check, "migrations": check, "master_key": check,
                "audit_journal": check, "shutdown": check,
            }), &["database", "migrations", "master_key", "audit_journal", "shutdown"]),
        }),
        &["status", "checks"],
    );
    paths.insert(
        "/readyz".into(),
        json!({"get": {"operationId": "ops.readyz", "summary": "Readiness: database, schema, master key, audit journal", "tags": ["operations"], "security": [], "responses": {
            "200": {"description": "Ready.", "content": {"application/json": {"schema": ready}}},
            "503": {"description": "Not ready: the failed checks say why.", "content": {"application/json": {"schema": ready}}},
        }}}),
    );
    paths.insert(
        "/metrics".into(),
        json!({"get": {"operationId": "ops.metrics", "summary": "Prometheus metrics (administrators and the metrics role)", "tags": ["operations"], "responses": {
            "200": text("Prometheus text exposition format 0.0.4 (docs/metrics.md)."),
            "401": {"description": reason(401), "content": {"application/json": {"schema": r("Error")}}},
            "403": {"description": "The caller has neither the admin nor the metrics role.", "content": {"application/json": {"schema": r("Error")}}},
        }}}),
    );
    paths.insert(
        "/openapi.json".into(),
        json!({"get": {"operationId": "ops.openapi", "summary": "This document", "tags": ["operations"], "security": [], "responses": {
            "200": {"description": "The OpenAPI 3.1 document.", "content": {"application/json": {"schema": {"type": "object"}}}},
        }}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "certvault admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Administration of a certvault server: vaults, principals, tokens, access policies, notification channels and deliveries, the audit trail, the master key; and the operations endpoints. The Key Vault wire API on the same listener is described by Azure's own specifications and is not part of this document. Every admin operation needs an administrator's bearer token.",
        },
        "servers": [{"url": "https://certvault.localhost:8443"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": "vaults"}, {"name": "principals"}, {"name": "access policies"},
            {"name": "lifecycle"}, {"name": "notifications"}, {"name": "audit"},
            {"name": "master key"}, {"name": "backup"}, {"name": "operations"},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A certvault token (cvt_…) of an administrator (or, for /metrics, of a principal with the metrics role)."}},
            "schemas": schemas(),
        },
    })
}

/// The document as committed in `docs/openapi.json`: pretty-printed, with a final newline.
pub fn document_text() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every route of the table is one the server routes: the audit naming (which mirrors the
    /// dispatchers) gives it the operation the table says, never `admin.unknown`.
    #[test]
    fn every_documented_route_is_routed_with_its_operation_name() {
        for route in routes() {
            let path = route
                .path
                .replace("{vault}", "v1x")
                .replace("{principal}", "bob")
                .replace("{id}", "7")
                .replace("{channel}", "hook")
                .replace("{name}", "web");
            let method: http::Method = route.method.to_uppercase().parse().unwrap();
            let uri: http::Uri = path.parse().unwrap();
            let t = crate::audit::target(&method, &uri, &http::HeaderMap::new(), "kv.test");
            assert_eq!(
                t.operation, route.operation,
                "{} {}",
                route.method, route.path
            );
        }
    }

    /// CI fails when the committed document drifts from the code.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == document_text(),
            "docs/openapi.json differs from the document the code generates; regenerate it with\n\
             \n    cargo run -q -p certvault -- openapi > docs/openapi.json\n\n\
             and commit it"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_unique_operation_ids() {
        let d = document();
        assert_eq!(d["openapi"], "3.1.0");
        let mut ids = std::collections::HashSet::new();
        let mut n = 0;
        for (_, item) in d["paths"].as_object().unwrap() {
            for (_, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap().to_owned();
                n += 1;
                assert!(ids.insert(id.clone()), "duplicate {id}");
            }
        }
        assert!(n >= 40, "{n} operations");
    }
}
