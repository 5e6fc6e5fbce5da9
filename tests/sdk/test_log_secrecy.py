"""Tokens, passwords and keys never reach the server's output (issue 4, item 6).

A server with `CERTVAULT_LOG=debug` (every crate at debug level) runs a representative workload —
create and import (PEM, PFX with a password, a wrong password), managed secrets as PFX and PEM, key
operations, Unknown issuer and merge, backup and restore, principals and tokens through the admin
API (allowed, refused, revoked and unknown tokens), two master key rotations — and is stopped and
started again. Then everything it wrote (stdout and stderr) is searched for each secret.

The bootstrap admin token is printed once on the first start by design (README): it may appear
there, on the line after "shown once", and nowhere else, and not at all on the second start.
"""

from __future__ import annotations

import base64
import hashlib
import secrets as pysecrets
import shutil

from azure.keyvault.certificates import CertificateContentType, CertificatePolicy, KeyUsageType
from azure.keyvault.keys.crypto import EncryptionAlgorithm, KeyWrapAlgorithm, SignatureAlgorithm
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

import access_support as acc
import support
from support import LRO, der, make_ca, make_leaf, pkcs8_der, self_policy

START_MARK = "===== start #"


def key_needles(label: str, key) -> list[tuple[str, str]]:
    """The PKCS#8 DER in base64 (one line, as a JSON value would carry it) and every line of
    its PEM body."""
    d = pkcs8_der(key)
    out = [(f"{label}: PKCS#8 DER base64", base64.b64encode(d).decode()),
           (f"{label}: PKCS#8 DER base64url", base64.urlsafe_b64encode(d).decode().rstrip("="))]
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    # the last line can be short; 12 base64 characters are still unique in practice
    out += [(f"{label}: PEM line {i + 1}", line) for i, line in enumerate(body) if len(line) >= 12]
    return out


def secret_key(value: str, content_type: str):
    if content_type == CertificateContentType.pkcs12:
        key, _, _ = pkcs12.load_key_and_certificates(base64.b64decode(value), None)
        return key
    block = next(b for b in support.pem_blocks(value) if b[0] == "PRIVATE KEY")
    return serialization.load_der_private_key(block[1], None)


def test_no_secret_in_the_server_output(certvault_bin, request):
    srv, root = acc.start_server(certvault_bin, "log-secrecy", CERTVAULT_LOG="debug")
    needles: list[tuple[str, str]] = []
    try:
        bootstrap = srv.token
        admin = srv.clients()
        api = srv.api()
        adm = acc.Admin(srv)

        # --- certificates: Self (PFX and PEM secrets), imports, Unknown + merge
        usage = [KeyUsageType.digital_signature, KeyUsageType.key_encipherment, KeyUsageType.data_encipherment]
        rsa_cert = admin.certs.begin_create_certificate(
            "ls-rsa", self_policy("CN=ls-rsa.example.test", key_usage=usage), **LRO).result(timeout=60)
        admin.certs.begin_create_certificate(
            "ls-ec", self_policy("CN=ls-ec.example.test", key_type="EC", curve="P-256",
                                 content_type=CertificateContentType.pem), **LRO).result(timeout=60)

        pem_key, pem_cert = support.self_signed("ls-pem.example.test")
        admin.certs.import_certificate("ls-pem", support.pem_bundle(pem_key, pem_cert),
                                       policy=CertificatePolicy(content_type=CertificateContentType.pem))
        pfx_key, pfx_cert = support.self_signed("ls-pfx.example.test", support.ec_key("P-384"))
        password = "pfx-" + pysecrets.token_hex(12)
        wrong = "wrong-" + pysecrets.token_hex(12)
        pfx = pkcs12.serialize_key_and_certificates(b"ls-pfx", pfx_key, pfx_cert, None,
                                                    serialization.BestAvailableEncryption(password.encode()))
        admin.certs.import_certificate("ls-pfx", pfx, password=password)
        r = api.post("/certificates/ls-pfx-wrong/import",
                      json={"value": base64.b64encode(pfx).decode(), "pwd": wrong})
        support.assert_error(r, 400)
        assert wrong not in r.text, "the error message repeats the password"
        needles += [("PFX password", password), ("wrong PFX password", wrong)]
        needles += key_needles("imported PEM key", pem_key) + key_needles("imported PFX key", pfx_key)

        ca_key, ca = make_ca("ls CA")
        op = admin.certs.begin_create_certificate(
            "ls-unknown", self_policy("CN=ls-unknown.example.test", issuer="Unknown"), **LRO).result(timeout=60)
        csr = x509.load_der_x509_csr(bytes(op.csr))
        admin.certs.merge_certificate("ls-unknown", [der(make_leaf(ca_key, ca, csr.subject, csr.public_key())),
                                                     der(ca)])

        # --- managed secrets: PFX, PEM, PFX converted to PEM
        for name in ("ls-rsa", "ls-ec", "ls-pem", "ls-pfx", "ls-unknown"):
            s = admin.secrets.get_secret(name)
            needles += key_needles(f"private key of {name}", secret_key(s.value, s.properties.content_type))
            needles.append((f"secret value of {name}", s.value))
        r = api.get("/secrets/ls-rsa", params={"outContentType": "application/x-pem-file"})
        needles.append(("secret of ls-rsa as PEM", support.ok_json(r)["value"]))

        # --- key operations (sign, decrypt and unwrap use the private key on the server)
        crypto = admin.crypto(rsa_cert.key_id)
        digest = hashlib.sha256(b"log secrecy").digest()
        sig = crypto.sign(SignatureAlgorithm.rs256, digest).signature
        assert crypto.verify(SignatureAlgorithm.rs256, digest, sig).is_valid
        plaintext = pysecrets.token_bytes(24)
        ct = crypto.encrypt(EncryptionAlgorithm.rsa_oaep, plaintext).ciphertext
        assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ct).plaintext == plaintext
        cek = pysecrets.token_bytes(32)
        wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep, cek).encrypted_key
        assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped).key == cek
        for label, value in [("decrypted plaintext", plaintext), ("unwrapped key", cek)]:
            needles.append((label + " (base64url)", support.b64url(value)))

        # --- backup and restore
        blob = admin.certs.backup_certificate("ls-ec")
        admin.certs.begin_delete_certificate("ls-ec", **LRO).wait(timeout=60)
        admin.certs.purge_deleted_certificate("ls-ec")
        admin.certs.restore_certificate_backup(blob)

        # --- principals and tokens through the admin API
        _, t1, _ = adm.principal("ls-app")
        _, t2, _ = adm.principal("ls-short", expires_in_days=1)
        t3, t3_id, _ = adm.token("ls-app", label="second")
        _, t4, _ = adm.principal("ls-admin2", admin=True)
        adm.policy("default", "ls-app", certificates=["get"], secrets=["get"])
        assert api.get("/certificates/ls-rsa/", token=t1).status_code == 200
        assert api.get("/secrets/ls-rsa", token=t3).status_code == 200
        assert api.get("/keys/ls-rsa", token=t1).status_code == 403
        assert api.get("/certificates", token=t2).status_code == 403
        assert api.get(acc.ADMIN + "/principals", token=t4, api_version=None).status_code == 200
        assert api.get(acc.ADMIN + "/principals", token=t1, api_version=None).status_code == 403
        adm.revoke("ls-app", t3_id)
        assert api.get("/certificates/ls-rsa/", token=t3).status_code == 401
        unknown = "cvt_" + pysecrets.token_urlsafe(32)
        assert api.get("/certificates", token=unknown).status_code == 401
        needles += [("principal token", t1), ("expiring principal token", t2), ("revoked token", t3),
                    ("admin principal token", t4), ("unknown token", unknown)]
        for t in (t1, t2, t3, t4, unknown):
            needles.append(("token without its prefix", t.removeprefix("cvt_")))

        # --- the master key, before and after two rotations
        for _ in range(2):
            hexkey = (srv.data_dir / "master.key").read_text().strip()
            needles += [("master key (hex)", hexkey), ("master key (HEX)", hexkey.upper()),
                        ("master key (base64)", base64.b64encode(bytes.fromhex(hexkey)).decode())]
            r = adm.call("POST", "/master-key/rotate", 200)
            assert r.json()["vault_keys_rewrapped"] >= 1, r.text
        hexkey = (srv.data_dir / "master.key").read_text().strip()
        needles += [("master key (hex)", hexkey), ("master key (HEX)", hexkey.upper()),
                    ("master key (base64)", base64.b64encode(bytes.fromhex(hexkey)).decode())]
        assert len({n[1] for n in needles if n[0] == "master key (hex)"}) == 3

        # --- a second start: the bootstrap token is not shown again
        srv.restart()
        assert api.get("/certificates/ls-rsa/").status_code == 200
        assert api.get("/certificates/ls-rsa/", token=t1).status_code == 200
    finally:
        code = acc.stop_server(srv, root, keep=True)
    log = srv.log_text()
    assert code in (0, None), f"server exit code {code}"
    starts = log.split(START_MARK)
    assert len(starts) == 3, f"expected two starts in the log, found {len(starts) - 1}"
    first, second = starts[1], starts[2]
    assert "DEBUG" in first and "DEBUG" in second, "debug logging is not on"

    # the bootstrap token: once, alone on the line after "(shown once ...)", on the first start only
    lines = first.splitlines()
    at = [i for i, line in enumerate(lines) if bootstrap in line]
    assert len(at) == 1, f"bootstrap token on {len(at)} lines of the first start"
    assert lines[at[0]].strip() == bootstrap, "the bootstrap token's line carries something else"
    assert "shown once" in lines[at[0] - 1], lines[at[0] - 1]
    assert bootstrap not in second, "bootstrap token printed again on the second start"
    assert log.count(bootstrap) == 1, "bootstrap token printed more than once"

    # everything else, with that one line taken out
    rest = log.replace(lines[at[0]] + "\n", "", 1)
    needles.append(("bootstrap token", bootstrap))
    needles.append(("bootstrap token without its prefix", bootstrap.split("_", 1)[-1]))
    found = [(label, value[:12] + "...") for label, value in needles if value in rest]
    assert not found, f"secrets in the server output: {found}"
    # the scan is not vacuous: the log shows the workload
    for word in ("/certificates/ls-pfx/import", "/keys/ls-rsa/", "/admin/v1/master-key/rotate", "master key rotated"):
        assert word in log, f"{word!r} not in the log"
    print(f"log secrecy: {len(needles)} secrets checked against {len(log.splitlines())} lines of output")
    shutil.rmtree(root, ignore_errors=True)
