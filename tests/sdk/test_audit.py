"""The audit trail (issue 4, item 5): requests made through the Azure SDKs are recorded one
record each, with who, what, which object and the outcome, and never a secret value or token;
the admin API lists and exports them; `certvault audit verify` checks the hash chain and, after a
record was edited in the stopped server's database, names that record and fails.

Each test runs its own server (it stops it to edit the database file).
"""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.keys.crypto import SignatureAlgorithm

import support
from support import LRO, describe, self_policy, unique

ADMIN = "/admin/v1"


def cli(certvault_bin: str, srv, *args: str) -> subprocess.CompletedProcess:
    cmd = [certvault_bin, *args, "--url", srv.url, "--token-file", str(srv.token_path), "--cacert", srv.ca]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def admin_get(api, path: str, **params) -> dict:
    r = api.get(ADMIN + path, api_version=None, params=params)
    assert r.status_code == 200, describe(r)
    return r.json()


def verify(api) -> dict:
    r = api.post(ADMIN + "/audit/verify", api_version=None)
    assert r.status_code == 200, describe(r)
    return r.json()


def records_after(api, after: int) -> list[dict]:
    out: list[dict] = []
    while True:
        page = admin_get(api, "/audit", after=after, limit=1000)
        out += page["records"]
        if page["next"] is None:
            return out
        after = page["next"]


def test_sdk_requests_are_recorded_and_the_cli_verifies_and_finds_an_edit(start_server, certvault_bin):
    srv = start_server()
    api = srv.api()
    clients = srv.clients()
    before = verify(api)
    assert before["ok"] is True, before
    start = before["head"]["seq"] if before["head"] else 0

    # --- SDK traffic: create, read the certificate and its secret, sign with its key, a 404
    name = unique("audited")
    cert = clients.certs.begin_create_certificate(name, self_policy(f"CN={name}"), **LRO).result(timeout=60)
    version = cert.properties.version
    got = clients.certs.get_certificate(name)
    assert got.properties.version == version
    secret = clients.secrets.get_secret(name)
    assert secret.value
    digest = base64.b64decode("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
    signed = clients.crypto(cert.key_id).sign(SignatureAlgorithm.rs256, digest)
    assert signed.signature
    with pytest.raises(ResourceNotFoundError):
        clients.secrets.get_secret(unique("missing"))

    # --- raw requests: each request id appears exactly once
    ids = []
    for path in (f"/secrets/{name}", f"/certificates/{name}", f"/keys/{name}"):
        r = api.get(path)
        assert r.status_code == 200, describe(r)
        ids.append((r.headers["x-ms-request-id"], path))
    r = api.get(f"/secrets/{name}", token="cvt_definitely-not-a-token")
    assert r.status_code == 401
    ids.append((r.headers["x-ms-request-id"], "invalid"))

    records = records_after(api, start)
    by_id: dict[str, list[dict]] = {}
    for rec in records:
        by_id.setdefault(rec["request_id"], []).append(rec)
    for rid, what in ids:
        assert len(by_id.get(rid, [])) == 1, f"{what}: {by_id.get(rid)}"
    invalid = by_id[ids[-1][0]][0]
    assert (invalid["operation"], invalid["principal"], invalid["status"], invalid["outcome"]) == \
        ("auth.invalid", "anonymous", 401, "denied"), invalid
    # every record of the session is in the chain once: seqs are consecutive
    seqs = [rec["seq"] for rec in records]
    assert seqs == list(range(start + 1, start + 1 + len(records))), seqs

    ops = [(rec["operation"], rec["object"], rec["principal"], rec["status"], rec["outcome"]) for rec in records]
    low = name.lower()
    assert ("certificates.create", f"certificates/{low}", "admin", 202, "ok") in ops, ops
    assert ("certificates.get", f"certificates/{low}/{version}", "admin", 200, "ok") in ops, ops
    assert ("secrets.get", f"secrets/{low}/{version}", "admin", 200, "ok") in ops, ops
    assert ("keys.sign", f"keys/{low}/{version}", "admin", 200, "ok") in ops, ops
    assert any(o[0] == "secrets.get" and o[3] == 404 and o[4] == "error" for o in ops), ops
    # the SDKs' first request of each client carries no token: recorded as a refused attempt
    assert any(o[0] == "auth.invalid" and o[3] == 401 for o in ops), ops
    assert all(rec["source"] == "127.0.0.1" for rec in records)

    # --- nothing secret in the trail (the secret value, a line of its key, the token)
    r = api.get(ADMIN + "/audit/export", api_version=None)
    assert r.status_code == 200, describe(r)
    assert r.headers["Content-Type"].startswith("application/x-ndjson")
    export = r.text
    assert secret.value[100:160] not in export
    assert srv.token not in export and srv.token[4:24] not in export
    lines = [json.loads(line) for line in export.splitlines()]
    assert [rec["seq"] for rec in lines] == list(range(1, len(lines) + 1))

    # --- the CLI: verify, list (table and JSON), export
    ok = cli(certvault_bin, srv, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "audit chain OK" in ok.stdout, ok.stdout
    listed = cli(certvault_bin, srv, "audit", "list", "--operation", "keys.sign", "--json")
    assert listed.returncode == 0, listed.stderr
    signs = json.loads(listed.stdout)
    assert [s["object"] for s in signs] == [f"keys/{low}/{version}"], signs
    table = cli(certvault_bin, srv, "audit", "list", "--object", f"secrets/{low}", "--from", "1h")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["SEQ", "TIME", "PRINCIPAL"], table.stdout
    want = [rec["seq"] for rec in records
            if rec["operation"] == "secrets.get" and (rec["object"] or "").startswith(f"secrets/{low}/")]
    assert len(want) == 2, records  # the SDK's read and the raw one
    shown = [int(line.split()[0]) for line in table.stdout.splitlines()[1:] if "secrets.get" in line]
    assert shown == want, table.stdout
    out = srv.data_dir.parent / "audit.jsonl"
    exported = cli(certvault_bin, srv, "audit", "export", "--principal", "admin", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    exported_lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert exported_lines and all(rec["principal"] == "admin" for rec in exported_lines)

    # --- tamper: stop the server, edit the secret read's record, start again
    target = next(rec for rec in records if rec["operation"] == "secrets.get" and rec["status"] == 200)
    seq = target["seq"]
    srv.stop()
    if support.using_postgres():
        support.db_query(srv.data_dir, "DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log")
    else:
        support.db_query(srv.data_dir, "DROP TRIGGER IF EXISTS audit_log_no_update")
    support.db_query(srv.data_dir, f"UPDATE audit_log SET principal = 'nobody' WHERE seq = {int(seq)}")
    srv.start()

    bad = cli(certvault_bin, srv, "audit", "verify")
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    assert f"BROKEN at record {seq} (changed)" in bad.stderr, bad.stderr
    result = verify(api)
    assert result["ok"] is False
    assert (result["problem"]["seq"], result["problem"]["kind"]) == (seq, "changed"), result
    assert result["records_checked"] == seq - 1


def test_audit_api_is_for_administrators_only(start_server):
    srv = start_server()
    api = srv.api()
    r = api.post(ADMIN + "/principals", api_version=None, json={"name": "reader"})
    assert r.status_code == 201, describe(r)
    token = r.json()["token"]["token"]
    for method, path in (("GET", "/audit"), ("GET", "/audit/export"), ("POST", "/audit/verify")):
        r = api.request(method, ADMIN + path, api_version=None, token=token)
        assert r.status_code == 403, describe(r)
        assert r.json()["error"]["code"] == "Forbidden"
    # the refusals are recorded under the principal that asked
    denied = [rec for rec in admin_get(api, "/audit", principal="reader")["records"]]
    assert [(d["operation"], d["outcome"]) for d in denied] == [
        ("admin.audit.list", "denied"), ("admin.audit.export", "denied"), ("admin.audit.verify", "denied")]
    # no token material in the record of the principal's creation
    created = admin_get(api, "/audit", operation="admin.principals.create")["records"]
    assert [c["object"] for c in created] == ["admin/principals/reader"]
    assert token not in json.dumps(created)
