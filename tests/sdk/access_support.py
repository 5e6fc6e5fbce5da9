"""Helpers for the access-control tests (issue 4): the Key Vault permission names, the admin API
(principals, tokens, access policies, vaults) and a dedicated server per test module.

The access-control tests run on their own servers: they set vault-wide state (contacts, issuers,
vaults, principals, master key rotations) that the session server's tests must not see.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Optional

import requests

import support
from support import Api, CertvaultServer, describe

ADMIN = "/admin/v1"

# The Key Vault access-policy permission names per object type (Key Vault's spelling; the
# issue lists the same). The tests generate their principals and matrix cells from these.
PERMISSIONS: dict[str, list[str]] = {
    "certificates": ("get list update create import delete recover backup restore purge managecontacts "
                     "getissuers listissuers setissuers deleteissuers manageissuers").split(),
    "keys": ("get list update create import delete recover backup restore purge sign verify encrypt decrypt "
             "wrapKey unwrapKey").split(),
    "secrets": "get list set delete recover backup restore purge".split(),
}
OBJECT_TYPES = tuple(PERMISSIONS)
# `manageissuers` is the umbrella of the four issuer permissions (Key Vault's REST reference names
# them "certificates/manageissuers/getissuers" etc.).
ISSUER_PERMISSIONS = ("getissuers", "listissuers", "setissuers", "deleteissuers")


def all_permissions() -> list[tuple[str, str]]:
    return [(obj, name) for obj in OBJECT_TYPES for name in PERMISSIONS[obj]]


def implied(obj: str, name: str) -> set[tuple[str, str]]:
    """What a principal holding only (obj, name) may do."""
    out = {(obj, name)}
    if obj == "certificates" and name == "manageissuers":
        out |= {("certificates", n) for n in ISSUER_PERMISSIONS}
    return out


class Admin:
    """The admin API with the bootstrap admin token (one HTTP session per thread)."""

    def __init__(self, srv: CertvaultServer):
        self.srv = srv
        self._local = threading.local()

    @property
    def api(self) -> Api:
        api = getattr(self._local, "api", None)
        if api is None:
            api = self._local.api = self.srv.api()
        return api

    def call(self, method: str, path: str, expect: Optional[int] = None, **kw: Any) -> requests.Response:
        r = self.api.request(method, ADMIN + path, api_version=None, **kw)
        if expect is not None:
            assert r.status_code == expect, f"admin call: expected {expect}: {describe(r)}"
        return r

    def principal(self, name: str, *, admin: bool = False, token: bool = True,
                  expires_in_days: Optional[int] = None) -> tuple[dict, Optional[str], Optional[int]]:
        """Creates a principal; returns (record, token or None, token id or None)."""
        body: dict[str, Any] = {"name": name, "admin": admin, "token": token}
        if expires_in_days is not None:
            body["token_expires_in_days"] = expires_in_days
        out = self.call("POST", "/principals", 201, json=body).json()
        tok = out.get("token") or {}
        return out["principal"], tok.get("token"), tok.get("id")

    def token(self, name: str, **body: Any) -> tuple[str, int, dict]:
        out = self.call("POST", f"/principals/{name}/tokens", 201, json=body).json()
        return out["token"], out["id"], out

    def revoke(self, name: str, token_id: int) -> dict:
        return self.call("DELETE", f"/principals/{name}/tokens/{token_id}", 200).json()

    def update_principal(self, name: str, **body: Any) -> dict:
        return self.call("PATCH", f"/principals/{name}", 200, json=body).json()

    def policy(self, vault: str, name: str, *, certificates: Iterable[str] = (), keys: Iterable[str] = (),
               secrets: Iterable[str] = ()) -> dict:
        body = {"certificates": list(certificates), "keys": list(keys), "secrets": list(secrets)}
        return self.call("PUT", f"/vaults/{vault}/access-policies/{name}", 200, json=body).json()

    def grant_all(self, vault: str, name: str) -> dict:
        return self.policy(vault, name, certificates=["all"], keys=["all"], secrets=["all"])

    def delete_policy(self, vault: str, name: str) -> None:
        self.call("DELETE", f"/vaults/{vault}/access-policies/{name}", 204)

    def vault(self, name: str) -> dict:
        return self.call("POST", "/vaults", 201, json={"name": name}).json()


def vault_url(srv: CertvaultServer, vault: str) -> str:
    """https://<vault>.<domain>:<port> (resolved to 127.0.0.1 by support's resolver)."""
    return f"https://{vault}.{srv.domain}:{srv.port}"


def vault_api(srv: CertvaultServer, vault: str, token: Optional[str] = None) -> Api:
    return Api(vault_url(srv, vault), token or srv.token, srv.ca)


def _conftest_servers() -> Optional[list]:
    mod = sys.modules.get("conftest")
    servers = getattr(mod, "_SERVERS", None)
    return servers if isinstance(servers, list) else None


def start_server(binary: str, prefix: str, **env: str) -> tuple[CertvaultServer, Path]:
    """A dedicated server (own data dir and port); its log is attached to failing tests."""
    root = Path(tempfile.mkdtemp(prefix=f"certvault-{prefix}-"))
    srv = support.new_server(binary, root)
    srv.extra_env.update(env)
    servers = _conftest_servers()
    if servers is not None:
        servers.append(srv)
    srv.start()
    return srv, root


def stop_server(srv: CertvaultServer, root: Path, keep: bool) -> Optional[int]:
    code = srv.stop()
    servers = _conftest_servers()
    if servers is not None and srv in servers:
        servers.remove(srv)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return code
