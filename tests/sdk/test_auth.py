"""Authentication (§3), api-version handling (§1) and vault routing by Host (§2)."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlparse

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.keyvault.keys.crypto import SignatureAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils

import support
from support import DOMAIN, assert_error, describe, ok_json, unique


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'([A-Za-z_]+)="([^"]*)"', rest))
    return scheme, params


def assert_challenge(resp: requests.Response, server) -> dict[str, str]:
    assert resp.status_code == 401, f"expected 401: {describe(resp)}"
    header = resp.headers.get("WWW-Authenticate")
    assert header, f"401 without WWW-Authenticate: {describe(resp)} headers={dict(resp.headers)}"
    scheme, params = parse_challenge(header)
    assert scheme.lower() == "bearer", f"challenge scheme {scheme!r} in {header!r}"
    assert "authorization" in params or "authorization_uri" in params, f"no authorization= in {header!r}"
    auth_url = params.get("authorization") or params.get("authorization_uri")
    parsed = urlparse(auth_url)
    assert parsed.scheme in ("http", "https") and parsed.netloc, f"authorization is not a URL: {auth_url!r}"
    # Python's naive parser drops values containing ',' or '=' (§3 item 2).
    for v in params.values():
        assert "," not in v and "=" not in v, f"challenge value {v!r} would be mangled by the Python SDK"
    assert params.get("resource") == server.resource, f"resource {params.get('resource')!r} != {server.resource!r}"
    return params


# ----------------------------------------------------------------------------- auth


def test_healthz_without_token_is_200(server):
    r = requests.get(f"{server.url}/healthz", verify=server.ca, timeout=10)
    assert r.status_code == 200, describe(r)


def test_request_without_token_gets_401_challenge(server, api):
    r = api.get("/certificates", token=None)
    assert_challenge(r, server)


def test_401_body_has_error_shape(server, api):
    r = api.get("/certificates", token=None)
    assert_error(r, 401, "Unauthorized")


def test_wrong_token_gets_401_challenge(server, api):
    r = api.get("/certificates", token="not-the-token")
    assert_challenge(r, server)


def test_non_bearer_authorization_gets_401(server, api):
    r = api.get("/certificates", token=None, headers={"Authorization": f"Basic {server.token}"})
    assert_challenge(r, server)


def test_token_prefix_is_not_enough(server, api):
    r = api.get("/certificates", token=server.token[:-1])
    assert_challenge(r, server)


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("GET", "/no/such/route", None),
        ("POST", "/certificates/x/create", "{not json"),
        ("GET", "/certificates/bad_name", None),
        ("DELETE", "/deletedcertificates/whatever", None),
    ],
)
def test_401_comes_before_routing_and_body_parsing(server, api, method, path, body):
    r = api.request(method, path, token=None, data=body)
    assert_challenge(r, server)


def test_401_comes_before_api_version_check(server, api):
    r = api.get("/certificates", token=None, api_version=None)
    assert_challenge(r, server)


def test_challenge_probe_without_body_gets_401(server, api):
    """The SDK's first request has no body and Content-Length: 0 (§3 item 1)."""
    r = api.post("/certificates/probe/create", token=None, data=b"", headers={"Content-Length": "0"})
    assert_challenge(r, server)


def test_sdk_handshake_asks_for_resource_scope(server):
    c = server.clients()
    list(c.certs.list_properties_of_certificates(max_page_size=5))
    assert c.cred.calls, "credential.get_token was never called: no 401 challenge?"
    assert c.cred.scopes[0] == f"{server.resource}/.default", c.cred.calls


def test_sdk_with_wrong_token_raises_client_authentication_error(server):
    c = support.make_clients(server.url, "wrong-token", server.ca)
    with pytest.raises(ClientAuthenticationError):
        list(c.certs.list_properties_of_certificates())


def test_sdk_handshake_for_each_sdk_package(server, rsa_cert):
    c = server.clients()
    name = rsa_cert.name
    assert c.certs.get_certificate(name).name == name
    assert c.secrets.get_secret(name).name == name
    assert c.keys.get_key(name).name == name
    assert len(c.cred.calls) >= 1
    assert set(c.cred.scopes) == {f"{server.resource}/.default"}, c.cred.calls


# ----------------------------------------------------------------------------- api-version (§1)


def test_missing_api_version_is_400_bad_parameter(api):
    assert_error(api.get("/certificates", api_version=None), 400, "BadParameter")


@pytest.mark.parametrize("version", ["abc", "", "7", "2025-13-45x", "v7.4"])
def test_malformed_api_version_is_400(api, version):
    assert_error(api.get("/certificates", api_version=version), 400, "BadParameter")


@pytest.mark.parametrize("version", ["7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"])
def test_known_api_versions_accepted(api, version):
    body = ok_json(api.get("/certificates", api_version=version))
    assert isinstance(body.get("value"), list), body


@pytest.mark.parametrize("version", ["2099-01-01", "7.9"])
def test_unknown_newer_api_version_is_served(api, version):
    body = ok_json(api.get("/certificates", api_version=version))
    assert isinstance(body.get("value"), list), body


def test_mixed_api_versions_in_one_session(api, rsa_cert):
    """Certificates at 2026-04-01 and keys at 2025-07-01 from one application (§1)."""
    name = rsa_cert.name
    ok_json(api.get(f"/certificates/{name}/", api_version="2026-04-01"))
    ok_json(api.get(f"/keys/{name}/", api_version="2025-07-01"))
    ok_json(api.get(f"/secrets/{name}/", api_version="7.4"))


def test_sdk_client_pinned_to_old_api_version(server, rsa_cert):
    c = server.clients(api_version="7.4")
    assert c.certs.api_version == "7.4"
    cert = c.certs.get_certificate(rsa_cert.name)
    assert bytes(cert.cer) == bytes(rsa_cert.cer)


# ----------------------------------------------------------------------------- Host routing (§2)


def test_vault_host_client_handshake_with_resource_verification(server, vault_clients):
    """verify_challenge_resource is ON: passes only if resource == https://DOMAIN:PORT (§3)."""
    list(vault_clients.certs.list_properties_of_certificates(max_page_size=5))
    assert vault_clients.cred.scopes, "credential never called"
    assert vault_clients.cred.scopes[0] == f"{server.resource}/.default"


def test_vault_host_create_returns_ids_on_vault_host(server, vault_clients):
    name = unique("vhost")
    policy = support.self_policy(f"CN={name}", key_type="EC", curve="P-256")
    cert = vault_clients.certs.begin_create_certificate(name, policy, **support.LRO).result(timeout=60)
    base = server.vault_url
    v = cert.properties.version
    assert cert.id == f"{base}/certificates/{name}/{v}"
    assert cert.key_id == f"{base}/keys/{name}/{v}"
    assert cert.secret_id == f"{base}/secrets/{name}/{v}"
    assert cert.properties.vault_url == base


def test_vault_host_list_ids_use_vault_host(server, vault_clients, rsa_cert):
    items = list(vault_clients.certs.list_properties_of_certificates(max_page_size=25))
    assert items, "no certificates listed"
    for it in items:
        assert it.id.startswith(f"{server.vault_url}/certificates/"), it.id
    assert rsa_cert.name in [i.name for i in items]


def test_vault_host_sees_same_vault_as_ip(server, vault_clients, rsa_cert):
    """Any non-vault Host (an IP) reaches vault `default`, as does default.DOMAIN."""
    c = vault_clients.certs.get_certificate(rsa_cert.name)
    assert bytes(c.cer) == bytes(rsa_cert.cer)
    assert c.id == f"{server.vault_url}/certificates/{rsa_cert.name}/{rsa_cert.properties.version}"


def test_vault_host_secrets_keys_and_crypto(server, vault_clients, rsa_cert):
    s = vault_clients.secrets.get_secret(rsa_cert.name)
    assert s.id.startswith(f"{server.vault_url}/secrets/{rsa_cert.name}/")
    k = vault_clients.keys.get_key(rsa_cert.name)
    assert k.id == f"{server.vault_url}/keys/{rsa_cert.name}/{rsa_cert.properties.version}"
    digest = hashlib.sha256(b"vault host").digest()
    res = vault_clients.crypto(k.id).sign(SignatureAlgorithm.rs256, digest)
    assert res.key_id == k.id
    support.load_cer(rsa_cert.cer).public_key().verify(res.signature, digest, padding.PKCS1v15(),
                                                       asym_utils.Prehashed(hashes.SHA256()))


def test_ip_client_ids_use_ip_origin(server, rsa_cert):
    v = rsa_cert.properties.version
    assert rsa_cert.id == f"{server.url}/certificates/{rsa_cert.name}/{v}"
    assert rsa_cert.key_id == f"{server.url}/keys/{rsa_cert.name}/{v}"
    assert rsa_cert.secret_id == f"{server.url}/secrets/{rsa_cert.name}/{v}"


def test_localhost_host_reaches_default_vault(server, rsa_cert):
    a = support.Api(f"https://localhost:{server.port}", server.token, server.ca)
    body = ok_json(a.get(f"/certificates/{rsa_cert.name}/"))
    assert body["id"] == f"https://localhost:{server.port}/certificates/{rsa_cert.name}/{rsa_cert.properties.version}"


def test_unknown_vault_host_is_404_in_error_shape(server):
    a = support.Api(f"https://nosuch.{DOMAIN}:{server.port}", server.token, server.ca)
    assert_error(a.get("/certificates"), 404)


def test_unknown_vault_host_still_requires_token(server):
    a = support.Api(f"https://nosuch.{DOMAIN}:{server.port}", server.token, server.ca)
    assert_challenge(a.get("/certificates", token=None), server)


def test_sdk_on_unknown_vault_host_fails(server):
    c = support.make_clients(f"https://nosuch.{DOMAIN}:{server.port}", server.token, server.ca,
                             verify_challenge_resource=True)
    with pytest.raises(HttpResponseError) as ei:
        c.certs.get_certificate("anything")
    assert ei.value.status_code == 404
