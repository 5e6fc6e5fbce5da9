"""The managed key of each certificate version and key operations through it (§7)."""

from __future__ import annotations

import hashlib
import os

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.keys.crypto import EncryptionAlgorithm, KeyWrapAlgorithm, SignatureAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils

import support
from support import (
    B64URL_RE,
    CURVE_BYTES,
    LRO,
    assert_error,
    b64url,
    b64url_decode,
    load_cer,
    ok_json,
    self_policy,
    unique,
)

PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


@pytest.fixture(scope="module")
def ec_certs(certs, ec_cert):
    out = {"P-256": ec_cert}
    for curve in ("P-384", "P-521"):
        name = unique(f"key-ec{curve[2:]}")
        out[curve] = certs.begin_create_certificate(
            name, self_policy(f"CN={name}", key_type="EC", curve=curve), **LRO).result(timeout=60)
    return out


def rsa_pub(cert):
    return load_cer(cert.cer).public_key()


# ----------------------------------------------------------------------------- JWK


def test_rsa_key_matches_certificate(keys, rsa_cert):
    k = keys.get_key(rsa_cert.name, rsa_cert.properties.version)
    assert k.id == rsa_cert.key_id
    assert k.key_type == "RSA"
    nums = rsa_pub(rsa_cert).public_numbers()
    assert int.from_bytes(k.key.n, "big") == nums.n
    assert int.from_bytes(k.key.e, "big") == nums.e
    assert k.properties.managed is True
    for m in PRIVATE_MEMBERS:
        assert getattr(k.key, m, None) is None, f"private member {m} returned"


def test_rsa_key_ops_follow_key_usage(keys, rsa_cert):
    """The Key Vault key-usage table (the product's seed document): digitalSignature -> sign,
    verify; keyEncipherment -> wrapKey, unwrapKey. The default usage is exactly those two."""
    ops = set(keys.get_key(rsa_cert.name).key_operations or [])
    assert ops == {"sign", "verify", "wrapKey", "unwrapKey"}, ops


def test_rsa_jwk_wire_encoding(server, api, rsa_cert):
    body = ok_json(api.get(f"/keys/{rsa_cert.name}/{rsa_cert.properties.version}"))
    key = body["key"]
    assert key["kid"] == rsa_cert.key_id
    assert key["kty"] == "RSA"
    assert B64URL_RE.match(key["n"]) and B64URL_RE.match(key["e"]), "JWK members must be base64url, no padding"
    n = b64url_decode(key["n"])
    assert n[0] != 0, "n must have no leading zero byte"
    assert len(n) == 256
    assert key["e"] == "AQAB"
    for m in PRIVATE_MEMBERS:
        assert m not in key, f"private member {m} on the wire"
    assert body["managed"] is True
    assert isinstance(body.get("attributes"), dict) and body["attributes"].get("enabled") is True


@pytest.mark.parametrize("curve", ["P-256", "P-384", "P-521"])
def test_ec_key_matches_certificate(keys, ec_certs, curve):
    cert = ec_certs[curve]
    k = keys.get_key(cert.name, cert.properties.version)
    assert k.key_type == "EC"
    assert k.key.crv == curve
    width = CURVE_BYTES[curve]
    assert len(k.key.x) == width and len(k.key.y) == width, f"{curve} coordinates must be {width} bytes"
    nums = load_cer(cert.cer).public_key().public_numbers()
    assert int.from_bytes(k.key.x, "big") == nums.x
    assert int.from_bytes(k.key.y, "big") == nums.y
    assert k.properties.managed is True
    assert getattr(k.key, "d", None) is None


def test_ec_key_ops_sign_verify_only(keys, ec_cert):
    ops = set(keys.get_key(ec_cert.name).key_operations or [])
    assert {"sign", "verify"} <= ops, ops
    assert not ops & {"encrypt", "decrypt", "wrapKey", "unwrapKey"}, ops


@pytest.mark.parametrize("suffix", ["", "/"], ids=["no-slash", "trailing-slash"])
def test_get_latest_key_raw(api, rsa_cert, suffix):
    body = ok_json(api.get(f"/keys/{rsa_cert.name}{suffix}"))
    assert body["key"]["kid"] == rsa_cert.key_id


def test_get_key_latest_and_by_version(certs, keys):
    name = unique("key-versions")
    pol = self_policy(f"CN={name}", key_type="EC", curve="P-256")
    first = certs.begin_create_certificate(name, pol, **LRO).result(timeout=60)
    second = certs.begin_create_certificate(name, pol, **LRO).result(timeout=60)
    latest = keys.get_key(name)
    assert latest.id == second.key_id and latest.properties.version == second.properties.version
    old = keys.get_key(name, first.properties.version)
    assert old.id == first.key_id
    assert int.from_bytes(old.key.x, "big") == load_cer(first.cer).public_key().public_numbers().x
    assert old.key.x != latest.key.x, "reuse_key=false must give a new key per version"


def test_get_missing_key_is_404(keys):
    with pytest.raises(ResourceNotFoundError):
        keys.get_key(unique("no-such-key"))


def test_managed_key_cannot_be_deleted_directly(api, keys, ec_cert):
    r = api.delete(f"/keys/{ec_cert.name}")
    assert 400 <= r.status_code < 500, support.describe(r)
    assert keys.get_key(ec_cert.name).id == ec_cert.key_id


# ----------------------------------------------------------------------------- RSA operations


@pytest.mark.parametrize("alg,pad", [
    (SignatureAlgorithm.rs256, lambda: padding.PKCS1v15()),
    (SignatureAlgorithm.ps256, lambda: padding.PSS(padding.MGF1(hashes.SHA256()), 32)),
], ids=["RS256", "PS256"])
def test_rsa_sign_verifies_locally(clients, rsa_cert, alg, pad):
    crypto = clients.crypto(rsa_cert.key_id)
    digest = hashlib.sha256(b"certvault sign " + alg.value.encode()).digest()
    res = crypto.sign(alg, digest)
    assert res.key_id == rsa_cert.key_id
    assert len(res.signature) == 256
    rsa_pub(rsa_cert).verify(res.signature, digest, pad(), asym_utils.Prehashed(hashes.SHA256()))
    assert crypto.verify(alg, digest, res.signature).is_valid


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_rsa_verify_on_service(api, clients, rsa_cert, alg):
    crypto = clients.crypto(rsa_cert.key_id)
    digest = hashlib.sha256(b"service verify").digest()
    sig = crypto.sign(SignatureAlgorithm(alg), digest).signature
    path = f"/keys/{rsa_cert.name}/{rsa_cert.properties.version}/verify"
    good = ok_json(api.post(path, json={"alg": alg, "digest": b64url(digest), "value": b64url(sig)}))
    assert good.get("value") is True, good
    bad_sig = bytes([sig[0] ^ 1]) + sig[1:]
    bad = ok_json(api.post(path, json={"alg": alg, "digest": b64url(digest), "value": b64url(bad_sig)}))
    assert bad.get("value") is False, bad


def test_rsa_sign_raw_wire(api, rsa_cert):
    digest = hashlib.sha384(b"rs384").digest()
    body = ok_json(api.post(f"/keys/{rsa_cert.name}/{rsa_cert.properties.version}/sign",
                            json={"alg": "RS384", "value": b64url(digest)}))
    assert body["kid"] == rsa_cert.key_id
    assert B64URL_RE.match(body["value"])
    rsa_pub(rsa_cert).verify(b64url_decode(body["value"]), digest, padding.PKCS1v15(),
                             asym_utils.Prehashed(hashes.SHA384()))


def test_sign_with_empty_version_segment(api, rsa_cert):
    """`/keys/{n}//sign` from a client built on an unversioned kid means latest (§7)."""
    digest = hashlib.sha256(b"empty version").digest()
    body = ok_json(api.post(f"/keys/{rsa_cert.name}//sign", json={"alg": "RS256", "value": b64url(digest)}))
    assert body["kid"] == rsa_cert.key_id, "kid in the answer must be the versioned kid"
    rsa_pub(rsa_cert).verify(b64url_decode(body["value"]), digest, padding.PKCS1v15(),
                             asym_utils.Prehashed(hashes.SHA256()))


def test_crypto_client_on_unversioned_kid(clients, rsa_cert):
    crypto = clients.crypto(f"{clients.url}/keys/{rsa_cert.name}")
    digest = hashlib.sha256(b"unversioned").digest()
    sig = crypto.sign(SignatureAlgorithm.rs256, digest).signature
    rsa_pub(rsa_cert).verify(sig, digest, padding.PKCS1v15(), asym_utils.Prehashed(hashes.SHA256()))


def test_rsa_oaep_decrypt_on_service(clients, rsa_enc_cert):
    plaintext = b"secret message for RSA-OAEP"
    ct = rsa_pub(rsa_enc_cert).encrypt(plaintext, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    res = clients.crypto(rsa_enc_cert.key_id).decrypt(EncryptionAlgorithm.rsa_oaep, ct)
    assert res.plaintext == plaintext


def test_rsa_oaep_encrypt_decrypt_roundtrip(clients, rsa_enc_cert):
    crypto = clients.crypto(rsa_enc_cert.key_id)
    ct = crypto.encrypt(EncryptionAlgorithm.rsa_oaep, b"roundtrip").ciphertext
    assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ct).plaintext == b"roundtrip"


def test_rsa_oaep256_encrypt_decrypt_on_service_raw(api, clients, rsa_enc_cert):
    """Service-side encrypt (raw), then service decrypt: both directions over the wire."""
    path = f"/keys/{rsa_enc_cert.name}/{rsa_enc_cert.properties.version}"
    enc = ok_json(api.post(f"{path}/encrypt", json={"alg": "RSA-OAEP-256", "value": b64url(b"wire")}))
    assert enc["kid"] == rsa_enc_cert.key_id
    assert len(b64url_decode(enc["value"])) == 256
    dec = ok_json(api.post(f"{path}/decrypt", json={"alg": "RSA-OAEP-256", "value": enc["value"]}))
    assert b64url_decode(dec["value"]) == b"wire"


def test_rsa1_5_decrypt_on_service(clients, rsa_enc_cert):
    ct = rsa_pub(rsa_enc_cert).encrypt(b"pkcs1 v1.5", padding.PKCS1v15())
    assert clients.crypto(rsa_enc_cert.key_id).decrypt(EncryptionAlgorithm.rsa1_5, ct).plaintext == b"pkcs1 v1.5"


def test_rsa_oaep256_unwrap_on_service(clients, rsa_cert):
    cek = os.urandom(32)
    wrapped = rsa_pub(rsa_cert).encrypt(cek, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    res = clients.crypto(rsa_cert.key_id).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped)
    assert res.key == cek


def test_rsa_wrap_unwrap_roundtrip(clients, rsa_cert):
    crypto = clients.crypto(rsa_cert.key_id)
    cek = os.urandom(32)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, cek).encrypted_key
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped).key == cek


@pytest.mark.parametrize("op", ["wrapkey", "wrapKey", "WRAPKEY"])
def test_key_op_routes_ignore_case(api, rsa_cert, op):
    """.NET sends wrapKey/unwrapKey, Python and JS wrapkey/unwrapkey (§2)."""
    path = f"/keys/{rsa_cert.name}/{rsa_cert.properties.version}"
    cek = os.urandom(16)
    w = ok_json(api.post(f"{path}/{op}", json={"alg": "RSA-OAEP", "value": b64url(cek)}))
    u = ok_json(api.post(f"{path}/{op.replace('wrap', 'unwrap').replace('WRAP', 'UNWRAP')}",
                         json={"alg": "RSA-OAEP", "value": w["value"]}))
    assert b64url_decode(u["value"]) == cek


# ----------------------------------------------------------------------------- EC operations


@pytest.mark.parametrize("curve,alg,hash_cls", [
    ("P-256", SignatureAlgorithm.es256, hashes.SHA256),
    ("P-384", SignatureAlgorithm.es384, hashes.SHA384),
], ids=["ES256", "ES384"])
def test_ec_sign_is_raw_r_s(clients, ec_certs, curve, alg, hash_cls):
    cert = ec_certs[curve]
    crypto = clients.crypto(cert.key_id)
    h = hashes.Hash(hash_cls())
    h.update(b"ec signing")
    digest = h.finalize()
    sig = crypto.sign(alg, digest).signature
    width = CURVE_BYTES[curve]
    assert len(sig) == 2 * width, f"{alg.value} signature must be raw r||s ({2 * width} bytes), got {len(sig)}"
    r, s = int.from_bytes(sig[:width], "big"), int.from_bytes(sig[width:], "big")
    der_sig = asym_utils.encode_dss_signature(r, s)
    load_cer(cert.cer).public_key().verify(der_sig, digest, ec.ECDSA(asym_utils.Prehashed(hash_cls())))
    assert crypto.verify(alg, digest, sig).is_valid


def test_ec_verify_on_service(api, clients, ec_cert):
    digest = hashlib.sha256(b"ec service verify").digest()
    sig = clients.crypto(ec_cert.key_id).sign(SignatureAlgorithm.es256, digest).signature
    path = f"/keys/{ec_cert.name}/{ec_cert.properties.version}/verify"
    assert ok_json(api.post(path, json={"alg": "ES256", "digest": b64url(digest), "value": b64url(sig)}))["value"] is True
    other = hashlib.sha256(b"other").digest()
    assert ok_json(api.post(path, json={"alg": "ES256", "digest": b64url(other), "value": b64url(sig)}))["value"] is False


# ----------------------------------------------------------------------------- rejected key operations


@pytest.mark.parametrize("length", [20, 31, 48])
def test_sign_digest_length_must_fit_algorithm(api, rsa_cert, length):
    r = api.post(f"/keys/{rsa_cert.name}/{rsa_cert.properties.version}/sign",
                 json={"alg": "RS256", "value": b64url(os.urandom(length))})
    assert_error(r, 400, "BadParameter")


def test_sign_with_algorithm_of_other_key_type_is_400(api, rsa_cert):
    r = api.post(f"/keys/{rsa_cert.name}/{rsa_cert.properties.version}/sign",
                 json={"alg": "ES256", "value": b64url(os.urandom(32))})
    assert_error(r, 400)


def test_encrypt_with_ec_key_is_rejected(api, ec_cert):
    r = api.post(f"/keys/{ec_cert.name}/{ec_cert.properties.version}/encrypt",
                 json={"alg": "RSA-OAEP", "value": b64url(b"x")})
    assert_error(r, (400, 403))


def test_key_op_on_missing_key_is_404(api):
    r = api.post(f"/keys/{unique('nokey')}//sign", json={"alg": "RS256", "value": b64url(os.urandom(32))})
    assert_error(r, 404)


def test_enc_cert_key_ops(keys, rsa_enc_cert):
    ops = set(keys.get_key(rsa_enc_cert.name).key_operations or [])
    assert ops == {"sign", "verify", "encrypt", "decrypt", "wrapKey", "unwrapKey"}, ops


@pytest.mark.parametrize("op,alg", [("encrypt", "RSA-OAEP"), ("decrypt", "RSA-OAEP")])
def test_operation_outside_key_ops_is_refused(api, rsa_cert, op, alg):
    """Default usage (digitalSignature + keyEncipherment) gives no encrypt/decrypt: refused
    with 403 in the Key Vault error shape."""
    path = f"/keys/{rsa_cert.name}/{rsa_cert.properties.version}/{op}"
    r = api.post(path, json={"alg": alg, "value": b64url(os.urandom(256 if op == "decrypt" else 16))})
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "Forbidden" and err["innererror"]["code"] == "KeyOperationForbidden", err


@pytest.mark.parametrize("op", ["wrapkey", "unwrapkey", "encrypt"])
def test_ec_key_only_signs(api, ec_cert, op):
    path = f"/keys/{ec_cert.name}/{ec_cert.properties.version}/{op}"
    r = api.post(path, json={"alg": "RSA-OAEP", "value": b64url(b"x" * 32)})
    assert r.status_code == 403, r.text
