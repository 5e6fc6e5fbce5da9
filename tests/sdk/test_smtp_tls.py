"""E-mail to contacts over STARTTLS and implicit TLS (SMTPS) with a private CA given by
--smtp-ca-file, against aiosmtpd; and a server certificate nobody vouches for is refused.

The CA and the server certificate (127.0.0.1, localhost) are made here with `cryptography`."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import tempfile
import time
from pathlib import Path

import pytest
from azure.keyvault.certificates import CertificateContact, CertificatePolicyAction
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import support
from lifecycle_support import SmtpSink, admin, advance_to
from support import LRO, new_server, unique
from test_lifecycle_engine import DAY, lifetime, policy

FROM = "certvault@example.test"
RCPT = "ops@example.test"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def pki():
    """A CA, a server certificate for 127.0.0.1/localhost signed by it; files in a temp dir."""
    d = Path(tempfile.mkdtemp(prefix="certvault-smtp-pki-"))
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder()
          .subject_name(_name("certvault test SMTP CA")).issuer_name(_name("certvault test SMTP CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "server.pem").write_bytes(leaf.public_bytes(pem))
    (d / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def server_tls_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    return ctx


@pytest.fixture
def run(certvault_bin, request):
    """Starts a test-clock server sending e-mail to `sink` with the given TLS mode and CA file."""
    started = []

    def factory(sink: SmtpSink, mode: str, ca_file: Path | None):
        root = Path(tempfile.mkdtemp(prefix="certvault-smtp-"))
        srv = new_server(certvault_bin, root)
        srv.extra_args = ["--test-clock", "--smtp-host", "127.0.0.1", "--smtp-port", str(sink.port),
                          "--smtp-tls", mode, "--smtp-from", FROM]
        if ca_file is not None:
            srv.extra_args += ["--smtp-ca-file", str(ca_file)]
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


def trigger_expiry_notice(srv) -> str:
    """A certificate with EmailContacts; the clock moved to its 30-day notice. Returns its name."""
    api, certs = srv.api(), srv.clients().certs
    certs.set_contacts([CertificateContact(email=RCPT, name="Ops")])
    name = unique("smtptls")
    c = certs.begin_create_certificate(name, policy(CertificatePolicyAction.email_contacts, months=3),
                                       **LRO).result()
    _, exp = lifetime(c)
    advance_to(api, exp - 30 * DAY + 10)
    return name


def email_deliveries(api) -> list:
    return [d for d in admin(api, "GET", "/vaults/default/deliveries")["value"] if d["channel"] == "email"]


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_email_over_tls_with_a_private_ca(run, pki, mode):
    sink = SmtpSink(server_tls_context(pki), mode=mode).start()
    try:
        srv = run(sink, mode, pki / "ca.pem")
        name = trigger_expiry_notice(srv)
        msgs = support.wait_until(lambda: [m for m in sink.messages if name in m[1]["Subject"]],
                                  "the notice e-mail", timeout=90)
        rcpts, msg = msgs[0]
        assert rcpts == [RCPT]
        assert msg["From"] == FROM
        assert "about_to_expire" in msg["Subject"] and name in msg["Subject"]
        tls = sink.tls[sink.messages.index(msgs[0])]
        assert tls["tls"] is True, tls
        if mode == "starttls":
            assert tls["starttls"] is True, tls
        api = srv.api()
        done = support.wait_until(
            lambda: [d for d in email_deliveries(api) if d["certificate"] == name and d["status"] == "delivered"],
            "the delivery recorded as delivered", timeout=30)
        assert done[0]["last_error"] is None, done[0]
    finally:
        sink.stop()


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_an_untrusted_smtp_certificate_is_refused(run, pki, mode):
    sink = SmtpSink(server_tls_context(pki), mode=mode).start()
    try:
        srv = run(sink, mode, None)  # the webpki roots only: the private CA is unknown
        name = trigger_expiry_notice(srv)
        api = srv.api()
        failed = support.wait_until(
            lambda: [d for d in email_deliveries(api) if d["certificate"] == name and d["last_error"]],
            "a failed e-mail delivery", timeout=90)
        d = failed[0]
        assert d["status"] in ("pending", "dead"), d
        assert "certificate" in d["last_error"].lower(), d
        detail = admin(api, "GET", f"/vaults/default/deliveries/{d['id']}")
        assert any("certificate" in (h["error"] or "").lower() for h in detail["history"]), detail
        time.sleep(1.0)
        assert not [m for m in sink.messages if name in m[1]["Subject"]]
    finally:
        sink.stop()


def test_the_ca_file_must_hold_a_certificate(certvault_bin, pki, tmp_path):
    bad = tmp_path / "empty.pem"
    bad.write_text("not a certificate\n")
    root = Path(tempfile.mkdtemp(prefix="certvault-smtp-"))
    srv = new_server(certvault_bin, root)
    srv.extra_args = ["--smtp-host", "127.0.0.1", "--smtp-port", "2525", "--smtp-tls", "starttls",
                      "--smtp-ca-file", str(bad)]
    with pytest.raises(RuntimeError, match="SMTP CA file"):
        srv.start()
    srv.stop()
    shutil.rmtree(root, ignore_errors=True)
