"""Data dir layout, restart persistence, and private keys never stored in clear. Each test runs its own
server (own data dir and port) so it can stop and restart it."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
import ssl
import stat
from pathlib import Path

from azure.keyvault.certificates import CertificateContact, CertificateContentType, CertificatePolicy
from azure.keyvault.keys.crypto import SignatureAlgorithm
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from cryptography.hazmat.primitives.serialization import pkcs12

import support
from support import (
    DOMAIN,
    LRO,
    b64url,
    der,
    make_ca,
    make_leaf,
    pem_bundle,
    pkcs8_der,
    self_policy,
    self_signed,
    unique,
)

PEM_POLICY = CertificatePolicy(content_type=CertificateContentType.pem)


def secret_private_key(secrets, name, version=None):
    s = secrets.get_secret(name, version)
    if s.properties.content_type == "application/x-pem-file":
        return serialization.load_pem_private_key(s.value.encode(), None)
    key, _c, _e = pkcs12.load_key_and_certificates(base64.b64decode(s.value), None)
    assert key is not None, f"secret of {name} holds no key"
    return key


# ----------------------------------------------------------------------------- data dir layout


def test_data_dir_layout_and_modes(server):
    d = server.data_dir
    # On PostgreSQL the store is in the database, not in the data directory.
    assert (d / "certvault.db").is_file() != support.using_postgres()
    for secret_file in ("master.key", "admin.token"):
        p = d / secret_file
        assert p.is_file(), f"{p} missing"
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == 0o600, f"{secret_file} mode {oct(mode)} != 0o600"
    token_text = (d / "admin.token").read_text()
    assert len(token_text.strip().splitlines()) == 1 and len(token_text.strip()) >= 32, "token: one strong line"
    ca = x509.load_pem_x509_certificate((d / "tls" / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_server_certificate_covers_names_and_is_signed_by_ca(server):
    ctx = ssl.create_default_context(cafile=server.ca)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    ca = x509.load_pem_x509_certificate(Path(server.ca).read_bytes())
    leaf.verify_directly_issued_by(ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = set(san.get_values_for_type(x509.IPAddress))
    dns = set(san.get_values_for_type(x509.DNSName))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= ips, ips
    assert {"localhost", DOMAIN, f"*.{DOMAIN}"} <= dns, dns


def test_restart_reuses_token_ca_and_master_key(start_server):
    srv = start_server()
    before = {p: (srv.data_dir / p).read_bytes() for p in ("admin.token", "master.key", "tls/ca.pem")}
    srv.restart()
    after = {p: (srv.data_dir / p).read_bytes() for p in before}
    assert after == before


# ----------------------------------------------------------------------------- persistence


def test_everything_survives_restart(start_server):
    srv = start_server()
    c = srv.clients()
    rsa_name, pem_name, unk_name, del_name, issuer = (unique(p) for p in ("p-rsa", "p-pem", "p-unk", "p-del", "p-iss"))
    # a Self RSA certificate with two versions (PFX secret)
    pol = self_policy(f"CN={rsa_name}", dns=[f"{rsa_name}.example.test"], validity=3)
    v1 = c.certs.begin_create_certificate(rsa_name, pol, tags={"t": "1"}, **LRO).result(timeout=60)
    v2 = c.certs.begin_create_certificate(rsa_name, pol, **LRO).result(timeout=60)
    # an imported EC PEM certificate
    key, cert = self_signed(f"{pem_name}.example.test", support.ec_key())
    c.certs.import_certificate(pem_name, pem_bundle(key, cert), policy=PEM_POLICY)
    # a pending Unknown operation, a soft-deleted certificate, an issuer and contacts
    op = c.certs.begin_create_certificate(unk_name, self_policy(f"CN={unk_name}", issuer="Unknown"),
                                          **LRO).result(timeout=60)
    c.certs.import_certificate(del_name, pem_bundle(*self_signed(del_name, support.ec_key())), policy=PEM_POLICY)
    c.certs.begin_delete_certificate(del_name, **LRO).wait(timeout=60)
    c.certs.create_issuer(issuer, "Test", account_id="acct", password="pw")
    c.certs.set_contacts([CertificateContact(email="p@example.test", name="P")])

    snap = {
        "rsa": c.certs.get_certificate(rsa_name),
        "rsa_policy": c.certs.get_certificate_policy(rsa_name),
        "rsa_versions": sorted(p.version for p in c.certs.list_properties_of_certificate_versions(rsa_name)),
        "rsa_key": c.keys.get_key(rsa_name),
        "rsa_priv": pkcs8_der(secret_private_key(c.secrets, rsa_name)),
        "rsa_priv_v1": pkcs8_der(secret_private_key(c.secrets, rsa_name, v1.properties.version)),
        "pem_secret": c.secrets.get_secret(pem_name).value,
        "pem": c.certs.get_certificate(pem_name),
    }
    token = srv.token

    srv.restart()
    assert srv.token == token, "admin token changed across restart"
    c = srv.clients()

    rsa_cert = c.certs.get_certificate(rsa_name)
    assert rsa_cert.properties.version == v2.properties.version
    assert bytes(rsa_cert.cer) == bytes(snap["rsa"].cer)
    assert rsa_cert.properties.tags == snap["rsa"].properties.tags
    assert bytes(c.certs.get_certificate_version(rsa_name, v1.properties.version).cer) == bytes(v1.cer)
    assert sorted(p.version for p in c.certs.list_properties_of_certificate_versions(rsa_name)) == snap["rsa_versions"]
    pol_after = c.certs.get_certificate_policy(rsa_name)
    assert (pol_after.subject, pol_after.san_dns_names, pol_after.validity_in_months, pol_after.key_size) == (
        snap["rsa_policy"].subject, snap["rsa_policy"].san_dns_names, snap["rsa_policy"].validity_in_months,
        snap["rsa_policy"].key_size)
    assert c.keys.get_key(rsa_name).key.n == snap["rsa_key"].key.n
    assert pkcs8_der(secret_private_key(c.secrets, rsa_name)) == snap["rsa_priv"]
    assert pkcs8_der(secret_private_key(c.secrets, rsa_name, v1.properties.version)) == snap["rsa_priv_v1"]
    assert c.secrets.get_secret(pem_name).value == snap["pem_secret"], "PEM secret changed across restart"
    assert bytes(c.certs.get_certificate(pem_name).cer) == der(cert)
    pending = c.certs.get_certificate_operation(unk_name)
    assert pending.status == "inProgress" and bytes(pending.csr) == bytes(op.csr)
    assert del_name in [d.name for d in c.certs.list_deleted_certificates()]
    assert c.certs.get_issuer(issuer).account_id == "acct"
    assert [x.email for x in c.certs.get_contacts()] == ["p@example.test"]


def test_keys_work_after_restart(start_server):
    srv = start_server()
    c = srv.clients()
    name = unique("p-keyop")
    cert = c.certs.begin_create_certificate(name, self_policy(f"CN={name}"), **LRO).result(timeout=60)
    srv.restart()
    c = srv.clients()
    digest = hashlib.sha256(b"after restart").digest()
    sig = c.crypto(cert.key_id).sign(SignatureAlgorithm.rs256, digest).signature
    support.load_cer(cert.cer).public_key().verify(sig, digest, padding.PKCS1v15(),
                                                   asym_utils.Prehashed(hashes.SHA256()))


def test_pending_operation_merges_after_restart(start_server):
    srv = start_server()
    c = srv.clients()
    name = unique("p-merge")
    op = c.certs.begin_create_certificate(name, self_policy(f"CN={name}", issuer="Unknown"), **LRO).result(timeout=60)
    srv.restart()
    c = srv.clients()
    ca_key, ca = make_ca()
    csr = x509.load_der_x509_csr(bytes(op.csr))
    leaf = make_leaf(ca_key, ca, csr.subject, csr.public_key())
    assert bytes(c.certs.merge_certificate(name, [der(leaf), der(ca)]).cer) == der(leaf)


# ----------------------------------------------------------------------------- secrets at rest


def key_needles(key) -> dict[str, bytes]:
    """Byte strings that would betray the private key if stored in clear."""
    p8 = pkcs8_der(key)
    trad = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
    needles = {
        "PKCS#8 DER": p8,
        "traditional DER": trad,
        "PKCS#8 PEM body": base64.b64encode(p8),
        "PKCS#8 PEM first line": base64.b64encode(p8)[:64],
        "traditional PEM first line": base64.b64encode(trad)[:64],
        "PKCS#8 DER hex": p8.hex().encode(),
    }
    if isinstance(key, rsa.RSAPrivateKey):
        nums = key.private_numbers()
        for label, val in (("d", nums.d), ("p", nums.p), ("q", nums.q)):
            raw = val.to_bytes((val.bit_length() + 7) // 8, "big")
            needles[f"RSA {label} (raw)"] = raw
            needles[f"RSA {label} (JWK base64url)"] = b64url(raw).encode()
    else:
        width = support.CURVE_BYTES[{"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]]
        raw = key.private_numbers().private_value.to_bytes(width, "big")
        needles["EC d (raw)"] = raw
        needles["EC d (JWK base64url)"] = b64url(raw).encode()
    return needles


PEM_HEADERS = [b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN RSA PRIVATE KEY-----",
               b"-----BEGIN EC PRIVATE KEY-----", b"-----BEGIN ENCRYPTED PRIVATE KEY-----"]


def test_private_keys_not_stored_in_clear(start_server):
    srv = start_server()
    c = srv.clients()
    made = {}
    # Self RSA, PFX secret
    n = unique("rest-rsa-pfx")
    c.certs.begin_create_certificate(n, self_policy(f"CN={n}"), **LRO).result(timeout=60)
    made[n] = "self RSA pkcs12"
    # Self EC, PEM secret
    n = unique("rest-ec-pem")
    c.certs.begin_create_certificate(n, self_policy(f"CN={n}", key_type="EC", curve="P-384",
                                                    content_type="application/x-pem-file"), **LRO).result(timeout=60)
    made[n] = "self EC pem"
    # imported RSA PEM, imported EC PFX
    n = unique("rest-imp-pem")
    c.certs.import_certificate(n, pem_bundle(*self_signed(n)), policy=PEM_POLICY)
    made[n] = "imported RSA pem"
    n = unique("rest-imp-pfx")
    k, cert = self_signed(n, support.ec_key())
    c.certs.import_certificate(n, pkcs12.serialize_key_and_certificates(b"x", k, cert, None,
                                                                        serialization.NoEncryption()))
    made[n] = "imported EC pkcs12"
    # Unknown + merge
    n = unique("rest-merged")
    op = c.certs.begin_create_certificate(n, self_policy(f"CN={n}", issuer="Unknown"), **LRO).result(timeout=60)
    ca_key, ca = make_ca()
    csr = x509.load_der_x509_csr(bytes(op.csr))
    c.certs.merge_certificate(n, [der(make_leaf(ca_key, ca, csr.subject, csr.public_key()))])
    made[n] = "merged RSA pkcs12"

    private = {n: secret_private_key(c.secrets, n) for n in made}
    code = srv.stop()
    assert code in (0, -15), f"server exited with {code} on SIGTERM"

    files = [p for p in srv.data_dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    if support.using_postgres():
        pg_files = support.store_files()
        assert len(pg_files) > 100, "the PostgreSQL data files are scanned"
    else:
        pg_files = []
        assert "certvault.db" in names, names
    contents = {p: p.read_bytes() for p in files}
    store_contents = {p: p.read_bytes() for p in pg_files}
    hits = []
    for n, key in private.items():
        for label, needle in key_needles(key).items():
            for p, data in contents.items():
                if needle in data:
                    hits.append(f"{made[n]} ({n}): {label} found in {p.relative_to(srv.data_dir)}")
            for p, data in store_contents.items():
                if needle in data:
                    hits.append(f"{made[n]} ({n}): {label} found in PostgreSQL file {p}")
    for p, data in contents.items():
        rel = p.relative_to(srv.data_dir)
        if rel.parts[0] == "tls":
            continue  # the server's own TLS material is not a certificate secret
        for header in PEM_HEADERS:
            if header in data:
                hits.append(f"PEM header {header.decode()} found in {rel}")
    assert not hits, "private key material stored in clear:\n" + "\n".join(hits)
