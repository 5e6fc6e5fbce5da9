"""ACME ordering through the official SDK (issue 6): an issuer with provider `acme` (set through
the wire API: the SDK's issuer model has no ACME settings) and `begin_create_certificate` with it,
against Debian's pebble whose VA resolves through a real BIND 9 that certvault updates with
RFC 2136 + TSIG. The chain is checked with `openssl verify` against pebble's root."""

from __future__ import annotations

import datetime
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from azure.keyvault.certificates import (
    CertificateContentType,
    CertificateOperation,
    CertificatePolicy,
    KeyVaultCertificate,
)
from cryptography import x509

from acme_peers import Bind, Pebble, binary
from support import LRO, ok_json, unique, wait_until


@pytest.fixture(scope="module")
def peers():
    bind = Bind("sdk-acme.test")
    try:
        pebble = Pebble(bind.addr)
    except BaseException:
        bind.stop()
        raise
    yield bind, pebble
    pebble.stop()
    bind.stop()


def _issuer(api, bind: Bind, pebble: Pebble, **acme) -> str:
    name = unique("acme")
    body = {
        "provider": "acme",
        "acme": {
            "directory": pebble.directory_url,
            "email": "ops@example.test",
            "terms_agreed": True,
            "ca_pem": pebble.tls_ca_pem,
            "dns": {"mode": "rfc2136", "zone": bind.zone, "server": bind.addr,
                    "tsig_key_name": bind.key_name, "tsig_secret": bind.key_secret},
            **acme,
        },
    }
    out = ok_json(api.put(f"/certificates/issuers/{name}", json=body))
    assert bind.key_secret not in str(out)
    return name


def _verify(chain_pem: str, root_pem: str) -> None:
    openssl = binary("openssl", "openssl")
    blocks = [b + "-----END CERTIFICATE-----\n" for b in chain_pem.split("-----END CERTIFICATE-----")
              if "BEGIN CERTIFICATE" in b]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d)
        (p / "leaf.pem").write_text(blocks[0])
        (p / "inter.pem").write_text("".join(blocks[1:]))
        (p / "root.pem").write_text(root_pem)
        cmd = [openssl, "verify", "-CAfile", str(p / "root.pem")]
        if len(blocks) > 1:
            cmd += ["-untrusted", str(p / "inter.pem")]
        out = subprocess.run(cmd + [str(p / "leaf.pem")], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_begin_create_certificate_with_acme_issuer(peers, certs, secrets, api):
    bind, pebble = peers
    issuer = _issuer(api, bind, pebble)
    names = ["sdk-acme.test", "www.sdk-acme.test", "*.sdk-acme.test"]
    policy = CertificatePolicy(issuer_name=issuer, subject="CN=sdk-acme.test", san_dns_names=names,
                               key_type="EC", key_curve_name="P-256",
                               content_type=CertificateContentType.pem)
    name = unique("acme-cert")
    poller = certs.begin_create_certificate(name, policy, **LRO)
    result = poller.result(timeout=90)
    assert poller.status() == "completed", f"poller status {poller.status()}: {result!r}\n{pebble.log()[-3000:]}"
    assert isinstance(result, KeyVaultCertificate), repr(result)
    assert result.properties.enabled is True
    leaf = x509.load_der_x509_certificate(bytes(result.cer))
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(names)
    op = certs.get_certificate_operation(name)
    assert op.status == "completed"
    assert op.target.endswith(f"/certificates/{name}")
    secret = secrets.get_secret(name)
    assert secret.value.startswith("-----BEGIN PRIVATE KEY-----")
    _verify(secret.value[secret.value.index("-----BEGIN CERTIFICATE-----"):], pebble.root_pem(0))
    for n in ("_acme-challenge.sdk-acme.test", "_acme-challenge.www.sdk-acme.test"):
        assert bind.dig_txt(n) == [], f"{n} left behind"


def test_ca_problem_ends_the_operation_failed(peers, certs, api):
    bind, pebble = peers
    # Pebble refuses an account that did not agree to its terms of service.
    issuer = _issuer(api, bind, pebble, terms_agreed=False)
    policy = CertificatePolicy(issuer_name=issuer, subject="CN=refused.sdk-acme.test",
                               san_dns_names=["refused.sdk-acme.test"])
    poller = certs.begin_create_certificate(unique("acme-refused"), policy, **LRO)
    result = poller.result(timeout=60)
    assert isinstance(result, CertificateOperation), repr(result)
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.code.startswith("urn:ietf:params:acme:error:"), result.error.code
    assert result.error.message


def test_sigkill_mid_order_resumes_every_order_without_duplicates(start_server):
    bind = Bind("kill-acme.test")
    pebble = Pebble(bind.addr, va_sleep=True)
    try:
        srv = start_server()
        api = srv.api()
        issuer = _issuer(api, bind, pebble)
        names = {unique("killed"): [f"n{i}.kill-acme.test", f"*.n{i}.kill-acme.test"] for i in range(3)}
        for cert, dns in names.items():
            body = {"policy": {"key_props": {"kty": "EC", "crv": "P-256"},
                               "secret_props": {"contentType": "application/x-pem-file"},
                               "x509_props": {"subject": f"CN={dns[0]}", "sans": {"dns_names": dns}},
                               "issuer": {"name": issuer}}}
            assert ok_json(api.post(f"/certificates/{cert}/create", json=body), 202)["status"] == "inProgress"

        def all_ordered():
            ops = [ok_json(api.get(f"/certificates/{c}/pending")) for c in names]
            return all(o["status"] == "inProgress" and "ACME order created" in o["status_details"] for o in ops)

        wait_until(all_ordered, "every order created at the CA (and still in progress)", timeout=30, interval=0.05)
        assert pebble.orders_created() == 3
        srv.proc.kill()  # SIGKILL: no shutdown at all
        srv.proc.wait(timeout=10)
        srv.stop()
        srv.start()
        api = srv.api()

        def done():
            ops = [ok_json(api.get(f"/certificates/{c}/pending")) for c in names]
            return all(o["status"] != "inProgress" for o in ops) and ops

        for op in wait_until(done, "every order finished after the restart", timeout=90):
            assert op["status"] == "completed", op
        assert pebble.orders_created() == 3, "a resumed order was ordered again"
        root = pebble.root_pem(0)
        for cert in names:
            pem = ok_json(api.get(f"/secrets/{cert}/"))["value"]
            _verify(pem[pem.index("-----BEGIN CERTIFICATE-----"):], root)
    finally:
        pebble.stop()
        bind.stop()


def _nsupdate_add(bind: Bind, name: str, value: str) -> None:
    """The user publishes a TXT record (RFC 2136 + TSIG with BIND's `nsupdate`)."""
    nsupdate = binary("nsupdate", "bind9-dnsutils")
    host, port = bind.addr.split(":")
    script = f"server {host} {port}\nzone {bind.zone}\nupdate add {name}. 60 TXT \"{value}\"\nsend\n"
    out = subprocess.run([nsupdate, "-y", f"hmac-sha256:{bind.key_name}:{bind.key_secret}"], input=script,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def _waiting(api, cert: str) -> tuple[str, list[tuple[str, str]]]:
    """The notify-mode operation's deadline text and the records it asks for."""
    op = ok_json(api.get(f"/certificates/{cert}/pending"))
    details = op["status_details"]
    if op["status"] != "inProgress" or "waiting for the DNS-01 TXT records" not in details:
        return "", []
    until = details.split("authoritative servers until ", 1)[1].split(")", 1)[0]
    records = []
    for item in details.rsplit("): ", 1)[1].rstrip(".").split("; "):
        name, value = item.split(" TXT ", 1)
        records.append((name, value.strip('"')))
    return until, records


def test_notify_window_and_notices_survive_sigkill(start_server):
    """Notify mode across a SIGKILL: the validation window keeps its deadline (it does not start
    again), and the user is not told twice; an order whose record appears after the restart
    completes, one whose record never appears fails at the original deadline."""
    window = 30
    bind = Bind("notify-kill.test")
    pebble = Pebble(bind.addr)
    try:
        srv = start_server()
        api = srv.api()
        issuer = unique("notify")
        ok_json(api.put(f"/certificates/issuers/{issuer}", json={"provider": "acme", "acme": {
            "directory": pebble.directory_url, "terms_agreed": True, "ca_pem": pebble.tls_ca_pem,
            "dns": {"mode": "notify", "zone": bind.zone, "nameservers": [bind.addr],
                    "window_seconds": window}}}))
        certs = {unique("late"): "late.notify-kill.test", unique("set"): "set.notify-kill.test"}
        for cert, dns in certs.items():
            body = {"policy": {"key_props": {"kty": "EC", "crv": "P-256"},
                               "x509_props": {"subject": f"CN={dns}", "sans": {"dns_names": [dns]}},
                               "issuer": {"name": issuer}}}
            assert ok_json(api.post(f"/certificates/{cert}/create", json=body), 202)["status"] == "inProgress"
        late, setc = list(certs)
        before = {c: wait_until(lambda c=c: _waiting(api, c)[1] and _waiting(api, c),
                                f"{c} waiting for its record", timeout=30, interval=0.1) for c in certs}
        deadline = datetime.datetime.fromisoformat(before[late][0].replace("Z", "+00:00")).timestamp()

        def told(cert: str, kind: str = "cert_domain_validation_required") -> int:
            ev = ok_json(api.get("/admin/v1/vaults/default/events", api_version=None,
                                 params={"certificate": cert, "type": kind}))
            return len(ev["value"])

        def audited(cert: str) -> int:
            r = api.get("/admin/v1/audit", api_version=None,
                        params={"operation": "certificates.acme.cert_domain_validation_required", "limit": 1000})
            assert r.status_code == 200, r.text
            return sum(1 for rec in r.json()["records"] if f"certificates/{cert}/" in (rec.get("object") or ""))

        for c in certs:
            assert told(c) == 1 and audited(c) == 1
        time.sleep(5)
        srv.proc.kill()  # SIGKILL in the middle of the window
        srv.proc.wait(timeout=10)
        srv.stop()
        time.sleep(3)
        srv.start()
        api = srv.api()
        after = {c: wait_until(lambda c=c: _waiting(api, c)[1] and _waiting(api, c),
                               f"{c} waiting again after the restart", timeout=30, interval=0.1) for c in certs}
        for c in certs:
            assert after[c] == before[c], "the window or the records changed across the restart"
        # A window started again would end at least 8 s later than the original one.
        assert time.time() + window > deadline + 8
        for name, value in after[setc][1]:
            _nsupdate_add(bind, name, value)
        done = wait_until(lambda: ok_json(api.get(f"/certificates/{setc}/pending"))["status"] != "inProgress"
                          and ok_json(api.get(f"/certificates/{setc}/pending")), "the set record's order", timeout=60)
        assert done["status"] == "completed", done
        failed = wait_until(lambda: ok_json(api.get(f"/certificates/{late}/pending"))["status"] != "inProgress"
                            and ok_json(api.get(f"/certificates/{late}/pending")), "the late order", timeout=60,
                            interval=0.1)
        assert failed["status"] == "failed", failed
        assert "not visible" in failed["error"]["message"], failed
        ev = ok_json(api.get("/admin/v1/vaults/default/events", api_version=None,
                             params={"certificate": late, "type": "order_failed"}))["value"]
        assert len(ev) == 1, ev
        ended = ev[0]["occurred_at"]
        assert deadline <= ended <= deadline + 4, f"failed {ended - deadline:.1f} s after the original deadline"
        # Told once (outbox and audit), also across the restart.
        for c in certs:
            assert told(c) == 1 and audited(c) == 1, c
        assert told(setc, "cert_domain_validation_completed") == 1
        assert told(late, "order_failed") == 1
        assert pebble.orders_created() == 2
    finally:
        pebble.stop()
        bind.stop()
