"""HSM keys through PKCS#11 (SoftHSM2): RSA-HSM / EC-HSM certificates whose keys are generated,
used and kept inside the token, with the official SDK's CryptographyClient; the master key inside
the token; a token that is not configured; purge destroying the key.

The token is inspected independently with OpenSC's pkcs11-tool."""
from __future__ import annotations

import secret_registry
import base64
import contextlib
import datetime
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.certificates import CertificatePolicy, KeyType, KeyUsageType
from azure.keyvault.keys.crypto import EncryptionAlgorithm, KeyWrapAlgorithm, SignatureAlgorithm
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from cryptography.hazmat.primitives.serialization import pkcs12

import support
from support import LRO, b64url, new_server, unique

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "user-pin-4711"
secret_registry.register("HSM user PIN", PIN)
secret_registry.register("HSM SO PIN", "so-pin-0815")
LABEL = "certvault"


class Token:
    """A fresh SoftHSM2 token in its own directory."""

    def __init__(self, root: Path, label: str = LABEL):
        for tool in ("softhsm2-util", "pkcs11-tool"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is required (scripts/test-all.sh installs softhsm2 and opensc)")
        if not Path(MODULE).exists():
            pytest.fail(f"the SoftHSM2 PKCS#11 module {MODULE} is missing (install softhsm2)")
        self.label = label
        tokens = root / "tokens"
        tokens.mkdir(parents=True)
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
        self.env = {"SOFTHSM2_CONF": str(self.conf)}
        self.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "so-pin-0815", "--pin", PIN])
        self.pin_file = root / "pin"
        self.pin_file.write_text(PIN + "\n")
        self.pin_file.chmod(0o600)

    def run(self, cmd: list[str]) -> str:
        r = subprocess.run(cmd, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{cmd[0]} failed: {r.stdout}{r.stderr}"
        return r.stdout

    def args(self) -> list[str]:
        return ["--pkcs11-module", MODULE, "--pkcs11-token", self.label, "--pkcs11-pin-file", str(self.pin_file)]

    def objects(self, kind: str) -> list[dict]:
        """pkcs11-tool's view of the token's objects of `kind` (privkey, secrkey, pubkey)."""
        out = self.run(["pkcs11-tool", "--module", MODULE, "--token-label", self.label, "--login", "--pin", PIN,
                        "--list-objects", "--type", kind])
        objs, cur = [], None
        for line in out.splitlines():
            if re.match(r"^\S.*Object", line):
                cur = {"head": line}
                objs.append(cur)
            elif cur is not None and ":" in line:
                k, v = line.split(":", 1)
                cur[k.strip().lower()] = v.strip()
        return objs


@contextlib.contextmanager
def softhsm_token():
    """A fresh token in a scratch directory, removed (token files included) when the block
    ends, also when it fails. Server logs live in the session log dir, not here."""
    root = Path(tempfile.mkdtemp(prefix="certvault-softhsm-"))
    try:
        yield Token(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def hsm_server(token: Token, *extra: str):
    """A server using `token`, in a scratch directory that is stopped and removed when the
    block ends, also when it (or the server's start) fails."""
    root = Path(tempfile.mkdtemp(prefix="certvault-hsm-"))
    srv = None
    try:
        srv = new_server(os.environ["CERTVAULT_BIN"], root)
        srv.extra_args = [*token.args(), *extra]
        srv.extra_env = dict(token.env)
        srv.start()
        yield srv
    finally:
        if srv is not None:
            srv.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def token():
    with softhsm_token() as t:
        yield t


@pytest.fixture(scope="module")
def hsm(token):
    """A server whose HSM keys and master key live in the token."""
    with hsm_server(token, "--master-key", "pkcs11") as srv:
        yield srv


@pytest.fixture(scope="module")
def hclients(hsm):
    return hsm.clients()


def hsm_policy(name: str, kty: str, **kw) -> CertificatePolicy:
    usage = kw.pop("key_usage", None)
    if usage is None:
        usage = [KeyUsageType.digital_signature] + ([KeyUsageType.key_encipherment, KeyUsageType.data_encipherment]
                                                    if kty == "RSA-HSM" else [])
    return support.self_policy(f"CN={name}.hsm.test", key_type=kty, exportable=False, key_usage=usage, **kw)


@pytest.fixture(scope="module")
def rsa_hsm(hclients):
    name = unique("hsm-rsa")
    return hclients.certs.begin_create_certificate(name, hsm_policy(name, "RSA-HSM"), **LRO).result(timeout=120)


@pytest.fixture(scope="module")
def ec_hsm(hclients):
    name = unique("hsm-ec")
    pol = hsm_policy(name, "EC-HSM", curve="P-256", content_type="application/x-pem-file")
    return hclients.certs.begin_create_certificate(name, pol, **LRO).result(timeout=120)


def cert_pub(cert):
    return x509.load_der_x509_certificate(bytes(cert.cer)).public_key()


def test_master_key_lives_in_the_token(hsm, token):
    text = (hsm.data_dir / "master.key").read_text().strip()
    assert text.startswith(f"pkcs11:token={LABEL};"), "master.key must hold a token reference, not key bytes"
    secret_keys = token.objects("secrkey")
    assert secret_keys, "no AES key in the token"
    for k in secret_keys:
        access = k.get("access", "")
        assert "sensitive" in access and "never extractable" in access, k


def test_rsa_hsm_key_is_in_the_token_and_not_extractable(hclients, rsa_hsm, token):
    k = hclients.keys.get_key(rsa_hsm.name, rsa_hsm.properties.version)
    assert k.key_type == KeyType.rsa_hsm
    assert k.properties.exportable is False
    nums = cert_pub(rsa_hsm).public_numbers()
    assert int.from_bytes(k.key.n, "big") == nums.n and int.from_bytes(k.key.e, "big") == nums.e
    privs = [o for o in token.objects("privkey") if rsa_hsm.name in o.get("label", "")]
    assert len(privs) == 1, token.objects("privkey")
    access = privs[0].get("access", "")
    assert "sensitive" in access and "never extractable" in access, privs[0]


def test_hsm_secret_has_no_private_key(hclients, rsa_hsm, ec_hsm):
    s = hclients.secrets.get_secret(rsa_hsm.name)
    key, cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(s.value), None)
    assert key is None, "an HSM key must never appear in the secret"
    pem = hclients.secrets.get_secret(ec_hsm.name).value
    assert "PRIVATE KEY" not in pem and "BEGIN CERTIFICATE" in pem


def test_rsa_hsm_sign_verify(hclients, rsa_hsm):
    pub = cert_pub(rsa_hsm)
    crypto = hclients.crypto(rsa_hsm.key_id)
    digest = hashlib.sha256(b"signed inside the token").digest()
    for alg, pad in ((SignatureAlgorithm.rs256, padding.PKCS1v15()),
                     (SignatureAlgorithm.ps256, padding.PSS(padding.MGF1(hashes.SHA256()), 32))):
        sig = crypto.sign(alg, digest).signature
        pub.verify(sig, digest, pad, asym_utils.Prehashed(hashes.SHA256()))
        assert crypto.verify(alg, digest, sig).is_valid


def test_rsa_hsm_decrypt_and_unwrap(hclients, rsa_hsm):
    pub = cert_pub(rsa_hsm)
    crypto = hclients.crypto(rsa_hsm.key_id)
    ct = pub.encrypt(b"for the token", padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ct).plaintext == b"for the token"
    ct = pub.encrypt(b"pkcs1", padding.PKCS1v15())
    assert crypto.decrypt(EncryptionAlgorithm.rsa1_5, ct).plaintext == b"pkcs1"
    cek = os.urandom(32)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep, cek).encrypted_key
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped).key == cek


def test_oaep256_unsupported_by_softhsm_is_a_clear_400(hsm, rsa_hsm):
    pub = cert_pub(rsa_hsm)
    ct = pub.encrypt(b"x", padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    r = hsm.api().post(f"/keys/{rsa_hsm.name}/{rsa_hsm.properties.version}/decrypt",
                       json={"alg": "RSA-OAEP-256", "value": b64url(ct)})
    assert r.status_code == 400, r.text
    assert "token" in r.json()["error"]["message"].lower()


def test_ec_hsm_sign(hclients, ec_hsm):
    k = hclients.keys.get_key(ec_hsm.name)
    assert k.key_type == KeyType.ec_hsm and k.key.crv == "P-256"
    crypto = hclients.crypto(ec_hsm.key_id)
    digest = hashlib.sha256(b"ec in the token").digest()
    sig = crypto.sign(SignatureAlgorithm.es256, digest).signature
    assert len(sig) == 64
    der = asym_utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    cert_pub(ec_hsm).verify(der, digest, ec.ECDSA(asym_utils.Prehashed(hashes.SHA256())))


def test_hsm_certificate_signed_in_token_verifies(rsa_hsm):
    c = x509.load_der_x509_certificate(bytes(rsa_hsm.cer))
    c.public_key().verify(c.signature, c.tbs_certificate_bytes, padding.PKCS1v15(), c.signature_hash_algorithm)


def test_exportable_hsm_policy_is_refused(hsm, hclients):
    name = unique("hsm-exp")
    r = hsm.api().post(f"/certificates/{name}/create", json={"policy": {
        "key_props": {"kty": "RSA-HSM", "exportable": True}, "x509_props": {"subject": "CN=x"},
        "issuer": {"name": "Self"}}})
    assert r.status_code == 400, r.text
    assert "HSM" in r.json()["error"]["message"]


def test_unknown_issuer_csr_signed_in_token_then_merge(hclients):
    name = unique("hsm-csr")
    pol = hsm_policy(name, "EC-HSM", curve="P-384", issuer="Unknown")
    op = hclients.certs.begin_create_certificate(name, pol, **LRO).result(timeout=60)
    csr = x509.load_der_x509_csr(bytes(op.csr))
    assert csr.is_signature_valid
    now = support.now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "hsm merge CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca_name).public_key(csr.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(ca_key, hashes.SHA256()))
    der = leaf.public_bytes(serialization.Encoding.DER)
    merged = hclients.certs.merge_certificate(name, [der, ca.public_bytes(serialization.Encoding.DER)])
    assert bytes(merged.cer) == der
    crypto = hclients.crypto(merged.key_id)
    digest = hashlib.sha384(b"after merge").digest()
    sig = crypto.sign(SignatureAlgorithm.es384, digest).signature
    d = asym_utils.encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"))
    leaf.public_key().verify(d, digest, ec.ECDSA(asym_utils.Prehashed(hashes.SHA384())))


def test_restart_with_token_master_key(hsm, hclients, ec_hsm):
    before = hclients.secrets.get_secret(ec_hsm.name).value
    hsm.restart()
    after = hsm.clients().secrets.get_secret(ec_hsm.name).value
    assert before == after


def test_purge_destroys_the_token_key(hsm, hclients, token):
    name = unique("hsm-purge")
    hclients.certs.begin_create_certificate(name, hsm_policy(name, "EC-HSM", curve="P-256"), **LRO).result(timeout=60)
    assert any(name in o.get("label", "") for o in token.objects("privkey"))
    hclients.certs.begin_delete_certificate(name, **LRO).wait()
    assert any(name in o.get("label", "") for o in token.objects("privkey")), "soft delete must keep the key"
    hclients.certs.purge_deleted_certificate(name)
    assert not any(name in o.get("label", "") for o in token.objects("privkey")), "purge must destroy the key"


def test_token_not_configured_and_master_key_moves(token):
    """A server with a file master key makes an HSM certificate, restarts without the token
    (clear refusal, no crash), then moves its master key into the token and back."""
    with hsm_server(token) as srv:
        c = srv.clients()
        name = unique("hsm-gone")
        cert = c.certs.begin_create_certificate(name, hsm_policy(name, "EC-HSM", curve="P-256"), **LRO).result(timeout=60)
        srv.extra_args, srv.extra_env = [], {}
        srv.restart()
        c = srv.clients()
        assert bytes(c.certs.get_certificate(name).cer) == bytes(cert.cer)
        r = srv.api().post(f"/keys/{name}/{cert.properties.version}/sign",
                           json={"alg": "ES256", "value": b64url(hashlib.sha256(b"x").digest())})
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["innererror"]["code"] == "KeyNotAvailable" and LABEL in err["message"], err
        name2 = unique("hsm-none")
        with pytest.raises(HttpResponseError) as e:
            c.certs.begin_create_certificate(name2, hsm_policy(name2, "RSA-HSM"), **LRO).result(timeout=60)
        assert e.value.status_code == 400 and "PKCS#11" in str(e.value)
        # moving the master key into a token this server does not have is refused
        r = srv.api().post("/admin/v1/master-key/rotate", json={"to": "pkcs11"})
        assert r.status_code == 400, r.text

        srv.extra_args, srv.extra_env = token.args(), dict(token.env)
        srv.restart()
        r = srv.api().post("/admin/v1/master-key/rotate", json={"to": "pkcs11"})
        assert r.status_code == 200 and r.json()["master_key"] == "pkcs11", r.text
        assert (srv.data_dir / "master.key").read_text().startswith("pkcs11:")
        srv.restart()
        c = srv.clients()
        sig = c.crypto(cert.key_id).sign(SignatureAlgorithm.es256, hashlib.sha256(b"y").digest()).signature
        assert len(sig) == 64
        r = srv.api().post("/admin/v1/master-key/rotate", json={"to": "file"})
        assert r.status_code == 200 and r.json()["master_key"] == "file", r.text
        assert re.fullmatch(r"[0-9a-f]{64}", (srv.data_dir / "master.key").read_text().strip())
        srv.restart()
        assert srv.clients().certs.get_certificate(name).name == name


def test_scratch_dirs_are_removed_also_when_a_test_fails():
    """The token and server scratch directories (the fixtures' helpers) are gone after their
    block, also when the block raises."""
    with pytest.raises(RuntimeError, match="test failure"):
        with softhsm_token() as t:
            token_root = t.conf.parent
            assert any((token_root / "tokens").iterdir()), "the token was initialised"
            with hsm_server(t) as srv:
                server_root = srv.data_dir.parent
                assert server_root.name.startswith("certvault-hsm-") and srv.running()
                raise RuntimeError("test failure")
    assert not server_root.exists(), server_root
    assert not token_root.exists(), token_root
    assert srv.proc.poll() is not None, "the server was stopped"
