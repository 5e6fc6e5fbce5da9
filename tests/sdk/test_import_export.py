"""Import (PEM, PFX in several flavours) and the managed secret of each version (§6 Import, §7)."""

from __future__ import annotations

import base64
import subprocess
import tempfile
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.certificates import (
    CertificateContentType,
    CertificatePolicy,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

import support
from support import (
    B64STD_RE,
    LRO,
    assert_error,
    cert_pem,
    der,
    load_cer,
    make_ca,
    make_leaf,
    name_cn,
    ok_json,
    pem_blocks,
    pem_bundle,
    pkcs8_der,
    self_policy,
    self_signed,
    spki,
    unique,
)

PEM_POLICY = CertificatePolicy(content_type=CertificateContentType.pem)


def key_for(kind: str):
    if kind == "rsa-2048":
        return support.rsa_key(2048)
    return support.ec_key({"ec-p256": "P-256", "ec-p384": "P-384"}[kind])


def pfx(key, cert, password: bytes | None, chain=(), name: bytes = b"imported"):
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return pkcs12.serialize_key_and_certificates(name, key, cert, list(chain) or None, enc)


def legacy_pfx_cryptography(key, cert, password: bytes) -> bytes:
    enc = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2000)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())
        .build(password)
    )
    return pkcs12.serialize_key_and_certificates(b"legacy", key, cert, None, enc)


def openssl_pfx(key, cert, password: str, *args: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        k, c, out = Path(d, "k.pem"), Path(d, "c.pem"), Path(d, "out.pfx")
        k.write_bytes(support.pkcs8_pem(key))
        c.write_bytes(cert_pem(cert))
        subprocess.run(["openssl", "pkcs12", "-export", *args, "-inkey", str(k), "-in", str(c),
                        "-passout", f"pass:{password}", "-out", str(out)], check=True, capture_output=True)
        return out.read_bytes()


def assert_not_created(certs, name):
    with pytest.raises(ResourceNotFoundError):
        certs.get_certificate(name)


# ----------------------------------------------------------------------------- import: formats


def test_import_pem_raw_text_js_style(server, api, certs):
    """value = the PEM text itself (JS SDK, Azure CLI) (§6 Import)."""
    name = unique("imp-pem-raw")
    key, cert = self_signed(f"{name}.example.test")
    body = ok_json(api.post(f"/certificates/{name}/import", json={
        "value": pem_bundle(key, cert).decode(),
        "policy": {"secret_props": {"contentType": "application/x-pem-file"}},
    }))
    assert base64.b64decode(body["cer"]) == der(cert)
    v = body["id"].rsplit("/", 1)[1]
    assert body["id"] == f"{server.url}/certificates/{name}/{v}"
    assert body["kid"] == f"{server.url}/keys/{name}/{v}"
    assert body["sid"] == f"{server.url}/secrets/{name}/{v}"
    assert body["attributes"]["enabled"] is True
    assert body["policy"]["secret_props"]["contentType"] == "application/x-pem-file"


def test_import_pem_base64_python_style(certs):
    """value = base64 of the PEM text (Python SDK) (§6 Import)."""
    name = unique("imp-pem-b64")
    key, cert = self_signed(f"{name}.example.test")
    out = certs.import_certificate(name, pem_bundle(key, cert), policy=PEM_POLICY)
    assert bytes(out.cer) == der(cert)
    assert out.policy.content_type == CertificateContentType.pem


@pytest.mark.parametrize("kind", ["rsa-2048", "ec-p256", "ec-p384"])
def test_import_pem_key_types(certs, kind):
    name = unique(f"imp-{kind}")
    key, cert = self_signed(f"{name}.example.test", key_for(kind))
    out = certs.import_certificate(name, pem_bundle(key, cert), policy=PEM_POLICY)
    assert bytes(out.cer) == der(cert)
    p = out.policy
    if kind.startswith("rsa"):
        assert p.key_type == "RSA" and p.key_size == 2048, (p.key_type, p.key_size)
    else:
        assert p.key_type == "EC", p.key_type
        assert p.key_curve_name == {"ec-p256": "P-256", "ec-p384": "P-384"}[kind], p.key_curve_name


def test_import_pfx_with_password(certs):
    name = unique("imp-pfx-pw")
    key, cert = self_signed(f"{name}.example.test", support.ec_key())
    out = certs.import_certificate(name, pfx(key, cert, b"p@ss-w0rd"), password="p@ss-w0rd")
    assert bytes(out.cer) == der(cert)
    assert out.policy.content_type == CertificateContentType.pkcs12


def test_import_pfx_without_password(certs):
    name = unique("imp-pfx-nopw")
    key, cert = self_signed(f"{name}.example.test")
    out = certs.import_certificate(name, pfx(key, cert, None))
    assert bytes(out.cer) == der(cert)


@pytest.mark.parametrize("flavour", ["cryptography-3des", "openssl-3des", "openssl-legacy-rc2"])
def test_import_legacy_pfx(certs, secrets, flavour):
    name = unique(f"imp-legacy-{flavour}")
    key, cert = self_signed(f"{name}.example.test")
    if flavour == "cryptography-3des":
        data = legacy_pfx_cryptography(key, cert, b"legacy-pw")
    elif flavour == "openssl-3des":
        data = openssl_pfx(key, cert, "legacy-pw", "-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES",
                           "-macalg", "sha1")
    else:
        data = openssl_pfx(key, cert, "legacy-pw", "-legacy")
    out = certs.import_certificate(name, data, password="legacy-pw")
    assert bytes(out.cer) == der(cert)
    k, _c, _extra = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret(name).value), None)
    assert spki(k.public_key()) == spki(key.public_key())


def test_import_pem_with_chain(certs, secrets):
    name = unique("imp-chain")
    ca_key, ca = make_ca(f"{name} CA")
    key = support.rsa_key()
    leaf = make_leaf(ca_key, ca, name_cn(f"{name}.example.test"), key.public_key(), dns=[f"{name}.example.test"])
    out = certs.import_certificate(name, pem_bundle(key, leaf, [ca]), policy=PEM_POLICY)
    assert bytes(out.cer) == der(leaf), "cer must be the leaf, not the CA"
    blocks = pem_blocks(secrets.get_secret(name).value)
    assert [b[0] for b in blocks] == ["PRIVATE KEY", "CERTIFICATE", "CERTIFICATE"]
    assert blocks[1][1] == der(leaf) and blocks[2][1] == der(ca)


def test_import_preserve_cert_order(certs, api):
    """preserveCertOrder (7.6+) is stored and returned (§4 import, §5 CertificateBundle)."""
    name = unique("imp-preserve")
    ca_key, ca = make_ca(f"{name} CA")
    key = support.ec_key()
    leaf = make_leaf(ca_key, ca, name_cn(name), key.public_key())
    out = certs.import_certificate(name, pem_bundle(key, leaf, [ca]), policy=PEM_POLICY, preserve_order=True)
    assert out.properties.preserve_order is True
    assert ok_json(api.get(f"/certificates/{name}/")).get("preserveCertOrder") is True


def test_import_pfx_with_chain(certs, secrets):
    name = unique("imp-pfx-chain")
    ca_key, ca = make_ca(f"{name} CA")
    key = support.ec_key()
    leaf = make_leaf(ca_key, ca, name_cn(f"{name}.example.test"), key.public_key())
    out = certs.import_certificate(name, pfx(key, leaf, b"pw", chain=[ca]), password="pw")
    assert bytes(out.cer) == der(leaf)
    k, c, extra = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret(name).value), None)
    assert der(c) == der(leaf)
    assert [der(e) for e in extra] == [der(ca)]
    assert spki(k.public_key()) == spki(key.public_key())


def test_import_pem_key_after_certificate(certs):
    """Order inside an imported PEM should not matter."""
    name = unique("imp-pem-order")
    key, cert = self_signed(f"{name}.example.test")
    out = certs.import_certificate(name, cert_pem(cert) + support.pkcs8_pem(key), policy=PEM_POLICY)
    assert bytes(out.cer) == der(cert)


def test_import_derives_policy_from_certificate(server, api):
    name = unique("imp-policy")
    key, cert = self_signed(f"{name}.example.test", dns=[f"{name}.example.test", "www.example.test"])
    body = ok_json(api.post(f"/certificates/{name}/import", json={
        "value": base64.b64encode(pfx(key, cert, None)).decode()}))
    p = body["policy"]
    assert p["id"] == f"{server.url}/certificates/{name}/policy"
    assert p["x509_props"]["subject"] == f"CN={name}.example.test", p
    assert sorted(p["x509_props"]["sans"]["dns_names"]) == sorted([f"{name}.example.test", "www.example.test"])
    assert p["x509_props"].get("ekus") == ["1.3.6.1.5.5.7.3.1"], p
    assert set(p["x509_props"].get("key_usage") or []) == {"digitalSignature", "keyEncipherment"}, p
    assert p["issuer"]["name"] == "Unknown", p
    assert support.strip_none(p["lifetime_actions"]) == [
        {"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "EmailContacts"}}], p
    assert p["key_props"]["kty"] == "RSA" and p["key_props"]["key_size"] == 2048, p
    assert p["secret_props"]["contentType"] == "application/x-pkcs12", p


def test_import_attributes_follow_certificate_validity(certs):
    name = unique("imp-validity")
    key, cert = self_signed(f"{name}.example.test", support.ec_key(), days=30)
    out = certs.import_certificate(name, pem_bundle(key, cert), policy=PEM_POLICY, tags={"src": "pem"})
    assert out.properties.not_before == cert.not_valid_before_utc
    assert out.properties.expires_on == cert.not_valid_after_utc
    assert out.properties.tags == {"src": "pem"}
    assert out.properties.x509_thumbprint == support.sha1(der(cert))


def test_import_disabled(certs):
    name = unique("imp-disabled")
    key, cert = self_signed(f"{name}.example.test", support.ec_key())
    out = certs.import_certificate(name, pem_bundle(key, cert), policy=PEM_POLICY, enabled=False)
    assert out.properties.enabled is False
    assert certs.get_certificate(name).properties.enabled is False


def test_import_twice_makes_two_versions(certs):
    name = unique("imp-twice")
    k1, c1 = self_signed(f"{name}.example.test", support.ec_key())
    k2, c2 = self_signed(f"{name}.example.test", support.ec_key())
    a = certs.import_certificate(name, pem_bundle(k1, c1), policy=PEM_POLICY)
    b = certs.import_certificate(name, pem_bundle(k2, c2), policy=PEM_POLICY)
    assert a.properties.version != b.properties.version
    assert bytes(certs.get_certificate(name).cer) == der(c2)
    assert bytes(certs.get_certificate_version(name, a.properties.version).cer) == der(c1)
    assert len(list(certs.list_properties_of_certificate_versions(name))) == 2


# ----------------------------------------------------------------------------- import: rejected input


def test_import_wrong_pfx_password_is_400(certs, api):
    name = unique("imp-badpw")
    key, cert = self_signed(f"{name}.example.test")
    r = api.post(f"/certificates/{name}/import", json={
        "value": base64.b64encode(pfx(key, cert, b"right")).decode(), "pwd": "wrong"})
    assert_error(r, 400, "BadParameter")
    assert_not_created(certs, name)


def test_import_wrong_pfx_password_sdk_raises(certs):
    name = unique("imp-badpw-sdk")
    key, cert = self_signed(f"{name}.example.test")
    with pytest.raises(HttpResponseError) as ei:
        certs.import_certificate(name, pfx(key, cert, b"right"), password="wrong")
    assert ei.value.status_code == 400
    assert support.sdk_error_code(ei.value) == "BadParameter"


def test_import_missing_pfx_password_is_400(certs, api):
    name = unique("imp-nopw")
    key, cert = self_signed(f"{name}.example.test")
    r = api.post(f"/certificates/{name}/import", json={"value": base64.b64encode(pfx(key, cert, b"pw")).decode()})
    assert_error(r, 400, "BadParameter")
    assert_not_created(certs, name)


@pytest.mark.parametrize("what", ["garbage-pem-raw", "garbage-pem-b64", "garbage-pfx", "truncated-pfx",
                                  "not-base64", "empty"])
def test_import_corrupt_input_is_400(certs, api, what):
    name = unique("imp-corrupt")
    key, cert = self_signed(f"{name}.example.test")
    good_pfx = pfx(key, cert, None)
    broken_pem = "-----BEGIN PRIVATE KEY-----\nAAAAnotakey\n-----END PRIVATE KEY-----\n" \
                 "-----BEGIN CERTIFICATE-----\nMIIBroken\n-----END CERTIFICATE-----\n"
    value = {
        "garbage-pem-raw": broken_pem,
        "garbage-pem-b64": base64.b64encode(broken_pem.encode()).decode(),
        "garbage-pfx": base64.b64encode(b"\x30\x82\x01\x00" + bytes(range(200))).decode(),
        "truncated-pfx": base64.b64encode(good_pfx[: len(good_pfx) // 2]).decode(),
        "not-base64": "%%% not base64 at all %%%",
        "empty": "",
    }[what]
    assert_error(api.post(f"/certificates/{name}/import", json={"value": value}), 400, "BadParameter")
    assert_not_created(certs, name)


def test_import_pem_without_key_is_400(certs, api):
    name = unique("imp-nokey")
    _key, cert = self_signed(f"{name}.example.test")
    r = api.post(f"/certificates/{name}/import", json={
        "value": cert_pem(cert).decode(), "policy": {"secret_props": {"contentType": "application/x-pem-file"}}})
    assert_error(r, 400, "BadParameter")
    assert_not_created(certs, name)


def test_import_pem_key_not_matching_certificate_is_400(certs, api):
    name = unique("imp-mismatch")
    _key, cert = self_signed(f"{name}.example.test")
    other = support.rsa_key()
    r = api.post(f"/certificates/{name}/import", json={
        "value": pem_bundle(other, cert).decode(),
        "policy": {"secret_props": {"contentType": "application/x-pem-file"}}})
    assert_error(r, 400, "BadParameter")
    assert_not_created(certs, name)


def test_import_pfx_without_key_is_400(certs, api):
    name = unique("imp-pfx-nokey")
    _key, cert = self_signed(f"{name}.example.test")
    data = pkcs12.serialize_key_and_certificates(b"x", None, None, [cert], serialization.NoEncryption())
    assert_error(api.post(f"/certificates/{name}/import", json={"value": base64.b64encode(data).decode()}),
                 400, "BadParameter")
    assert_not_created(certs, name)


# ----------------------------------------------------------------------------- managed secret (§7)


def test_secret_pfx_shape(server, secrets, rsa_cert):
    s = secrets.get_secret(rsa_cert.name)
    v = rsa_cert.properties.version
    assert s.id == rsa_cert.secret_id == f"{server.url}/secrets/{rsa_cert.name}/{v}"
    assert s.properties.content_type == "application/x-pkcs12"
    assert s.properties.managed is True
    assert s.properties.key_id == rsa_cert.key_id
    assert s.properties.version == v
    assert B64STD_RE.match(s.value), "PFX secret value must be standard base64"


@pytest.mark.parametrize("password", [None, b""], ids=["None", "empty"])
def test_secret_pfx_loads_with_empty_password(secrets, rsa_cert, password):
    s = secrets.get_secret(rsa_cert.name)
    k, c, _extra = pkcs12.load_key_and_certificates(base64.b64decode(s.value), password)
    assert k is not None and c is not None
    assert der(c) == bytes(rsa_cert.cer)
    assert spki(k.public_key()) == spki(c.public_key())


def test_secret_pfx_readable_by_openssl_without_legacy_provider(secrets, rsa_cert):
    """OpenSSL 3 reads the 3DES/SHA-1 profile without -legacy; an RC2 bag would fail here (§7)."""
    data = base64.b64decode(secrets.get_secret(rsa_cert.name).value)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d, "s.pfx")
        p.write_bytes(data)
        r = subprocess.run(["openssl", "pkcs12", "-in", str(p), "-passin", "pass:", "-nodes"],
                           capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "BEGIN PRIVATE KEY" in r.stdout and "BEGIN CERTIFICATE" in r.stdout


def test_secret_raw_wire_shape(server, api, rsa_cert):
    for path in (f"/secrets/{rsa_cert.name}/", f"/secrets/{rsa_cert.name}"):
        body = ok_json(api.get(path, api_version=support.CERTS_API))
        assert body["id"] == rsa_cert.secret_id, body.get("id")
        assert body["managed"] is True
        assert body["kid"] == rsa_cert.key_id
        assert body["contentType"] == "application/x-pkcs12"
        assert isinstance(body.get("attributes"), dict)


def assert_pem_secret_layout(text: str, expect_certs: list[bytes], key_pub=None, expect_key: bool = True):
    assert "\r" not in text, "PEM secret must use \\n line endings"
    assert text.endswith("\n"), "PEM secret must end with a newline"
    blocks = pem_blocks(text)
    rebuilt = "".join(b[2] for b in blocks)
    assert rebuilt == text, f"unexpected text outside PEM blocks or bad framing:\n{text[:400]}"
    labels = [b[0] for b in blocks]
    want = (["PRIVATE KEY"] if expect_key else []) + ["CERTIFICATE"] * len(expect_certs)
    assert labels == want, f"PEM block order {labels} != {want}"
    for label, _der, raw in blocks:
        body_lines = raw.split("\n")[1:-2]
        assert all(len(line) == 64 for line in body_lines[:-1]), f"{label}: lines must be 64 columns"
        assert 0 < len(body_lines[-1]) <= 64
    certs_der = [b[1] for b in blocks if b[0] == "CERTIFICATE"]
    assert certs_der == expect_certs
    if expect_key:
        key = serialization.load_der_private_key(blocks[0][1], None)
        assert spki(key.public_key()) == spki(key_pub)
        return key
    return None


def test_secret_pem_layout(secrets, ec_cert):
    s = secrets.get_secret(ec_cert.name)
    assert s.properties.content_type == "application/x-pem-file"
    assert s.properties.managed is True and s.properties.key_id == ec_cert.key_id
    assert_pem_secret_layout(s.value, [bytes(ec_cert.cer)], load_cer(ec_cert.cer).public_key())


def test_secret_pem_of_imported_chain_layout(certs, secrets):
    name = unique("pem-chain-layout")
    ca_key, ca = make_ca(f"{name} CA", support.rsa_key())
    key = support.rsa_key()
    leaf = make_leaf(ca_key, ca, name_cn(name), key.public_key())
    certs.import_certificate(name, pem_bundle(key, leaf, [ca]), policy=PEM_POLICY)
    got = assert_pem_secret_layout(secrets.get_secret(name).value, [der(leaf), der(ca)], key.public_key())
    assert pkcs8_der(got) == pkcs8_der(key)


def test_secret_out_content_type_pem_on_pfx(secrets, rsa_cert):
    s = secrets.get_secret(rsa_cert.name, out_content_type="application/x-pem-file")
    assert s.properties.content_type == "application/x-pem-file"
    assert_pem_secret_layout(s.value, [bytes(rsa_cert.cer)], load_cer(rsa_cert.cer).public_key())


def test_secret_out_content_type_unsupported_conversion_is_400(api, ec_cert):
    r = api.get(f"/secrets/{ec_cert.name}/", api_version=support.CERTS_API,
                params={"outContentType": "application/x-pkcs12"})
    assert_error(r, 400)


def test_secret_by_version(certs, secrets):
    name = unique("secret-ver")
    pol = self_policy(f"CN={name}", key_type="EC", curve="P-256", content_type="application/x-pem-file")
    first = certs.begin_create_certificate(name, pol, **LRO).result(timeout=60)
    second = certs.begin_create_certificate(name, pol, **LRO).result(timeout=60)
    old = secrets.get_secret(name, first.properties.version)
    assert old.properties.version == first.properties.version
    assert old.id == first.secret_id
    assert pem_blocks(old.value)[1][1] == bytes(first.cer)
    new = secrets.get_secret(name)
    assert new.properties.version == second.properties.version
    assert pem_blocks(new.value)[1][1] == bytes(second.cer)


@pytest.mark.parametrize("content_type", ["application/x-pkcs12", "application/x-pem-file"])
def test_secret_not_exportable_has_no_key(certs, secrets, content_type):
    name = unique("non-exportable")
    pol = self_policy(f"CN={name}", key_type="EC", curve="P-256", content_type=content_type, exportable=False)
    c = certs.begin_create_certificate(name, pol, **LRO).result(timeout=60)
    assert c.policy.exportable is False
    s = secrets.get_secret(name)
    if content_type == "application/x-pem-file":
        assert "PRIVATE KEY" not in s.value, "non-exportable key leaked in PEM secret"
        assert_pem_secret_layout(s.value, [bytes(c.cer)], expect_key=False)
    else:
        k, cert, extra = pkcs12.load_key_and_certificates(base64.b64decode(s.value), None)
        assert k is None, "non-exportable key leaked in PFX secret"
        # Without a key there is no localKeyId pairing, so the leaf may come back among the "extra" certs.
        all_certs = ([cert] if cert is not None else []) + list(extra)
        assert [der(x) for x in all_certs] == [bytes(c.cer)]


def test_secret_of_disabled_version_is_403(certs, secrets, api):
    name = unique("secret-disabled")
    c = certs.begin_create_certificate(name, self_policy(f"CN={name}", key_type="EC", curve="P-256"),
                                       **LRO).result(timeout=60)
    certs.update_certificate_properties(name, c.properties.version, enabled=False)
    with pytest.raises(HttpResponseError) as ei:
        secrets.get_secret(name, c.properties.version)
    assert ei.value.status_code == 403
    assert_error(api.get(f"/secrets/{name}/{c.properties.version}", api_version=support.CERTS_API),
                 403, "Forbidden")


def test_secret_of_pending_certificate_is_404(certs, secrets, api):
    name = unique("secret-pending")
    op = certs.begin_create_certificate(name, self_policy(f"CN={name}", issuer="Unknown"), **LRO).result(timeout=60)
    assert op.status == "inProgress"
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret(name)
    assert_error(api.get(f"/secrets/{name}/", api_version=support.CERTS_API), 404)


def test_secret_of_missing_certificate_is_404(secrets):
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret(unique("no-such-secret"))


def test_secret_key_matches_certificate_key_rsa(secrets, keys, rsa_cert):
    k, c, _ = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret(rsa_cert.name).value), None)
    assert isinstance(k, rsa.RSAPrivateKey)
    jwk = keys.get_key(rsa_cert.name).key
    assert int.from_bytes(jwk.n, "big") == k.public_key().public_numbers().n


def test_secret_key_matches_certificate_key_ec(secrets, ec_cert):
    text = secrets.get_secret(ec_cert.name).value
    key = serialization.load_pem_private_key(text.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert spki(key.public_key()) == spki(x509.load_der_x509_certificate(bytes(ec_cert.cer)).public_key())
