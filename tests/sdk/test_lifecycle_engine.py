"""The lifecycle engine on the real server with the test clock: AutoRenew, EmailContacts, expiry
notices, renew on demand, notification channels with signed webhooks and e-mail over SMTP,
retries across a receiver outage, dead letters, and a SIGKILL during renewals.

Receivers are real: an HTTP server verifying HMAC signatures and aiosmtpd."""

from __future__ import annotations

import secret_registry
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from azure.keyvault.certificates import (
    CertificateContact,
    CertificatePolicy,
    CertificatePolicyAction,
    LifetimeAction,
)

import support
from lifecycle_support import SmtpSink, WebhookReceiver, admin, advance, advance_to, server_now
from support import LRO, describe, new_server, unique

DAY = 86_400
SECRET = "lifecycle-test-secret-0123456789"
secret_registry.register("webhook signing secret", SECRET)


@pytest.fixture
def smtp():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def receiver():
    r = WebhookReceiver(SECRET).start()
    yield r
    r.stop()


@pytest.fixture
def lc_server(certvault_bin, smtp, request):
    """A factory for servers with the test clock and SMTP to the sink."""
    started = []

    def factory(*extra: str):
        root = Path(tempfile.mkdtemp(prefix="certvault-lc-"))
        srv = new_server(certvault_bin, root)
        srv.extra_args = ["--test-clock", "--smtp-host", "127.0.0.1", "--smtp-port", str(smtp.port),
                          "--smtp-tls", "none", "--smtp-from", "certvault@example.test", *extra]
        srv.extra_env = {"CERTVAULT_ALLOW_TEST_CLOCK": "1"}
        srv.start()
        started.append((srv, root))
        return srv

    yield factory
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for srv, root in started:
        srv.stop()
        if not failed:
            shutil.rmtree(root, ignore_errors=True)


def add_channel(api, url: str, name: str = "hook", kind: str = "webhook") -> dict:
    return admin(api, "POST", "/vaults/default/channels", 201,
                 json={"name": name, "type": kind, "url": url, "secret": SECRET})


def policy(action, months: int = 1, **kw) -> CertificatePolicy:
    p = support.self_policy(f"CN={unique('lc')}.example.test", key_type="EC", curve="P-256",
                            validity=months, **kw)
    p._lifetime_actions = [LifetimeAction(action, lifetime_percentage=80)]
    return p


def lifetime(cert) -> tuple[int, int]:
    return int(cert.properties.not_before.timestamp()), int(cert.properties.expires_on.timestamp())


def versions(certs, name: str) -> list:
    return sorted(certs.list_properties_of_certificate_versions(name), key=lambda p: p.created_on)


# ------------------------------------------------------------------------------ test clock


def test_test_clock_is_refused_without_the_environment_variable(certvault_bin, tmp_path):
    srv = new_server(certvault_bin, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "CERTVAULT_ALLOW_TEST_CLOCK"}
    r = subprocess.run(srv.command() + ["--test-clock"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "CERTVAULT_ALLOW_TEST_CLOCK=1" in r.stderr
    assert not (tmp_path / "data" / "certvault.db").exists()


def test_test_clock_is_announced_and_moves(lc_server):
    srv = lc_server()
    assert "TEST CLOCK" in srv.log_text()
    api = srv.api()
    t0 = server_now(api)
    t1 = advance(api, 10 * DAY)
    assert t1 >= t0 + 10 * DAY
    # Bad input: the error shape, nothing moves.
    r = api.post("/admin/v1/test-clock/advance", api_version=None, json={"seconds": -5})
    assert r.status_code == 400 and r.json()["error"]["code"] == "BadParameter", describe(r)
    r = api.post("/admin/v1/test-clock/advance", api_version=None, json={"secs": 5})
    assert r.status_code == 400, describe(r)
    assert server_now(api) < t1 + 60


def test_a_server_without_test_clock_refuses_to_move(server, api):
    r = api.post("/admin/v1/test-clock/advance", api_version=None, json={"seconds": 5})
    assert r.status_code == 409, describe(r)
    assert admin(api, "GET", "/test-clock")["test_clock"] is False


# ------------------------------------------------------------------------------ AutoRenew


def test_autorenew_at_80_percent_makes_a_new_version_and_keeps_the_old(lc_server, receiver):
    srv = lc_server()
    api, certs = srv.api(), srv.clients().certs
    add_channel(api, receiver.url)
    name = unique("auto")
    first = certs.begin_create_certificate(name, policy(CertificatePolicyAction.auto_renew), **LRO).result()
    receiver.wait_for("the issued event", lambda ev: any(e["event_type"] == "issued" for e in ev))
    nbf, exp = lifetime(first)
    due = nbf + (exp - nbf) * 80 // 100
    # Just before 80 %: nothing happens.
    advance_to(api, due - 3600)
    time.sleep(2.0)
    assert len(versions(certs, name)) == 1
    # Past 80 % plus the longest jitter (an hour): renewed once.
    advance_to(api, due + 3601)
    support.wait_until(lambda: len(versions(certs, name)) == 2, "the renewed version", timeout=90)
    latest = certs.get_certificate(name)
    assert latest.properties.version != first.properties.version
    old = certs.get_certificate_version(name, first.properties.version)
    assert old.cer == first.cer
    assert latest.properties.expires_on > first.properties.expires_on
    # The policy says reuse_key false: a new key.
    assert latest.key_id != first.key_id
    assert support.load_cer(latest.cer).public_key() != support.load_cer(first.cer).public_key()
    renewed = receiver.wait_for("the renewed event",
                                lambda ev: any(e["event_type"] == "renewed" for e in ev))
    ev = [e for e in renewed if e["event_type"] == "renewed"][0]
    assert ev["certificate_name"] == name
    assert ev["certificate_version"] == latest.properties.version
    assert ev["version"] == 1 and ev["vault"] == "default"
    assert ev["certificate_id"].endswith(f"/certificates/{name}/{latest.properties.version}")
    assert receiver.bad_signatures == 0
    # The new version is planned for its own 80 %, not renewed again now.
    time.sleep(2.0)
    assert len(versions(certs, name)) == 2


def test_imported_certificates_never_auto_renew(lc_server):
    srv = lc_server()
    api, certs = srv.api(), srv.clients().certs
    key = support.ec_key()
    _, cert = support.self_signed("imported.example.test", key, days=30)
    name = unique("imp")
    certs.import_certificate(name, support.pem_bundle(key, cert),
                             policy=CertificatePolicy(content_type="application/x-pem-file",
                                                      lifetime_actions=[LifetimeAction(
                                                          CertificatePolicyAction.auto_renew,
                                                          lifetime_percentage=50)]))
    advance(api, 29 * DAY)
    time.sleep(2.0)
    assert len(versions(certs, name)) == 1
    # And renewing on demand is refused with a clear message.
    r = api.post(f"/certificates/{name}/renew", json={})
    assert r.status_code == 400, describe(r)
    assert "imported" in r.json()["error"]["message"]
    assert len(versions(certs, name)) == 1


# ------------------------------------------------------------------------------ notices and e-mail


def test_email_contacts_and_expiry_notices_fire_once(lc_server, receiver, smtp):
    srv = lc_server()
    api, certs = srv.api(), srv.clients().certs
    add_channel(api, receiver.url)
    certs.set_contacts([CertificateContact(email="ops@example.test", name="Ops"),
                        CertificateContact(email="pki@example.test")])
    name = unique("notice")
    c = certs.begin_create_certificate(name, policy(CertificatePolicyAction.email_contacts, months=3),
                                       **LRO).result()
    nbf, exp = lifetime(c)
    checkpoints = [
        (exp - 30 * DAY + 10, ("expiry_notice", 30)),
        (nbf + (exp - nbf) * 80 // 100 + 10, ("lifetime_action", None)),
        (exp - 7 * DAY + 10, ("expiry_notice", 7)),
        (exp - 1 * DAY + 10, ("expiry_notice", 1)),
    ]
    checkpoints.sort()
    seen = 0
    for t, (reason, days) in checkpoints:
        advance_to(api, t)
        seen += 1
        got = receiver.wait_for(f"about_to_expire #{seen}",
                                lambda ev: len([e for e in ev if e["event_type"] == "about_to_expire"]) >= seen)
        last = [e for e in got if e["event_type"] == "about_to_expire"][-1]
        assert last["data"]["reason"] == reason, last
        if days:
            assert last["data"]["days_before_expiry"] == days
    advance_to(api, exp + 10)
    receiver.wait_for("expired", lambda ev: any(e["event_type"] == "expired" for e in ev))
    # Much later: nothing fires again.
    advance(api, 200 * DAY)
    time.sleep(3.0)
    kinds = [e["event_type"] for e in receiver.events(cert=name)]
    assert kinds.count("about_to_expire") == 4, kinds
    assert kinds.count("expired") == 1, kinds
    assert len({e["id"] for e in receiver.events()}) == len(receiver.events())
    # E-mail: one message per notice to both contacts, plain text and HTML.
    msgs = support.wait_until(lambda: [m for m in smtp.messages if name in m[1]["Subject"]]
                              if len([m for m in smtp.messages if name in m[1]["Subject"]]) >= 5 else None,
                              "five e-mails", timeout=90)
    assert len(msgs) == 5
    rcpts, msg = msgs[0]
    assert sorted(rcpts) == ["ops@example.test", "pki@example.test"]
    assert msg["From"] == "certvault@example.test"
    types = {part.get_content_type() for part in msg.walk()}
    assert {"text/plain", "text/html"} <= types
    assert "about_to_expire" in msg["Subject"]
    assert any("expired" in m[1]["Subject"] for m in msgs)


# ------------------------------------------------------------------------------ renew on demand


def test_renew_on_demand_api_cli_and_key_vault_create_again(lc_server, certvault_bin):
    srv = lc_server()
    api, certs = srv.api(), srv.clients().certs
    name = unique("ondemand")
    p = policy(CertificatePolicyAction.auto_renew, months=12)
    p._reuse_key = True
    first = certs.begin_create_certificate(name, p, **LRO).result()
    # API, without rekey: the policy says reuse_key, so the same key.
    r = api.post(f"/certificates/{name}/renew", json={})
    assert r.status_code == 201, describe(r)
    v2 = r.json()["version"]
    assert r.json()["status"] == "completed"
    second = certs.get_certificate_version(name, v2)
    assert support.load_cer(second.cer).public_key() == support.load_cer(first.cer).public_key()
    # CLI with --rekey: a new key.
    out = subprocess.run([certvault_bin, "cert", "renew", name, "--rekey", "--url", srv.url,
                          "--token-file", str(srv.token_path), "--cacert", srv.ca],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    third = certs.get_certificate(name)
    assert third.properties.version in out.stdout
    assert support.load_cer(third.cer).public_key() != support.load_cer(first.cer).public_key()
    # The Key Vault way: create again under the existing policy.
    fourth = certs.begin_create_certificate(name, certs.get_certificate_policy(name), **LRO).result()
    vs = versions(certs, name)
    assert [v.version for v in vs] == [first.properties.version, v2, third.properties.version,
                                       fourth.properties.version]
    for v in vs:
        assert certs.get_certificate_version(name, v.version).cer
    # Admin API form.
    r = api.post(f"/admin/v1/vaults/default/certificates/{name}/renew", api_version=None,
                 json={"rekey": True})
    assert r.status_code == 201, describe(r)
    assert len(versions(certs, name)) == 5
    # Bad input: nothing changes.
    r = api.post(f"/certificates/{name}/renew", json={"rekey": "yes"})
    assert r.status_code == 400, describe(r)
    r = api.post("/certificates/no-such-cert/renew", json={})
    assert r.status_code == 404, describe(r)
    assert len(versions(certs, name)) == 5


def test_renewing_an_unknown_issuer_certificate_opens_a_new_csr(lc_server):
    srv = lc_server()
    api, certs = srv.api(), srv.clients().certs
    name = unique("csr")
    ca_key, ca = support.make_ca()
    p = support.self_policy(f"CN={name}.example.test", issuer="Unknown")
    poller = certs.begin_create_certificate(name, p)
    op = certs.get_certificate_operation(name)
    from cryptography import x509 as cx509
    csr = cx509.load_der_x509_csr(op.csr)
    leaf = support.make_leaf(ca_key, ca, csr.subject, csr.public_key())
    certs.merge_certificate(name, [support.der(leaf)])
    r = api.post(f"/certificates/{name}/renew", json={})
    assert r.status_code == 201, describe(r)
    body = r.json()
    assert body["status"] == "inProgress" and body["csr"]
    op = certs.get_certificate_operation(name)
    assert op.status == "inProgress"
    # A second renewal while the CSR waits is refused.
    r = api.post(f"/certificates/{name}/renew", json={})
    assert r.status_code == 409, describe(r)
    del poller


# ------------------------------------------------------------------------------ channels


def test_channel_api_test_action_and_secret_handling(lc_server, receiver):
    srv = lc_server()
    api = srv.api()
    ch = admin(api, "POST", "/vaults/default/channels", 201,
               json={"name": "gen", "type": "webhook", "url": receiver.url})
    generated = ch["secret"]
    assert generated.startswith("cvs_")
    add_channel(api, receiver.url, name="slack", kind="slack")
    listed = admin(api, "GET", "/vaults/default/channels")["value"]
    assert [c["name"] for c in listed] == ["gen", "slack"]
    assert all("secret" not in c for c in listed)
    assert listed[1]["target"].endswith("/…"), listed[1]
    # The test action reports the receiver's answer.
    res = admin(api, "POST", "/vaults/default/channels/slack/test")
    assert res["delivered"] is True and res["status"] == 200 and "ok" in res["body"], res
    res = admin(api, "POST", "/vaults/default/channels/gen/test")
    assert res["delivered"] is False and res["status"] == 401, res  # the receiver knows SECRET only
    receiver.down = True
    res = admin(api, "POST", "/vaults/default/channels/slack/test")
    assert res["delivered"] is False and res["status"] == 503 and res["body"] == "down", res
    receiver.down = False
    # Bad input: error shape, no state change.
    for bad in ({"name": "x", "type": "email", "url": receiver.url},
                {"name": "x", "type": "webhook", "url": "http://example.com/hook"},
                {"name": "x y", "type": "webhook", "url": receiver.url},
                {"name": "x", "type": "webhook", "url": receiver.url, "secret": "short"},
                {"name": "gen", "type": "webhook", "url": receiver.url},
                {"name": "x", "type": "webhook", "url": receiver.url, "extra": 1}):
        r = api.post("/admin/v1/vaults/default/channels", api_version=None, json=bad)
        assert r.status_code in (400, 409), describe(r)
        assert "error" in r.json()
        assert SECRET not in r.text
    assert len(admin(api, "GET", "/vaults/default/channels")["value"]) == 2
    # Secrets are sealed: not in the database file, not in the log.
    srv.stop()
    db = b""
    for p in srv.data_dir.rglob("*"):
        if p.is_file():
            db += p.read_bytes()
    assert SECRET.encode() not in db and generated.encode() not in db
    assert SECRET not in srv.log_text() and generated not in srv.log_text()


# ------------------------------------------------------------------------------ outage, order, dead letters


def test_receiver_down_for_a_day_gets_every_event_once_in_order(lc_server, receiver):
    srv = lc_server()
    api, certs = srv.api(), srv.clients().certs
    add_channel(api, receiver.url)
    receiver.down = True
    names = [unique("outage") for _ in range(3)]
    expected: dict[str, list[str]] = {}
    for n in names:
        certs.begin_create_certificate(n, policy(CertificatePolicyAction.auto_renew, months=12), **LRO).result()
        for _ in range(2):
            r = api.post(f"/certificates/{n}/renew", json={})
            assert r.status_code == 201, describe(r)
        expected[n] = [v.version for v in versions(certs, n)]
    support.wait_until(lambda: receiver.attempts >= 3, "first failed attempts", timeout=90)
    # A simulated day of outage, in steps: retries fail with backoff.
    for _ in range(12):
        advance(api, 2 * 3600)
        time.sleep(0.3)
    failed_attempts = receiver.attempts
    assert failed_attempts >= 6
    assert receiver.accepted == []
    pending = admin(api, "GET", "/vaults/default/deliveries", params={"status": "pending"})["value"]
    assert len(pending) == 9
    receiver.down = False
    advance(api, 6 * 3600 + 60)
    receiver.wait_for("all nine events", lambda ev: len(ev) >= 9, timeout=60)
    time.sleep(2.0)
    got = receiver.events()
    assert len(got) == 9
    assert len({e["id"] for e in got}) == 9, "an event was delivered twice"
    for n in names:
        mine = [e for e in got if e["certificate_name"] == n]
        assert [e["certificate_version"] for e in mine] == expected[n], mine
        assert [e["event_type"] for e in mine] == ["issued", "renewed", "renewed"]
    hist = admin(api, "GET", "/vaults/default/channels/hook/deliveries", params={"status": "delivered"})
    assert len(hist["value"]) == 9
    one = admin(api, "GET", f"/vaults/default/deliveries/{hist['value'][0]['id']}")
    assert one["history"][-1]["status"] == 200 and len(one["history"]) >= 2


def test_dead_letters_are_listed_and_replayed(lc_server, receiver):
    srv = lc_server("--delivery-max-attempts", "2")
    api, certs = srv.api(), srv.clients().certs
    add_channel(api, receiver.url)
    receiver.down = True
    name = unique("dead")
    certs.begin_create_certificate(name, policy(CertificatePolicyAction.auto_renew), **LRO).result()
    support.wait_until(lambda: receiver.attempts >= 1, "first attempt", timeout=90)
    advance(api, 3600)
    dead = support.wait_until(
        lambda: admin(api, "GET", "/vaults/default/deliveries", params={"status": "dead"})["value"],
        "a dead letter", timeout=90)
    assert dead[0]["event_type"] == "issued" and dead[0]["attempts"] == 2
    receiver.down = False
    r = api.post(f"/admin/v1/vaults/default/deliveries/{dead[0]['id']}/replay", api_version=None)
    assert r.status_code == 200, describe(r)
    receiver.wait_for("the replayed event", lambda ev: len(ev) == 1)
    r = api.post(f"/admin/v1/vaults/default/deliveries/{dead[0]['id']}/replay", api_version=None)
    assert r.status_code == 409, describe(r)


# ------------------------------------------------------------------------------ crash safety


def test_sigkill_during_renewals_completes_each_due_renewal_exactly_once(lc_server):
    srv = lc_server()
    api, certs = srv.api(), srv.clients().certs
    names = [unique("kill") for _ in range(30)]
    firsts = {}
    for n in names:
        firsts[n] = certs.begin_create_certificate(n, policy(CertificatePolicyAction.auto_renew), **LRO).result()
    nbf, exp = lifetime(firsts[names[-1]])
    target = nbf + (exp - nbf) * 80 // 100 + 3601
    offset = advance_to(api, target) - int(time.time())
    # Kill as soon as the first renewals land (mid-batch).
    support.wait_until(lambda: any(len(versions(certs, n)) > 1 for n in names), "renewals starting",
                       timeout=90, interval=0.05)
    srv.proc.kill()
    srv.proc.wait(timeout=10)
    srv.stop()
    srv.start()
    # The test clock starts at the wall clock again: move it back to where it was.
    advance(api, max(0, int(time.time()) + offset - server_now(api)))
    support.wait_until(lambda: all(len(versions(certs, n)) >= 2 for n in names), "every renewal", timeout=180)
    time.sleep(3.0)
    counts = {n: len(versions(certs, n)) for n in names}
    assert all(c == 2 for c in counts.values()), counts
    renewed = support.db_query(srv.data_dir, "SELECT cert_name, COUNT(*) FROM events "
                               "WHERE kind = 'renewed' GROUP BY cert_name")
    assert sorted(renewed) == sorted((n, 1) for n in names)
