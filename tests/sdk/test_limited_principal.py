"""The official Azure SDK clients with the token of a limited principal (issue 4): each principal
sees exactly what its access policy grants, and every other call is an HttpResponseError 403 in
the Key Vault shape. The token goes into the SDK's credential unchanged (StaticCredential)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.certificates import CertificatePolicy
from azure.keyvault.keys.crypto import EncryptionAlgorithm, SignatureAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import pkcs12

import access_support as acc
import support
from support import LRO, load_cer, make_clients, self_policy


@pytest.fixture(scope="module")
def lp(certvault_bin, request):
    """A dedicated server with: a certificate whose key allows every operation, vault `team`
    with a certificate of its own, and the principals of the tests."""
    srv, root = acc.start_server(certvault_bin, "limited")
    adm = acc.Admin(srv)
    admin = clients_for(srv, srv.token)  # ids on https://default.<domain>:<port>
    from azure.keyvault.certificates import KeyUsageType
    usage = [KeyUsageType.digital_signature, KeyUsageType.key_encipherment, KeyUsageType.data_encipherment]
    cert = admin.certs.begin_create_certificate(
        "lp-web", self_policy("CN=lp-web.example.test", dns=["lp-web.example.test"], key_usage=usage),
        **LRO).result(timeout=60)
    adm.vault("team")
    team_admin = make_clients(acc.vault_url(srv, "team"), srv.token, srv.ca, verify_challenge_resource=True)
    team_admin.certs.begin_create_certificate("lp-team", self_policy("CN=lp-team.example.test"),
                                              **LRO).result(timeout=60)

    tokens = {}
    for name, vault, perms in [
        ("reader", "default", {"certificates": ["get", "list"]}),
        ("secret-reader", "default", {"secrets": ["get"]}),
        ("signer", "default", {"keys": ["sign"]}),
        ("team-member", "team", {"certificates": ["all"], "keys": ["all"], "secrets": ["all"]}),
    ]:
        _, tokens[name], _ = adm.principal(name)
        adm.policy(vault, name, **perms)
    yield srv, cert, tokens
    acc.stop_server(srv, root, keep=request.session.testsfailed > 0)


def clients_for(srv, token: str, vault: str = "default"):
    """SDK clients on the vault's own host name, with challenge-resource verification on."""
    return make_clients(acc.vault_url(srv, vault), token, srv.ca, verify_challenge_resource=True)


def assert_forbidden(call, *args, **kwargs) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as ei:
        result = call(*args, **kwargs)
        if hasattr(result, "result"):  # a poller
            result.result(timeout=30)
        elif hasattr(result, "__iter__") and not isinstance(result, (str, bytes, dict)):
            list(result)
    e = ei.value
    assert e.status_code == 403, f"expected 403, got {e.status_code}: {e}"
    assert support.sdk_error_code(e) == "Forbidden", e
    return e


def test_certificate_reader_sees_certificates_but_not_the_private_key(lp):
    srv, cert, tokens = lp
    c = clients_for(srv, tokens["reader"])
    got = c.certs.get_certificate("lp-web")
    assert bytes(got.cer) == bytes(cert.cer)
    assert c.certs.get_certificate_version("lp-web", cert.properties.version).id == cert.id
    names = {p.name for p in c.certs.list_properties_of_certificates()}
    assert names == {"lp-web"}, names
    assert [v.version for v in c.certs.list_properties_of_certificate_versions("lp-web")] == [
        cert.properties.version]
    policy = c.certs.get_certificate_policy("lp-web")
    assert policy.subject == "CN=lp-web.example.test"
    assert c.certs.get_certificate_operation("lp-web").status == "completed"
    # the private key lives behind /secrets, the key operations behind /keys
    e = assert_forbidden(c.secrets.get_secret, "lp-web")
    assert "secrets/get" in e.message, e.message
    assert_forbidden(c.secrets.list_properties_of_secrets)
    assert_forbidden(c.keys.get_key, "lp-web")
    # and nothing changes the vault
    assert_forbidden(c.certs.begin_create_certificate, "lp-new", CertificatePolicy.get_default(), **LRO)
    assert_forbidden(c.certs.update_certificate_properties, "lp-web", tags={"x": "y"})
    assert_forbidden(c.certs.update_certificate_policy, "lp-web", CertificatePolicy(validity_in_months=3))
    assert_forbidden(c.certs.begin_delete_certificate, "lp-web", **LRO)
    assert_forbidden(c.certs.backup_certificate, "lp-web")
    assert_forbidden(c.certs.list_properties_of_issuers)
    assert_forbidden(c.certs.get_contacts)
    # deleted certificates are listed with certificates/list, which the reader holds
    assert list(c.certs.list_deleted_certificates()) == []
    # the admin client still sees everything unchanged
    admin = srv.clients()
    assert admin.certs.get_certificate("lp-web").properties.tags in (None, {})
    assert admin.certs.get_certificate_policy("lp-web").validity_in_months == 12


def test_secret_reader_gets_the_pfx_but_not_the_certificate(lp):
    srv, cert, tokens = lp
    c = clients_for(srv, tokens["secret-reader"])
    secret = c.secrets.get_secret("lp-web")
    assert secret.properties.content_type == "application/x-pkcs12"
    key, leaf, _ = pkcs12.load_key_and_certificates(base64.b64decode(secret.value), None)
    assert leaf.public_bytes(serialization.Encoding.DER) == bytes(cert.cer)
    assert key.public_key().public_numbers() == load_cer(cert.cer).public_key().public_numbers()
    assert c.secrets.get_secret("lp-web", cert.properties.version).value  # by version too
    assert_forbidden(c.certs.get_certificate, "lp-web")
    assert_forbidden(c.certs.list_properties_of_certificates)
    assert_forbidden(c.secrets.list_properties_of_secrets)  # secrets/list is not secrets/get
    assert_forbidden(c.secrets.list_properties_of_secret_versions, "lp-web")
    assert_forbidden(c.keys.get_key, "lp-web")


def test_signer_signs_but_cannot_decrypt_or_verify(lp):
    srv, cert, tokens = lp
    c = clients_for(srv, tokens["signer"])
    crypto = c.crypto(cert.key_id)
    digest = hashlib.sha256(b"certvault limited principal").digest()
    res = crypto.sign(SignatureAlgorithm.rs256, digest)
    load_cer(cert.cer).public_key().verify(res.signature, b"certvault limited principal", padding.PKCS1v15(),
                                           hashes.SHA256())
    # without keys/get the SDK cannot fetch the public key, so every operation goes to the server
    assert_forbidden(crypto.decrypt, EncryptionAlgorithm.rsa_oaep, b"\0" * 256)
    assert_forbidden(crypto.encrypt, EncryptionAlgorithm.rsa_oaep, b"plaintext")
    assert_forbidden(crypto.verify, SignatureAlgorithm.rs256, digest, res.signature)
    assert_forbidden(crypto.wrap_key, "RSA-OAEP", b"k" * 32)
    assert_forbidden(c.keys.get_key, "lp-web")
    assert_forbidden(c.secrets.get_secret, "lp-web")
    assert_forbidden(c.certs.get_certificate, "lp-web")


def test_team_member_sees_only_its_vault(lp):
    srv, cert, tokens = lp
    team = clients_for(srv, tokens["team-member"], "team")
    assert {p.name for p in team.certs.list_properties_of_certificates()} == {"lp-team"}
    got = team.certs.get_certificate("lp-team")
    assert got.id.startswith(acc.vault_url(srv, "team") + "/certificates/lp-team/"), got.id
    assert team.secrets.get_secret("lp-team").value
    created = team.certs.begin_create_certificate("lp-team-2", self_policy("CN=lp-team-2.example.test"),
                                                   **LRO).result(timeout=60)
    assert created.name == "lp-team-2"
    # the same token in vault default: nothing, neither listed nor by name
    default = clients_for(srv, tokens["team-member"], "default")
    assert_forbidden(default.certs.list_properties_of_certificates)
    assert_forbidden(default.certs.get_certificate, "lp-web")
    assert_forbidden(default.secrets.get_secret, "lp-web")
    assert_forbidden(default.keys.get_key, "lp-web")
    assert_forbidden(default.certs.begin_create_certificate, "lp-intruder", self_policy("CN=x.example.test"), **LRO)
    # the IP address reaches default as well
    by_ip = make_clients(srv.url, tokens["team-member"], srv.ca)
    assert_forbidden(by_ip.certs.get_certificate, "lp-web")
    # and default's principals see nothing in team
    reader_in_team = clients_for(srv, tokens["reader"], "team")
    assert_forbidden(reader_in_team.certs.list_properties_of_certificates)
    assert_forbidden(reader_in_team.certs.get_certificate, "lp-team")
    # nothing was created in default
    assert {p.name for p in srv.clients().certs.list_properties_of_certificates()} == {"lp-web"}
