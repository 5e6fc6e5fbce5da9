"""The generated permission matrix of issue 4: every Key Vault wire endpoint and every admin
endpoint the server routes × every permission, over HTTPS against the real binary.

For each Key Vault permission (certificates 16, keys 16, secrets 8) one principal holds only that
permission in the vault `default`; each endpoint is called with each principal's token:

- allowed exactly when the permission is the one the endpoint needs (or implies it: `manageissuers`
  covers the four issuer permissions) — then the answer is the endpoint's success status;
- otherwise 403 in the Key Vault error shape (`error.code == "Forbidden"`, inner `ForbiddenByPolicy`),
  and the affected object (certificate bundle, versions, policy, operation, deleted state, issuer,
  contacts, secret, key, or the admin state) is the same before and after the call.

Extra columns: an admin-role principal (allowed everywhere), a principal with every permission but
no admin role (allowed on the wire, 403 on the admin API), principals with no policy, an empty
policy, a policy in another vault only (403 everywhere), a disabled principal and a revoked token
(401 everywhere). The admin API is checked the same way (admin role only), including the
self-escalation attempts (make myself admin, give myself a policy, mint a token for `admin`).

The permission each endpoint needs (wire_endpoints below) follows Key Vault's REST reference ("This
operation requires the certificates/… permission") and the access-policy permission list; where
the two differ, the entry says which was taken and why.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import itertools
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pytest
import requests
from cryptography import x509

import access_support as acc
import support
from access_support import PERMISSIONS, all_permissions, implied
from support import b64url, der, make_ca, make_leaf, raw_policy, unique

C, K, S = "certificates", "keys", "secrets"
ESCALATION_VAULT = "mx-escalate"

# ----------------------------------------------------------------------------- the callers


@dataclass
class Caller:
    label: str
    principal: str
    token: str
    grants: set = field(default_factory=set)  # {(object type, permission)}
    admin: bool = False
    refused: int = 403  # the answer when not allowed (401: the token itself is not accepted)

    def allows(self, need: Any) -> bool:
        if self.refused == 401:
            return False
        if self.admin:
            return True
        return need != "admin" and need in self.grants


# ----------------------------------------------------------------------------- endpoints


@dataclass
class Endpoint:
    label: str
    method: str
    path: Callable[[dict, Caller], str]
    need: Any  # (object type, permission) or "admin"
    ok: tuple = (200,)  # status when allowed
    body: Optional[Callable[[dict, Caller, int], Any]] = None
    prepare: Optional[Callable[[], dict]] = None
    snapshot: Optional[Callable[[dict, Caller], Any]] = None  # None: read-only
    consumes: bool = False  # an allowed call uses the prepared state up
    managed: Optional[str] = None  # allowed answer is 403 with this inner code (managed object)
    lane: Optional[str] = None  # endpoints sharing state run in one lane (lanes run in parallel)
    per_caller: bool = False  # the snapshot depends on the caller (the caller's own record)

    @property
    def admin(self) -> bool:
        return self.need == "admin"


def _const(s: str) -> Callable[[dict, Caller], str]:
    return lambda ctx, caller: s


def _fmt(s: str) -> Callable[[dict, Caller], str]:
    return lambda ctx, caller: s.format(**ctx)


# ----------------------------------------------------------------------------- the fixture world


class World:
    """The module's server, its fixtures (made with the bootstrap admin token) and the callers."""

    def __init__(self, srv: support.CertvaultServer):
        self.srv = srv
        self.admin = acc.Admin(srv)
        self._local = threading.local()
        self.team = acc.vault_api(srv, "team")
        self.counter = itertools.count(1)
        self.ca_key, self.ca = make_ca("certvault permission-matrix CA")
        self.import_key, self.import_cert = support.self_signed("mx-import.example.test", support.ec_key())
        self.import_pem = support.pem_bundle(self.import_key, self.import_cert).decode()

    @property
    def api(self) -> support.Api:
        """Bootstrap admin token by default (calls pass the caller's token); one session per thread."""
        api = getattr(self._local, "api", None)
        if api is None:
            api = self._local.api = self.srv.api()
        return api

    # --- helpers with the admin token
    def ok(self, r: requests.Response, *status: int) -> dict:
        assert r.status_code in (status or (200,)), f"fixture step failed: {support.describe(r)}"
        return r.json() if r.content else {}

    def create(self, name: str, *, issuer: str = "Self", kty: str = "EC", key_usage: Optional[list] = None,
               content_type: str = "application/x-pkcs12") -> dict:
        pol = raw_policy(f"CN={name}.example.test", issuer=issuer, kty=kty, crv="P-256" if kty == "EC" else None,
                         content_type=content_type)
        if key_usage:
            pol["x509_props"]["key_usage"] = key_usage
        self.ok(self.api.post(f"/certificates/{name}/create", json={"policy": pol}), 202)
        if issuer == "Self":
            op = support.wait_operation_done(self.api, name)
            assert op["status"] == "completed", op
            return self.ok(self.api.get(f"/certificates/{name}/"))
        return self.ok(self.api.get(f"/certificates/{name}/pending"))

    def delete(self, name: str) -> None:
        self.ok(self.api.delete(f"/certificates/{name}"))

    def fresh(self, prefix: str) -> str:
        return unique(prefix)

    # --- snapshots (admin token) of exactly the object a call addresses, so that lanes running
    # in parallel do not see each other's changes
    def _get(self, path: str, **kw: Any) -> tuple:
        r = self.api.get(path, **kw)
        try:
            body = r.json()
        except ValueError:
            body = r.text
        return (path, r.status_code, body)

    def cert_state(self, name: str, *extra: str) -> tuple:
        """Latest bundle (existence, attributes, tags, version), operation, deleted state."""
        paths = (f"/certificates/{name}/", f"/certificates/{name}/pending", f"/deletedcertificates/{name}", *extra)
        return tuple(self._get(p) for p in paths)

    def secret_state(self, name: str) -> tuple:
        # a PFX is encrypted afresh on every read (new salt): compare its PEM form, which is stable
        pem = {"outContentType": "application/x-pem-file"}
        return (self._get(f"/secrets/{name}", params=pem), self._get(f"/certificates/{name}/"))

    def key_state(self, name: str) -> tuple:
        return (self._get(f"/keys/{name}"), self._get(f"/certificates/{name}/"))

    def issuer_state(self, name: str) -> tuple:
        return self._get(f"/certificates/issuers/{name}")

    def contacts_state(self) -> tuple:
        return self._get("/certificates/contacts")

    def vault_state(self, name: str) -> tuple:
        deleted = self._get(acc.ADMIN + "/deleted-vaults", api_version=None)
        mine = [v for v in deleted[2].get("vaults", []) if v.get("name") == name]
        return (self._get(f"{acc.ADMIN}/vaults/{name}", api_version=None), mine)

    def principal_state(self, name: str) -> tuple:
        """The principal with its tokens and access policies."""
        return self._get(f"{acc.ADMIN}/principals/{name}", api_version=None)

    def master_key(self) -> str:
        return hashlib.sha256((self.srv.data_dir / "master.key").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world(certvault_bin, request):
    srv, root = acc.start_server(certvault_bin, "perm-matrix")
    w = World(srv)
    yield w
    acc.stop_server(srv, root, keep=request.session.testsfailed > 0)


@pytest.fixture(scope="module")
def callers(world) -> list[Caller]:
    """One principal per permission (only that permission, in `default`), and the special columns."""
    adm = world.admin
    out: list[Caller] = []
    for obj, name in all_permissions():
        p = f"mx-{obj}-{name}"
        _, tok, _ = adm.principal(p)
        adm.policy("default", p, **{obj: [name]})
        out.append(Caller(f"{obj}/{name}", p, tok, grants=implied(obj, name)))
    everything = set(all_permissions())

    _, tok, _ = adm.principal("mx-admin", admin=True)
    out.append(Caller("admin role", "mx-admin", tok, admin=True))
    _, tok, _ = adm.principal("mx-all")
    adm.grant_all("default", "mx-all")
    out.append(Caller("every permission, no admin role", "mx-all", tok, grants=everything))
    _, tok, _ = adm.principal("mx-none")
    out.append(Caller("no policy", "mx-none", tok))
    _, tok, _ = adm.principal("mx-empty")
    adm.policy("default", "mx-empty")
    out.append(Caller("empty policy", "mx-empty", tok))
    _, tok, _ = adm.principal("mx-team-only")
    adm.grant_all("team", "mx-team-only")
    out.append(Caller("every permission in vault team only", "mx-team-only", tok))
    _, tok, _ = adm.principal("mx-disabled")
    adm.grant_all("default", "mx-disabled")
    adm.update_principal("mx-disabled", disabled=True)
    out.append(Caller("disabled principal", "mx-disabled", tok, grants=everything, refused=401))
    _, tok, tid = adm.principal("mx-revoked")
    adm.grant_all("default", "mx-revoked")
    adm.revoke("mx-revoked", tid)
    out.append(Caller("revoked token", "mx-revoked", tok, grants=everything, refused=401))
    return out


@pytest.fixture(scope="module")
def fixtures(world) -> dict:
    """Module-wide objects the read-only endpoints use."""
    w = world
    w.admin.vault("team")
    w.admin.vault(ESCALATION_VAULT)
    f: dict[str, Any] = {}
    # all six key operations: digitalSignature + keyEncipherment + dataEncipherment
    base = w.create("mx-base", kty="RSA", key_usage=["digitalSignature", "keyEncipherment", "dataEncipherment"])
    f["base"] = "mx-base"
    f["ver"] = base["id"].rstrip("/").split("/")[-1]
    digest = hashlib.sha256(b"certvault permission matrix").digest()
    key_path = f"/keys/mx-base/{f['ver']}"
    sig = w.ok(w.api.post(f"{key_path}/sign", json={"alg": "RS256", "value": b64url(digest)}))["value"]
    ct = w.ok(w.api.post(f"{key_path}/encrypt", json={"alg": "RSA-OAEP", "value": b64url(b"plaintext")}))["value"]
    wrapped = w.ok(w.api.post(f"{key_path}/wrapkey", json={"alg": "RSA-OAEP", "value": b64url(os.urandom(32))}))
    f["key_bodies"] = {
        "sign": {"alg": "RS256", "value": b64url(digest)},
        "verify": {"alg": "RS256", "digest": b64url(digest), "value": sig},
        "encrypt": {"alg": "RSA-OAEP", "value": b64url(b"plaintext")},
        "decrypt": {"alg": "RSA-OAEP", "value": ct},
        "wrapkey": {"alg": "RSA-OAEP", "value": b64url(os.urandom(32))},
        "unwrapkey": {"alg": "RSA-OAEP", "value": wrapped["value"]},
    }
    w.create("mx-upd")
    f["upd"] = "mx-upd"
    f["upd_ver"] = w.ok(w.api.get("/certificates/mx-upd/"))["id"].rstrip("/").split("/")[-1]
    w.create("mx-pending", issuer="Unknown")
    w.create("mx-deleted")
    w.delete("mx-deleted")
    w.ok(w.api.put("/certificates/issuers/mx-issuer", json={"provider": "Test"}))
    return f


# ----------------------------------------------------------------------------- the endpoint table


def wire_endpoints(w: World, f: dict) -> list[Endpoint]:
    """Every Key Vault route of kv/mod.rs, with the permission Key Vault documents for it."""
    api = w.api

    def created(prefix: str, **kw: Any) -> Callable[[], dict]:
        def prep() -> dict:
            n = w.fresh(prefix)
            w.create(n, **kw)
            return {"n": n}
        return prep

    def deleted(prefix: str) -> Callable[[], dict]:
        def prep() -> dict:
            n = w.fresh(prefix)
            w.create(n)
            w.delete(n)
            return {"n": n}
        return prep

    def pending(prefix: str) -> Callable[[], dict]:
        return created(prefix, issuer="Unknown")

    def merge_prep() -> dict:
        n = w.fresh("mx-merge")
        op = w.create(n, issuer="Unknown")
        csr = x509.load_der_x509_csr(base64.b64decode(op["csr"]))
        leaf = make_leaf(w.ca_key, w.ca, csr.subject, csr.public_key())
        return {"n": n, "x5c": [base64.b64encode(der(leaf)).decode(), base64.b64encode(der(w.ca)).decode()]}

    def restore_prep() -> dict:
        n = w.fresh("mx-restore")
        w.create(n)
        blob = w.ok(api.post(f"/certificates/{n}/backup"))["value"]
        w.delete(n)
        w.ok(api.delete(f"/deletedcertificates/{n}"), 204)
        return {"n": n, "blob": blob}

    def issuer_prep() -> dict:
        n = w.fresh("mx-iss")
        w.ok(api.put(f"/certificates/issuers/{n}", json={"provider": "Test", "org_details": {"id": "before"}}))
        return {"n": n}

    def contacts_prep() -> dict:
        w.ok(api.put("/certificates/contacts", json={"contacts": [{"email": "before@example.test"}]}))
        return {}

    base = {"n": f["base"], "v": f["ver"]}
    upd = {"n": f["upd"], "v": f["upd_ver"]}
    cert = lambda ctx, caller: w.cert_state(ctx["n"])  # noqa: E731
    cert_policy = lambda ctx, caller: w.cert_state(ctx["n"], f"/certificates/{ctx['n']}/policy")  # noqa: E731
    secret = lambda ctx, caller: w.secret_state(ctx["n"])  # noqa: E731
    key = lambda ctx, caller: w.key_state(ctx["n"])  # noqa: E731
    issuer = lambda ctx, caller: w.issuer_state(ctx["n"])  # noqa: E731
    contacts = lambda ctx, caller: w.contacts_state()  # noqa: E731
    new_name = lambda prefix: (lambda: {"n": w.fresh(prefix)})  # noqa: E731
    fixed = lambda ctx: (lambda: dict(ctx))  # noqa: E731
    ec_policy = lambda n: raw_policy(f"CN={n}.example.test", kty="EC", crv="P-256")  # noqa: E731
    tags = lambda ctx, caller, i: {"tags": {"matrix": f"call-{i}"}}  # noqa: E731

    eps = [
        # ---- certificates
        Endpoint("GET /certificates (list)", "GET", _const("/certificates"), (C, "list")),
        Endpoint("GET /certificates/{n}/ (latest)", "GET", _fmt("/certificates/{n}/"), (C, "get"), prepare=fixed(base)),
        Endpoint("GET /certificates/{n}/{v}", "GET", _fmt("/certificates/{n}/{v}"), (C, "get"), prepare=fixed(base)),
        Endpoint("PATCH /certificates/{n}/ (update latest)", "PATCH", _fmt("/certificates/{n}/"), (C, "update"),
                 body=tags, prepare=fixed(upd), snapshot=cert, lane="upd"),
        Endpoint("PATCH /certificates/{n}/{v} (update version)", "PATCH", _fmt("/certificates/{n}/{v}"),
                 (C, "update"), body=tags, prepare=fixed(upd), snapshot=cert, lane="upd"),
        Endpoint("DELETE /certificates/{n}", "DELETE", _fmt("/certificates/{n}"), (C, "delete"),
                 prepare=created("mx-del"), snapshot=cert, consumes=True),
        Endpoint("GET /certificates/{n}/versions", "GET", _fmt("/certificates/{n}/versions"), (C, "list"),
                 prepare=fixed(base)),
        Endpoint("GET /certificates/{n}/policy", "GET", _fmt("/certificates/{n}/policy"), (C, "get"),
                 prepare=fixed(base)),
        Endpoint("PATCH /certificates/{n}/policy", "PATCH", _fmt("/certificates/{n}/policy"), (C, "update"),
                 body=lambda ctx, caller, i: {"x509_props": {"subject": f"CN=matrix-{i}.example.test"}},
                 prepare=fixed(upd), snapshot=cert_policy, lane="upd"),
        Endpoint("GET /certificates/{n}/pending", "GET", _fmt("/certificates/{n}/pending"), (C, "get"),
                 prepare=fixed({"n": "mx-pending"})),
        Endpoint("PATCH /certificates/{n}/pending (cancel)", "PATCH", _fmt("/certificates/{n}/pending"),
                 (C, "update"), body=lambda ctx, caller, i: {"cancellation_requested": True},
                 prepare=pending("mx-cancel"), snapshot=cert, consumes=True),
        # Key Vault: DeleteCertificateOperation "requires the certificates/update permission".
        Endpoint("DELETE /certificates/{n}/pending", "DELETE", _fmt("/certificates/{n}/pending"), (C, "update"),
                 prepare=pending("mx-delop"), snapshot=cert, consumes=True),
        Endpoint("POST /certificates/{n}/pending/merge", "POST", _fmt("/certificates/{n}/pending/merge"),
                 (C, "create"), ok=(201,), body=lambda ctx, caller, i: {"x5c": ctx["x5c"]},
                 prepare=merge_prep, snapshot=cert, consumes=True),
        Endpoint("POST /certificates/{n}/create", "POST", _fmt("/certificates/{n}/create"), (C, "create"),
                 ok=(202,), body=lambda ctx, caller, i: {"policy": ec_policy(ctx["n"])},
                 prepare=new_name("mx-create"), snapshot=cert, consumes=True),
        Endpoint("POST /certificates/{n}/import", "POST", _fmt("/certificates/{n}/import"), (C, "import"),
                 body=lambda ctx, caller, i: {"value": w.import_pem,
                                              "policy": {"secret_props": {"contentType": "application/x-pem-file"}}},
                 prepare=new_name("mx-import"), snapshot=cert, consumes=True),
        Endpoint("POST /certificates/{n}/backup", "POST", _fmt("/certificates/{n}/backup"), (C, "backup"),
                 prepare=fixed(base)),
        Endpoint("POST /certificates/restore", "POST", _const("/certificates/restore"), (C, "restore"),
                 body=lambda ctx, caller, i: {"value": ctx["blob"]}, prepare=restore_prep, snapshot=cert,
                 consumes=True),
        # The REST reference names getissuers for the list as well; Key Vault's access policies have
        # listissuers ("List a certificate's authorities/issuers") for exactly this.
        Endpoint("GET /certificates/issuers", "GET", _const("/certificates/issuers"), (C, "listissuers")),
        Endpoint("GET /certificates/issuers/{n}", "GET", _fmt("/certificates/issuers/{n}"), (C, "getissuers"),
                 prepare=fixed({"n": "mx-issuer"})),
        Endpoint("PUT /certificates/issuers/{n}", "PUT", _fmt("/certificates/issuers/{n}"), (C, "setissuers"),
                 body=lambda ctx, caller, i: {"provider": "Test", "org_details": {"id": f"set-{i}"}},
                 prepare=issuer_prep, snapshot=issuer),
        Endpoint("PATCH /certificates/issuers/{n}", "PATCH", _fmt("/certificates/issuers/{n}"), (C, "setissuers"),
                 body=lambda ctx, caller, i: {"org_details": {"id": f"update-{i}"}},
                 prepare=issuer_prep, snapshot=issuer),
        Endpoint("DELETE /certificates/issuers/{n}", "DELETE", _fmt("/certificates/issuers/{n}"),
                 (C, "deleteissuers"), prepare=issuer_prep, snapshot=issuer, consumes=True),
        Endpoint("GET /certificates/contacts", "GET", _const("/certificates/contacts"), (C, "managecontacts"),
                 prepare=contacts_prep, lane="contacts"),
        Endpoint("PUT /certificates/contacts", "PUT", _const("/certificates/contacts"), (C, "managecontacts"),
                 body=lambda ctx, caller, i: {"contacts": [{"email": f"call-{i}@example.test"}]},
                 prepare=contacts_prep, snapshot=contacts, lane="contacts"),
        Endpoint("DELETE /certificates/contacts", "DELETE", _const("/certificates/contacts"), (C, "managecontacts"),
                 prepare=contacts_prep, snapshot=contacts, consumes=True, lane="contacts"),
        # The REST reference says "certificates/get/list"; listing is list.
        Endpoint("GET /deletedcertificates (list)", "GET", _const("/deletedcertificates"), (C, "list")),
        Endpoint("GET /deletedcertificates/{n}", "GET", _fmt("/deletedcertificates/{n}"), (C, "get"),
                 prepare=fixed({"n": "mx-deleted"})),
        Endpoint("POST /deletedcertificates/{n}/recover", "POST", _fmt("/deletedcertificates/{n}/recover"),
                 (C, "recover"), prepare=deleted("mx-recover"), snapshot=cert, consumes=True),
        Endpoint("DELETE /deletedcertificates/{n} (purge)", "DELETE", _fmt("/deletedcertificates/{n}"),
                 (C, "purge"), ok=(204,), prepare=deleted("mx-purge"), snapshot=cert, consumes=True),
        # ---- secrets (the managed secret of each certificate version)
        Endpoint("GET /secrets/{n}", "GET", _fmt("/secrets/{n}"), (S, "get"), prepare=fixed(base)),
        Endpoint("GET /secrets/{n}/{v}", "GET", _fmt("/secrets/{n}/{v}"), (S, "get"), prepare=fixed(base)),
        Endpoint("GET /secrets (list)", "GET", _const("/secrets"), (S, "list")),
        Endpoint("GET /secrets/{n}/versions", "GET", _fmt("/secrets/{n}/versions"), (S, "list"), prepare=fixed(base)),
        Endpoint("PUT /secrets/{n} (set)", "PUT", _fmt("/secrets/{n}"), (S, "set"),
                 body=lambda ctx, caller, i: {"value": f"overwrite-{i}"}, prepare=fixed(base), snapshot=secret,
                 managed="SecretManagedByKeyVault"),
        Endpoint("PATCH /secrets/{n}/{v} (update)", "PATCH", _fmt("/secrets/{n}/{v}"), (S, "set"),
                 body=lambda ctx, caller, i: {"attributes": {"enabled": False}, "tags": {"matrix": f"call-{i}"}},
                 prepare=fixed(base), snapshot=secret, managed="SecretManagedByKeyVault"),
        Endpoint("DELETE /secrets/{n}", "DELETE", _fmt("/secrets/{n}"), (S, "delete"), prepare=fixed(base),
                 snapshot=secret, managed="SecretManagedByKeyVault"),
        # ---- keys (the managed key of each certificate version)
        Endpoint("GET /keys/{n}", "GET", _fmt("/keys/{n}"), (K, "get"), prepare=fixed(base)),
        Endpoint("GET /keys/{n}/{v}", "GET", _fmt("/keys/{n}/{v}"), (K, "get"), prepare=fixed(base)),
        Endpoint("GET /keys (list)", "GET", _const("/keys"), (K, "list")),
        Endpoint("GET /keys/{n}/versions", "GET", _fmt("/keys/{n}/versions"), (K, "list"), prepare=fixed(base)),
        Endpoint("DELETE /keys/{n}", "DELETE", _fmt("/keys/{n}"), (K, "delete"), prepare=fixed(base),
                 snapshot=key, managed="KeyManagedByKeyVault"),
        Endpoint("PATCH /keys/{n}/{v} (update)", "PATCH", _fmt("/keys/{n}/{v}"), (K, "update"),
                 body=lambda ctx, caller, i: {"attributes": {"enabled": False}, "tags": {"matrix": f"call-{i}"}},
                 prepare=fixed(base), snapshot=key, managed="KeyManagedByKeyVault"),
    ]
    for word, perm in [("sign", "sign"), ("verify", "verify"), ("encrypt", "encrypt"), ("decrypt", "decrypt"),
                       ("wrapkey", "wrapKey"), ("unwrapkey", "unwrapKey")]:
        eps.append(Endpoint(f"POST /keys/{{n}}/{{v}}/{word}", "POST", _fmt(f"/keys/{{n}}/{{v}}/{word}"), (K, perm),
                            body=(lambda w_: lambda ctx, caller, i: f["key_bodies"][w_])(word), prepare=fixed(base)))
    return eps


def admin_endpoints(w: World) -> list[Endpoint]:
    """Every route of the admin API (admin.rs, admin_access.rs); all need the admin role."""
    adm = w.admin

    def vault_prep(deleted: bool = False) -> Callable[[], dict]:
        def prep() -> dict:
            v = w.fresh("mxv")
            adm.vault(v)
            if deleted:
                adm.call("DELETE", f"/vaults/{v}", 200)
            return {"v": v}
        return prep

    def victim_prep(policy: bool = False) -> dict:
        p = w.fresh("mx-victim")
        _, _, tid = adm.principal(p)
        if policy:
            adm.policy("default", p, certificates=["get"])
        return {"principal": p, "tid": tid}

    vault = lambda ctx, caller: w.vault_state(ctx["v"])  # noqa: E731
    victim = lambda ctx, caller: w.principal_state(ctx["principal"])  # noqa: E731
    me = lambda ctx, caller: w.principal_state(caller.principal)  # noqa: E731
    fresh_vault = lambda: {"v": w.fresh("mxv")}  # noqa: E731
    A = "admin"
    return [
        Endpoint("GET /admin/v1/vaults", "GET", _const("/admin/v1/vaults"), A),
        Endpoint("POST /admin/v1/vaults", "POST", _const("/admin/v1/vaults"), A, ok=(201,),
                 body=lambda ctx, caller, i: {"name": ctx["v"]}, prepare=fresh_vault, snapshot=vault, consumes=True),
        Endpoint("GET /admin/v1/vaults/{v}", "GET", _const("/admin/v1/vaults/team"), A),
        Endpoint("PATCH /admin/v1/vaults/{v}", "PATCH", _fmt("/admin/v1/vaults/{v}"), A,
                 body=lambda ctx, caller, i: {"recoverable_days": 7 + i % 83}, prepare=vault_prep(), snapshot=vault),
        Endpoint("DELETE /admin/v1/vaults/{v}", "DELETE", _fmt("/admin/v1/vaults/{v}"), A, prepare=vault_prep(),
                 snapshot=vault, consumes=True),
        Endpoint("GET /admin/v1/deleted-vaults", "GET", _const("/admin/v1/deleted-vaults"), A),
        Endpoint("POST /admin/v1/deleted-vaults/{v}/recover", "POST", _fmt("/admin/v1/deleted-vaults/{v}/recover"), A,
                 prepare=vault_prep(deleted=True), snapshot=vault, consumes=True),
        Endpoint("DELETE /admin/v1/deleted-vaults/{v} (purge)", "DELETE", _fmt("/admin/v1/deleted-vaults/{v}"), A,
                 ok=(204,), prepare=vault_prep(deleted=True), snapshot=vault, consumes=True),
        Endpoint("GET /admin/v1/principals", "GET", _const("/admin/v1/principals"), A),
        # escalation: create an administrator (and receive its token)
        Endpoint("POST /admin/v1/principals (admin: true)", "POST", _const("/admin/v1/principals"), A, ok=(201,),
                 body=lambda ctx, caller, i: {"name": ctx["principal"], "admin": True},
                 prepare=lambda: {"principal": w.fresh("mx-new")}, snapshot=victim, consumes=True),
        Endpoint("GET /admin/v1/principals/{p}", "GET", _const("/admin/v1/principals/mx-none"), A),
        # escalation: make myself an administrator
        Endpoint("PATCH /admin/v1/principals/{me} (admin: true)", "PATCH",
                 lambda ctx, caller: f"/admin/v1/principals/{caller.principal}", A,
                 body=lambda ctx, caller, i: {"admin": True, "description": f"escalation {i}"}, snapshot=me,
                 per_caller=True),
        Endpoint("DELETE /admin/v1/principals/{p}", "DELETE", _fmt("/admin/v1/principals/{principal}"), A,
                 prepare=victim_prep, snapshot=victim, consumes=True),
        Endpoint("GET /admin/v1/principals/{p}/tokens", "GET", _const("/admin/v1/principals/mx-none/tokens"), A),
        # escalation: mint a token of the bootstrap administrator
        Endpoint("POST /admin/v1/principals/admin/tokens", "POST", _const("/admin/v1/principals/admin/tokens"), A,
                 ok=(201,), body=lambda ctx, caller, i: {"label": f"matrix {i}"},
                 snapshot=lambda ctx, caller: w.principal_state("admin")),
        Endpoint("DELETE /admin/v1/principals/{p}/tokens/{id}", "DELETE",
                 _fmt("/admin/v1/principals/{principal}/tokens/{tid}"), A, prepare=victim_prep, snapshot=victim,
                 consumes=True),
        Endpoint("GET /admin/v1/vaults/{v}/access-policies", "GET",
                 _const("/admin/v1/vaults/default/access-policies"), A),
        Endpoint("GET /admin/v1/vaults/{v}/access-policies/{p}", "GET",
                 _const("/admin/v1/vaults/default/access-policies/mx-certificates-get"), A),
        # escalation: give myself every permission in a vault
        Endpoint("PUT /admin/v1/vaults/{v}/access-policies/{me}", "PUT",
                 lambda ctx, caller: f"/admin/v1/vaults/{ESCALATION_VAULT}/access-policies/{caller.principal}", A,
                 body=lambda ctx, caller, i: {"certificates": ["all"], "keys": ["all"], "secrets": ["all"]},
                 snapshot=me, per_caller=True),
        Endpoint("DELETE /admin/v1/vaults/{v}/access-policies/{p}", "DELETE",
                 _fmt("/admin/v1/vaults/default/access-policies/{principal}"), A, ok=(204,),
                 prepare=lambda: victim_prep(policy=True), snapshot=victim, consumes=True),
        Endpoint("POST /admin/v1/master-key/rotate", "POST", _const("/admin/v1/master-key/rotate"), A,
                 snapshot=lambda ctx, caller: w.master_key()),
        # an unknown admin path: refused before routing, so it does not tell what exists
        Endpoint("GET /admin/v1/no-such-thing", "GET", _const("/admin/v1/no-such-thing"), A, ok=(404,)),
    ]


# ----------------------------------------------------------------------------- the runner


@dataclass
class Tally:
    cells: int = 0
    allowed: int = 0
    refused_403: int = 0
    refused_401: int = 0
    snapshots: int = 0
    failures: list = field(default_factory=list)

    def add(self, other: "Tally") -> None:
        self.cells += other.cells
        self.allowed += other.allowed
        self.refused_403 += other.refused_403
        self.refused_401 += other.refused_401
        self.snapshots += other.snapshots
        self.failures += other.failures


def _error_code(r: requests.Response) -> tuple[Optional[str], Optional[str]]:
    try:
        err = r.json().get("error") or {}
    except (ValueError, AttributeError):
        return None, None
    inner = err.get("innererror") or {}
    return err.get("code"), inner.get("code") if isinstance(inner, dict) else None


def _diff(before: Any, after: Any) -> str:
    a = json.dumps(before, indent=1, sort_keys=True, default=str).splitlines()
    b = json.dumps(after, indent=1, sort_keys=True, default=str).splitlines()
    lines = list(difflib.unified_diff(a, b, "before", "after", n=1, lineterm=""))[:20]
    return "\n".join(line if len(line) <= 160 else line[:160] + "..." for line in lines)


def check_cell(ep: Endpoint, caller: Caller, r: requests.Response, allowed: bool) -> Optional[str]:
    """None when the answer is right, else what is wrong."""
    code, inner = _error_code(r)
    if allowed:
        if ep.managed is not None:
            if r.status_code == 403 and code == "Forbidden" and inner == ep.managed:
                return None
            return f"allowed: expected 403 {ep.managed} (managed object), got {r.status_code} {r.text[:200]!r}"
        if r.status_code in ep.ok:
            return None
        return f"allowed: expected {ep.ok}, got {r.status_code} {r.text[:200]!r}"
    if caller.refused == 401:
        if r.status_code == 401 and code == "Unauthorized" and r.headers.get("WWW-Authenticate"):
            return None
        return f"expected 401 with a challenge, got {r.status_code} {r.text[:200]!r}"
    if r.status_code == 403 and code == "Forbidden" and inner == "ForbiddenByPolicy":
        return None
    return f"expected 403 Forbidden/ForbiddenByPolicy, got {r.status_code} {r.text[:200]!r}"


def run_lane(w: World, endpoints: list[Endpoint], callers: list[Caller]) -> Tally:
    """The endpoints of one lane, in order; each endpoint with every caller, refused ones first."""
    tally = Tally()
    for ep in endpoints:
        order = sorted(callers, key=lambda c: c.allows(ep.need))
        ctx: Optional[dict] = None
        last: Any = None  # the state after the previous refused call (unchanged, so still current)
        for caller in order:
            if ctx is None:
                ctx = ep.prepare() if ep.prepare else {}
                last = None
            allowed = caller.allows(ep.need)
            before = None
            if ep.snapshot and not allowed:
                before = last if last is not None and not ep.per_caller else ep.snapshot(ctx, caller)
            kw: dict[str, Any] = {"token": caller.token}
            if ep.admin:
                kw["api_version"] = None
            if ep.body is not None:
                kw["json"] = ep.body(ctx, caller, next(w.counter))
            r = w.api.request(ep.method, ep.path(ctx, caller), **kw)
            tally.cells += 1
            problem = check_cell(ep, caller, r, allowed)
            if problem:
                tally.failures.append(f"{ep.label} × {caller.label}: {problem}")
            if allowed:
                tally.allowed += 1
                last = None
                if ep.consumes:
                    ctx = None
                continue
            if caller.refused == 401:
                tally.refused_401 += 1
            else:
                tally.refused_403 += 1
            if ep.snapshot:
                after = ep.snapshot(ctx, caller)
                tally.snapshots += 1
                if after != before:
                    tally.failures.append(f"{ep.label} × {caller.label}: a refused call changed state:\n"
                                          f"{_diff(before, after)}")
                last = after
    return tally


def run_matrix(w: World, endpoints: list[Endpoint], callers: list[Caller]) -> Tally:
    """Lanes (endpoints that share no state) run in parallel; each lane is sequential, so the
    outcome does not depend on scheduling."""
    lanes: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        lanes.setdefault(ep.lane or ep.label, []).append(ep)
    tally = Tally()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for t in pool.map(lambda eps: run_lane(w, eps, callers), lanes.values()):
            tally.add(t)
    return tally


def report(capsys, title: str, endpoints: list[Endpoint], callers: list[Caller], tally: Tally) -> None:
    with capsys.disabled():
        print(f"\n{title}: {len(endpoints)} endpoints × {len(callers)} callers = {tally.cells} cells "
              f"({tally.allowed} allowed, {tally.refused_403} refused 403, {tally.refused_401} refused 401; "
              f"{tally.snapshots} refused mutations with before/after snapshots compared)")


def assert_clean(tally: Tally) -> None:
    if tally.failures:
        shown = "\n  ".join(tally.failures[:60])
        more = f"\n  ... and {len(tally.failures) - 60} more" if len(tally.failures) > 60 else ""
        pytest.fail(f"{len(tally.failures)} wrong cells:\n  {shown}{more}", pytrace=False)


# ----------------------------------------------------------------------------- tests


def test_permission_names_are_key_vault_names(world):
    """The server's permission sets are exactly Key Vault's names: `all` expands to them, each name
    is valid only for its own object type, and names are case-insensitive but stored canonically."""
    adm = world.admin
    adm.principal("mx-names", token=False)
    got = adm.grant_all("default", "mx-names")["permissions"]
    for obj in acc.OBJECT_TYPES:
        assert sorted(got[obj]) == sorted(PERMISSIONS[obj]), (obj, got[obj])
    got = adm.policy("default", "mx-names", keys=["WRAPKEY", "Sign"], certificates=["ManageIssuers"])["permissions"]
    assert sorted(got["keys"]) == ["sign", "wrapKey"], got
    assert sorted(got["certificates"]) == sorted(["manageissuers", *acc.ISSUER_PERMISSIONS]), got
    for obj, name in [("keys", "set"), ("secrets", "sign"), ("certificates", "wrapKey"), ("secrets", "nope")]:
        r = adm.call("PUT", "/vaults/default/access-policies/mx-names", json={obj: [name]})
        support.assert_error(r, 400, "BadParameter")


def test_wire_matrix(world, fixtures, callers, capsys):
    """Every Key Vault endpoint × every caller: allowed exactly when granted, else 403 (or 401 for
    a disabled principal / revoked token) and no change to the affected object."""
    endpoints = wire_endpoints(world, fixtures)
    needs = {ep.need for ep in endpoints}
    # every permission that guards something appears; the others guard nothing on this server
    unused = set(all_permissions()) - needs
    assert unused == {(C, n) for n in ("manageissuers",)} | {
        (K, n) for n in ("create", "import", "recover", "backup", "restore", "purge")} | {
        (S, n) for n in ("recover", "backup", "restore", "purge")}, sorted(unused)
    tally = run_matrix(world, endpoints, callers)
    report(capsys, "wire permission matrix (vault default)", endpoints, callers, tally)
    assert_clean(tally)
    assert tally.cells == len(endpoints) * len(callers)


def test_wire_grants_are_per_vault(world, fixtures, callers, capsys):
    """The principals allowed on each endpoint in `default` are refused the same call in vault
    `team`, where they hold nothing (the check comes before the object is looked up)."""
    endpoints = wire_endpoints(world, fixtures)
    tally = Tally()
    for ep in endpoints:
        for caller in callers:
            if not caller.allows(ep.need) or caller.admin:
                continue
            ctx = {"n": unique("mx-team"), "v": "0" * 32, "x5c": [], "blob": "AAAA"}
            kw: dict[str, Any] = {"token": caller.token}
            if ep.body is not None:
                kw["json"] = ep.body(ctx, caller, 0)
            r = world.team.request(ep.method, ep.path(ctx, caller), **kw)
            tally.cells += 1
            code, inner = _error_code(r)
            if not (r.status_code == 403 and code == "Forbidden" and inner == "ForbiddenByPolicy"):
                tally.failures.append(f"{ep.label} × {caller.label} on vault team: {r.status_code} {r.text[:200]}")
    with capsys.disabled():
        print(f"\nper-vault grants: {tally.cells} allowed-in-default calls refused in vault team")
    assert_clean(tally)
    # and the principal whose policy is in `team` is allowed there
    team_only = next(c for c in callers if c.principal == "mx-team-only")
    r = world.team.get("/certificates", token=team_only.token)
    assert r.status_code == 200, support.describe(r)


def test_admin_matrix(world, fixtures, callers, capsys):
    """Every admin endpoint × every caller: only the admin role is allowed; every other caller —
    including one holding every Key Vault permission — gets 403 and changes nothing (vaults,
    principals, tokens, policies, master key), also when it tries to make itself an administrator,
    give itself a policy, or mint a token for `admin`."""
    endpoints = admin_endpoints(world)
    tally = run_matrix(world, endpoints, callers)
    report(capsys, "admin permission matrix", endpoints, callers, tally)
    assert_clean(tally)
    # the escalation attempts left no trace
    for c in callers:
        if c.admin:
            continue
        rec = world.admin.call("GET", f"/principals/{c.principal}", 200).json()
        assert rec["admin"] is False, rec
        assert all(p["vault"] != ESCALATION_VAULT for p in rec["access_policies"]), rec


def test_changes_take_effect_at_once(world, fixtures):
    """Granting, removing a policy, disabling, re-enabling, revoking and deleting act on the next
    request (no cached decision outlives a change made through the admin API)."""
    adm, api = world.admin, world.api
    name = "mx-live"
    _, tok, tid = adm.principal(name)
    path = f"/certificates/{fixtures['base']}/"

    def status() -> int:
        return api.get(path, token=tok).status_code

    assert status() == 403
    adm.policy("default", name, certificates=["get"])
    assert status() == 200
    adm.policy("default", name, certificates=["list"])
    assert status() == 403
    adm.policy("default", name, certificates=["get"])
    assert status() == 200
    adm.delete_policy("default", name)
    assert status() == 403
    adm.policy("default", name, certificates=["get"])
    adm.update_principal(name, disabled=True)
    assert status() == 401
    adm.update_principal(name, disabled=False)
    assert status() == 200
    tok2, tid2, _ = adm.token(name)
    adm.revoke(name, tid)
    assert status() == 401
    assert api.get(path, token=tok2).status_code == 200
    adm.update_principal(name, admin=True)
    assert api.get(acc.ADMIN + "/principals", token=tok2, api_version=None).status_code == 200
    adm.update_principal(name, admin=False)
    assert api.get(acc.ADMIN + "/principals", token=tok2, api_version=None).status_code == 403
    adm.call("DELETE", f"/principals/{name}", 200)
    assert api.get(path, token=tok2).status_code == 401


def test_token_expiry_bounds(world, fixtures):
    """A token made with `expires_in_days` carries its expiry and works until then. Expiry itself
    (a day at least) cannot be reached against the real binary, which has no test clock: it is
    tested with a controlled clock in crates/certvault-server/tests/token_expiry.rs."""
    adm = world.admin
    rec, tok, _ = adm.principal("mx-expiring", expires_in_days=1)
    adm.policy("default", "mx-expiring", certificates=["get"])
    tokens = adm.call("GET", "/principals/mx-expiring/tokens", 200).json()["tokens"]
    assert len(tokens) == 1 and tokens[0]["expires"] - tokens[0]["created"] == 86_400, tokens
    assert world.api.get(f"/certificates/{fixtures['base']}/", token=tok).status_code == 200
    for days in (0, -1, 3651):
        r = adm.call("POST", "/principals/mx-expiring/tokens", json={"expires_in_days": days})
        support.assert_error(r, 400, "BadParameter")


def test_refusals_name_no_token(world, fixtures, callers):
    """403 and 401 bodies name the principal or nothing, never the token."""
    for c in callers:
        r = world.api.get("/certificates", token=c.token)
        assert c.token not in r.text and c.token not in str(r.headers), support.describe(r)


def test_policies_follow_the_vault_lifecycle(world, fixtures):
    """A soft-deleted vault answers nobody's principal; recovered, its policies are back; purged and
    made again under the same name, the new vault inherits no policy of the old one."""
    adm, w = world.admin, world
    _, tok, _ = adm.principal("mx-lifecycle")
    adm.vault("mx-reuse")
    adm.policy("mx-reuse", "mx-lifecycle", certificates=["list"])
    reuse = acc.vault_api(w.srv, "mx-reuse", tok)
    assert reuse.get("/certificates").status_code == 200
    adm.call("DELETE", "/vaults/mx-reuse", 200)
    # A non-admin cannot tell a missing vault from one it may not use.
    support.assert_error(reuse.get("/certificates"), 403, "Forbidden", inner="ForbiddenByPolicy")
    adm.call("POST", "/deleted-vaults/mx-reuse/recover", 200)
    assert reuse.get("/certificates").status_code == 200
    adm.call("DELETE", "/vaults/mx-reuse", 200)
    adm.call("DELETE", "/deleted-vaults/mx-reuse", 204)
    adm.vault("mx-reuse")
    r = reuse.get("/certificates")
    support.assert_error(r, 403, "Forbidden", inner="ForbiddenByPolicy")
    assert adm.call("GET", "/vaults/mx-reuse/access-policies", 200).json()["access_policies"] == []
