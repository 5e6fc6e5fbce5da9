//! Administration pages (`/ui/admin/…`): vaults (list, create, delete), principals (list,
//! create with the new token shown once, disable / enable, delete) and each vault's access
//! policies (view, edit per object type).
//!
//! Every read and change is the admin API request (`admin_access.rs`) run in-process as the
//! signed-in principal ([`Req::admin`]): the same administrator check, validation, error
//! messages and audit record as over HTTP. A non-administrator sees no link to these pages and
//! gets the admin API's 403 (recorded as `denied`) when opening or posting them.

use std::fmt::Write as _;

use bytes::Bytes;
use certvault_core::access::ObjectType;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::html::{csrf_input, esc, notice, time_el, url};
use super::{ApiReply, Req, redirect};
use crate::audit::Who;
use crate::http::Body;

impl Req<'_> {
    /// Runs an admin API request in-process as the signed-in principal: the administrator
    /// check, the handler and the audit record, exactly as over HTTP.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Option<&Value>,
    ) -> ApiReply {
        let host = self.state.http.base_domain.clone();
        let uri = if query.is_empty() {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}{path}?{query}")
        };
        let failed = |m: &str| ApiReply {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            json: json!({"error": {"message": m}}),
        };
        let Ok(req) = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, &host)
            .body(())
        else {
            return failed("The request could not be built.");
        };
        let (parts, ()) = req.into_parts();
        let target = crate::audit::target(
            &parts.method,
            &parts.uri,
            &parts.headers,
            &self.state.http.base_domain,
        );
        let body = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let resp = match crate::admin::dispatch(
            self.state,
            &parts,
            Bytes::from(body),
            self.caller(),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => crate::http::error_response(&e),
        };
        let resp = crate::audit::after_request(
            self.state,
            resp,
            target,
            Who::Principal(self.caller().principal.clone()),
            self.peer,
            self.request_id,
        )
        .await;
        let (parts, body) = resp.into_parts();
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(never) => match never {},
        };
        ApiReply {
            status: parts.status,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// The error page of a failed admin API call (403 for a non-administrator).
    fn admin_error(&self, reply: &ApiReply) -> Response<Body> {
        let status = if reply.status.is_client_error() || reply.status.is_server_error() {
            reply.status
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let msg = if status == StatusCode::FORBIDDEN {
            "Only administrators may use the administration pages. Nothing was changed.".to_owned()
        } else {
            reply.message()
        };
        self.error(status, None, &msg)
    }
}

/// Fixed confirmation messages (nothing from the query string is shown).
fn done_message(code: &str) -> Option<&'static str> {
    Some(match code {
        "vault-created" => "The vault was created.",
        "vault-deleted" => "The vault was deleted. It can be recovered until it is purged.",
        "disabled" => "The principal was disabled.",
        "enabled" => "The principal was enabled.",
        "deleted" => "The principal was deleted.",
        "policy" => "The access policy was saved.",
        "policy-deleted" => "The access policy was removed.",
        _ => return None,
    })
}

fn flash(r: &Req<'_>) -> String {
    r.q("done")
        .and_then(done_message)
        .map(|m| notice("ok", m))
        .unwrap_or_default()
}

fn admin_nav(cur: &str) -> String {
    let mut h = String::from(r#"<nav class="subnav" aria-label="Administration"><ul>"#);
    for (key, label, href) in [
        ("principals", "Principals", "/ui/admin/principals"),
        ("vaults", "Vaults", "/ui/admin/vaults"),
    ] {
        let c = if key == cur {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(h, r#"<li><a href="{href}"{c}>{label}</a></li>"#);
    }
    h.push_str("</ul></nav>");
    h
}

/// Routes `/ui/admin/…`.
pub(crate) async fn route(r: &Req<'_>, method: &Method, rest: &[&str]) -> Response<Body> {
    let get = *method == Method::GET || *method == Method::HEAD;
    match (rest, get) {
        ([], true) => redirect("/ui/admin/principals"),
        (["principals"], true) => principals(r, None, None).await,
        (["principals"], false) => create_principal(r).await,
        (["principals", p, action], false) => principal_action(r, p, action).await,
        (["vaults"], true) => vaults(r, None).await,
        (["vaults"], false) => create_vault(r).await,
        (["vaults", v, "delete"], false) => delete_vault(r, v).await,
        (["vaults", v, "policies"], true) => policies(r, v, None).await,
        (["vaults", v, "policies"], false) => set_policy(r, v).await,
        _ => r.error(StatusCode::NOT_FOUND, None, "There is no such page."),
    }
}

fn p_url(name: &str) -> String {
    format!("/ui/admin/principals/{}", url(name))
}

// ------------------------------------------------------------------------------ principals

/// The principals page; `created` shows a new principal's token once, `error` a refused form.
async fn principals(
    r: &Req<'_>,
    created: Option<(&str, &str)>,
    error: Option<(&str, &str, bool, &str)>,
) -> Response<Body> {
    let reply = r.admin(Method::GET, "/admin/v1/principals", "", None).await;
    if !reply.ok() {
        return r.admin_error(&reply);
    }
    let list = reply.json["principals"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let csrf = csrf_input(r.csrf());
    let mut h = admin_nav("principals");
    h.push_str(&flash(r));
    if let Some((name, token)) = created {
        let _ = write!(
            h,
            r#"<div class="notice ok" role="status"><p>The principal <strong>{n}</strong> was created. Its token is shown <strong>only now</strong>; copy it and keep it safe:</p>
<p><code data-testid="new-token" id="new-token">{t}</code> <button type="button" class="secondary" data-copy="new-token">Copy</button></p></div>"#,
            n = esc(name),
            t = esc(token),
        );
    }
    let (ename, edesc, eadmin, emsg) = error.unwrap_or(("", "", false, ""));
    if !emsg.is_empty() {
        h.push_str(&notice("error", emsg));
    }
    let invalid = if emsg.is_empty() {
        ""
    } else {
        r#" aria-invalid="true" aria-describedby="new-principal-error""#
    };
    let _ = write!(
        h,
        r#"<section aria-labelledby="new-principal"><h2 id="new-principal">New principal</h2>
<form class="stack" method="post" action="/ui/admin/principals">{csrf}
<div class="field"><label for="p-name">Name</label><input id="p-name" name="name" required maxlength="64" value="{ename}"{invalid}><span class="hint" id="new-principal-error">1 to 64 letters, digits, '-', '_', '.', '@'.</span></div>
<div class="field"><label for="p-desc">Description</label><input id="p-desc" name="description" maxlength="200" value="{edesc}"></div>
<div class="field inline"><input type="checkbox" id="p-admin" name="admin" value="1"{eadmin}><label for="p-admin">Administrator (every vault, and these pages)</label></div>
<div><button type="submit">Create principal</button></div></form></section>"#,
        ename = esc(ename),
        edesc = esc(edesc),
        eadmin = if eadmin { " checked" } else { "" },
    );
    h.push_str(
        r#"<section aria-labelledby="principals"><h2 id="principals">Principals</h2><div class="table-wrap"><table data-testid="principals"><thead><tr><th scope="col">Name</th><th scope="col">Role</th><th scope="col">State</th><th scope="col" class="opt">Description</th><th scope="col" class="opt">Created</th><th scope="col">Actions</th></tr></thead><tbody>"#,
    );
    for p in &list {
        let name = p["name"].as_str().unwrap_or("");
        let disabled = p["disabled"].as_bool().unwrap_or(false);
        let role = if p["admin"].as_bool().unwrap_or(false) {
            "Administrator"
        } else if p["metrics"].as_bool().unwrap_or(false) {
            "Metrics"
        } else {
            "Principal"
        };
        let (cls, state) = if disabled {
            ("disabled", "Disabled")
        } else {
            ("valid", "Active")
        };
        let toggle = if disabled { "enable" } else { "disable" };
        let _ = write!(
            h,
            r#"<tr data-principal="{n}"><td>{n}</td><td>{role}</td><td><span class="state {cls}">{state}</span></td><td class="opt">{desc}</td><td class="opt">{created}</td><td class="row-actions">
<form method="post" action="{u}/{toggle}">{csrf}<button type="submit" class="secondary">{tlabel} <span class="visually-hidden">{n}</span></button></form>
<form method="post" action="{u}/delete" data-confirm="Delete the principal {n}? Its tokens stop working and its access policies are removed.">{csrf}<button type="submit" class="danger">Delete <span class="visually-hidden">{n}</span></button></form></td></tr>"#,
            n = esc(name),
            desc = esc(p["description"].as_str().unwrap_or("")),
            created = p["created"].as_i64().map(time_el).unwrap_or_default(),
            u = p_url(name),
            tlabel = if disabled { "Enable" } else { "Disable" },
        );
    }
    h.push_str("</tbody></table></div></section>");
    let mut resp = r.page(None, "admin", "Principals", &h);
    if created.is_some() {
        *resp.status_mut() = StatusCode::CREATED;
    }
    resp
}

async fn create_principal(r: &Req<'_>) -> Response<Body> {
    let name = r.f("name").unwrap_or("").trim().to_owned();
    let description = r.f("description").unwrap_or("").trim().to_owned();
    let admin = r.checked("admin");
    let mut body = json!({"name": name, "admin": admin, "token": true, "token_label": "created in the console"});
    if !description.is_empty() {
        body["description"] = json!(description);
    }
    let reply = r
        .admin(Method::POST, "/admin/v1/principals", "", Some(&body))
        .await;
    if reply.status == StatusCode::FORBIDDEN {
        return r.admin_error(&reply);
    }
    if !reply.ok() {
        let msg = reply.message();
        let mut resp = principals(r, None, Some((&name, &description, admin, &msg))).await;
        if resp.status().is_success() {
            *resp.status_mut() = StatusCode::BAD_REQUEST;
        }
        return resp;
    }
    let created = reply.json["principal"]["name"]
        .as_str()
        .unwrap_or(&name)
        .to_owned();
    let token = reply.json["token"]["token"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    principals(r, Some((&created, &token)), None).await
}

async fn principal_action(r: &Req<'_>, name: &str, action: &str) -> Response<Body> {
    let name = crate::kv::percent_decode(name);
    let path = format!("/admin/v1/principals/{}", url(&name));
    let (reply, done) = match action {
        "disable" | "enable" => (
            r.admin(
                Method::PATCH,
                &path,
                "",
                Some(&json!({"disabled": action == "disable"})),
            )
            .await,
            if action == "disable" {
                "disabled"
            } else {
                "enabled"
            },
        ),
        "delete" => (r.admin(Method::DELETE, &path, "", None).await, "deleted"),
        _ => return r.error(StatusCode::NOT_FOUND, None, "There is no such action."),
    };
    if !reply.ok() {
        return r.admin_error(&reply);
    }
    redirect(&format!("/ui/admin/principals?done={done}"))
}

// ------------------------------------------------------------------------------ vaults

async fn vaults(r: &Req<'_>, error: Option<(&str, &str, &str)>) -> Response<Body> {
    let reply = r.admin(Method::GET, "/admin/v1/vaults", "", None).await;
    if !reply.ok() {
        return r.admin_error(&reply);
    }
    let list = reply.json["vaults"].as_array().cloned().unwrap_or_default();
    let csrf = csrf_input(r.csrf());
    let mut h = admin_nav("vaults");
    h.push_str(&flash(r));
    let (ename, edays, emsg) = error.unwrap_or(("", "90", ""));
    if !emsg.is_empty() {
        h.push_str(&notice("error", emsg));
    }
    let _ = write!(
        h,
        r#"<section aria-labelledby="new-vault"><h2 id="new-vault">New vault</h2>
<form class="stack" method="post" action="/ui/admin/vaults">{csrf}
<div class="field"><label for="v-name">Name</label><input id="v-name" name="name" required maxlength="63" value="{ename}" aria-describedby="v-name-hint"><span class="hint" id="v-name-hint">1 to 63 letters, digits and inner hyphens; it becomes the host name &lt;name&gt;.{domain}.</span></div>
<div class="field"><label for="v-days">Recoverable days</label><input id="v-days" name="recoverable_days" type="number" min="7" max="90" value="{edays}"></div>
<div><button type="submit">Create vault</button></div></form></section>"#,
        ename = esc(ename),
        edays = esc(edays),
        domain = esc(&r.state.http.base_domain),
    );
    h.push_str(
        r#"<section aria-labelledby="vaults"><h2 id="vaults">Vaults</h2><div class="table-wrap"><table data-testid="vaults"><thead><tr><th scope="col">Name</th><th scope="col" class="opt">URL</th><th scope="col">Recoverable days</th><th scope="col" class="opt">Created</th><th scope="col">Actions</th></tr></thead><tbody>"#,
    );
    for v in &list {
        let name = v["name"].as_str().unwrap_or("");
        let u = url(name);
        let _ = write!(
            h,
            r#"<tr data-vault="{n}"><td><a href="/ui/v/{u}/dashboard">{n}</a></td><td class="opt"><code>{vurl}</code></td><td>{days}</td><td class="opt">{created}</td><td class="row-actions"><a class="button secondary" href="/ui/admin/vaults/{u}/policies">Access policies <span class="visually-hidden">of {n}</span></a>
<form method="post" action="/ui/admin/vaults/{u}/delete" data-confirm="Delete the vault {n}? It can be recovered with the admin API until it is purged.">{csrf}<button type="submit" class="danger">Delete <span class="visually-hidden">{n}</span></button></form></td></tr>"#,
            n = esc(name),
            vurl = esc(v["url"].as_str().unwrap_or("")),
            days = v["recoverable_days"].as_i64().unwrap_or(0),
            created = v["created"].as_i64().map(time_el).unwrap_or_default(),
        );
    }
    h.push_str("</tbody></table></div></section>");
    r.page(None, "admin", "Vaults", &h)
}

async fn create_vault(r: &Req<'_>) -> Response<Body> {
    let name = r.f("name").unwrap_or("").trim().to_owned();
    let days_s = r.f("recoverable_days").unwrap_or("90").trim().to_owned();
    let mut body = json!({ "name": name });
    match days_s.parse::<i64>() {
        Ok(d) => body["recoverable_days"] = json!(d),
        Err(_) if days_s.is_empty() => {}
        Err(_) => {
            if !r.caller().admin {
                // Refuse through the API so a forced post is recorded like any other.
                let reply = r
                    .admin(Method::POST, "/admin/v1/vaults", "", Some(&body))
                    .await;
                return r.admin_error(&reply);
            }
            let mut resp = vaults(
                r,
                Some((
                    &name,
                    &days_s,
                    "Recoverable days must be a number from 7 to 90.",
                )),
            )
            .await;
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            return resp;
        }
    }
    let reply = r
        .admin(Method::POST, "/admin/v1/vaults", "", Some(&body))
        .await;
    if reply.status == StatusCode::FORBIDDEN {
        return r.admin_error(&reply);
    }
    if !reply.ok() {
        let msg = reply.message();
        let mut resp = vaults(r, Some((&name, &days_s, &msg))).await;
        if resp.status().is_success() {
            *resp.status_mut() = StatusCode::BAD_REQUEST;
        }
        return resp;
    }
    redirect("/ui/admin/vaults?done=vault-created")
}

async fn delete_vault(r: &Req<'_>, vault: &str) -> Response<Body> {
    let vault = crate::kv::percent_decode(vault);
    let reply = r
        .admin(
            Method::DELETE,
            &format!("/admin/v1/vaults/{}", url(&vault)),
            "",
            None,
        )
        .await;
    if !reply.ok() {
        return r.admin_error(&reply);
    }
    redirect("/ui/admin/vaults?done=vault-deleted")
}

// ------------------------------------------------------------------------------ policies

fn perms_of(v: &Value, object: ObjectType) -> Vec<String> {
    v[object.as_str()]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A vault's access policies, and the edit form (for `?principal=` or a new one).
async fn policies(r: &Req<'_>, vault: &str, error: Option<&str>) -> Response<Body> {
    let vault = crate::kv::percent_decode(vault);
    let reply = r
        .admin(
            Method::GET,
            &format!("/admin/v1/vaults/{}/access-policies", url(&vault)),
            "",
            None,
        )
        .await;
    if !reply.ok() {
        return r.admin_error(&reply);
    }
    let list = reply.json["access_policies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let principals = r.admin(Method::GET, "/admin/v1/principals", "", None).await;
    if !principals.ok() {
        return r.admin_error(&principals);
    }
    let names: Vec<String> = principals.json["principals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let csrf = csrf_input(r.csrf());
    let base = format!("/ui/admin/vaults/{}/policies", url(&vault));
    let mut h = admin_nav("vaults");
    h.push_str(&flash(r));
    if let Some(e) = error {
        h.push_str(&notice("error", e));
    }
    h.push_str(r#"<section aria-labelledby="policies"><h2 id="policies">Access policies</h2>"#);
    if list.is_empty() {
        h.push_str(&notice(
            "info",
            "No access policies in this vault (administrators have every permission).",
        ));
    } else {
        h.push_str(
            r#"<div class="table-wrap"><table data-testid="policies"><thead><tr><th scope="col">Principal</th><th scope="col">Certificates</th><th scope="col">Keys</th><th scope="col">Secrets</th><th scope="col">Actions</th></tr></thead><tbody>"#,
        );
        for p in &list {
            let name = p["principal"].as_str().unwrap_or("");
            let perms = &p["permissions"];
            let show = |o| {
                let l = perms_of(perms, o);
                if l.is_empty() {
                    "—".to_owned()
                } else {
                    esc(&l.join(", "))
                }
            };
            let _ = write!(
                h,
                r#"<tr data-principal="{n}"><td>{n}</td><td>{c}</td><td>{k}</td><td>{s}</td><td><a href="{base}?principal={u}">Edit <span class="visually-hidden">{n}</span></a></td></tr>"#,
                n = esc(name),
                u = url(name),
                c = show(ObjectType::Certificates),
                k = show(ObjectType::Keys),
                s = show(ObjectType::Secrets),
            );
        }
        h.push_str("</tbody></table></div>");
    }
    h.push_str("</section>");
    // The edit form.
    let chosen = r.q("principal").or_else(|| r.f("principal")).unwrap_or("");
    let current = list
        .iter()
        .find(|p| {
            p["principal"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(chosen))
        })
        .map(|p| p["permissions"].clone())
        .unwrap_or(Value::Null);
    let _ = write!(
        h,
        r#"<section aria-labelledby="edit-policy"><h2 id="edit-policy">Set an access policy</h2>
<form class="stack" method="post" action="{base}">{csrf}
<div class="field"><label for="pol-principal">Principal</label><select id="pol-principal" name="principal" required><option value="">Choose…</option>"#
    );
    for n in &names {
        let sel = if n.eq_ignore_ascii_case(chosen) {
            " selected"
        } else {
            ""
        };
        let _ = write!(h, r#"<option value="{0}"{sel}>{0}</option>"#, esc(n));
    }
    h.push_str("</select></div>");
    for object in ObjectType::ALL {
        let have = perms_of(&current, object);
        let o = object.as_str();
        let _ = write!(
            h,
            r#"<fieldset class="perms"><legend>{label}</legend>"#,
            label = match object {
                ObjectType::Certificates => "Certificates",
                ObjectType::Keys => "Keys",
                ObjectType::Secrets => "Secrets",
            }
        );
        for p in object.permission_names() {
            let id = format!("perm-{o}-{p}");
            let checked = if have.iter().any(|x| x.eq_ignore_ascii_case(p)) {
                " checked"
            } else {
                ""
            };
            let _ = write!(
                h,
                r#"<span class="perm"><input type="checkbox" id="{id}" name="{o}" value="{p}"{checked}><label for="{id}">{p}</label></span> "#
            );
        }
        h.push_str("</fieldset>");
    }
    h.push_str(r#"<p class="hint">Saving with nothing ticked removes the principal's policy.</p><div><button type="submit">Save access policy</button></div></form></section>"#);
    r.page(None, "admin", &format!("Access policies · {vault}"), &h)
}

async fn set_policy(r: &Req<'_>, vault: &str) -> Response<Body> {
    let vault_d = crate::kv::percent_decode(vault);
    let principal = r.f("principal").unwrap_or("").trim().to_owned();
    let base = format!("/ui/admin/vaults/{}/policies", url(&vault_d));
    let mut body = json!({});
    let mut any = false;
    for object in ObjectType::ALL {
        let o = object.as_str();
        let list: Vec<&str> = r
            .form
            .iter()
            .filter(|(k, _)| k == o)
            .map(|(_, v)| v.as_str())
            .collect();
        any |= !list.is_empty();
        body[o] = json!(list);
    }
    if principal.is_empty() {
        if !r.caller().admin {
            let reply = r.admin(Method::GET, "/admin/v1/principals", "", None).await;
            return r.admin_error(&reply);
        }
        let mut resp = policies(r, vault, Some("Choose a principal.")).await;
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    }
    let path = format!(
        "/admin/v1/vaults/{}/access-policies/{}",
        url(&vault_d),
        url(&principal)
    );
    let reply = if any {
        r.admin(Method::PUT, &path, "", Some(&body)).await
    } else {
        r.admin(Method::DELETE, &path, "", None).await
    };
    if reply.status == StatusCode::FORBIDDEN {
        return r.admin_error(&reply);
    }
    // Removing a policy that does not exist is not an error.
    let nothing_to_remove = reply.status == StatusCode::NOT_FOUND && !any;
    if !reply.ok() && !nothing_to_remove {
        let msg = reply.message();
        let mut resp = policies(r, vault, Some(&msg)).await;
        if resp.status().is_success() {
            *resp.status_mut() = StatusCode::BAD_REQUEST;
        }
        return resp;
    }
    let done = if any { "policy" } else { "policy-deleted" };
    redirect(&format!("{base}?principal={}&done={done}", url(&principal)))
}
