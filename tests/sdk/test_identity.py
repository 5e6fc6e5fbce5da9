"""Tokens from an identity provider (issue 4, item 4).

(a) JWT bearer tokens: the test is the identity provider. It makes RSA and EC keys with
    `cryptography`, writes their JWKS to a file the server reads (--jwt-jwks-file), and mints JWTs
    for a principal with a limited access policy. The SDK's CertificateClient uses them through a
    static credential, on the vault host with challenge-resource verification on.
(b) The managed-identity endpoint: `azure.identity.ManagedIdentityCredential()` and
    `DefaultAzureCredential()`, unchanged, with IDENTITY_ENDPOINT / IMDS_ENDPOINT pointing at
    certvault's Azure Arc style endpoint (--identity-listen). azure-identity (through MSAL) reads
    the challenge key file from /var/opt/azcmagent/tokens on Linux, whatever directory the
    server names, so the server writes its key files there (scripts/test-all.sh creates it).
"""

from __future__ import annotations

import base64
import json
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.keyvault.certificates import CertificateClient
from azure.keyvault.secrets import SecretClient
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import access_support
import secret_registry
import support
from support import StaticCredential, b64url, describe, unique

ISSUER = "https://idp.certvault.test/tenant-1/v2.0"
ARC_KEY_DIR = Path("/var/opt/azcmagent/tokens")
TOKEN_PATH = "/metadata/identity/oauth2/token"
# Environment variables that would make azure-identity pick another managed-identity flavour or
# another credential of DefaultAzureCredential's chain before the managed identity.
OTHER_IDENTITY_ENV = (
    "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET",
    "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME", "AZURE_PASSWORD", "AZURE_TOKEN_CREDENTIALS",
)


# ----------------------------------------------------------------------------- a test IdP


def _int_b64(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Idp:
    """Signing keys, their JWKS, and JWT minting (RS256, PS256, ES256)."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        secret_registry.register_key("test_identity RSA key", self.rsa)
        secret_registry.register_key("test_identity EC key", self.ec)

    def jwks(self) -> dict:
        rn = self.rsa.public_key().public_numbers()
        en = self.ec.public_key().public_numbers()
        return {"keys": [
            {"kty": "RSA", "kid": "rsa-1", "use": "sig", "n": _int_b64(rn.n), "e": _int_b64(rn.e)},
            {"kty": "EC", "kid": "ec-1", "use": "sig", "crv": "P-256",
             "x": b64url(en.x.to_bytes(32, "big")), "y": b64url(en.y.to_bytes(32, "big"))},
        ]}

    def mint(self, claims: dict, alg: str = "RS256", kid: Optional[str] = None) -> str:
        header = {"alg": alg, "typ": "JWT", "kid": kid or ("ec-1" if alg.startswith("ES") else "rsa-1")}
        enc = lambda v: b64url(json.dumps(v, separators=(",", ":")).encode())  # noqa: E731
        signing_input = f"{enc(header)}.{enc(claims)}".encode()
        if alg == "RS256":
            sig = self.rsa.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256":
            sig = self.rsa.sign(signing_input, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        elif alg == "ES256":
            r, s = decode_dss_signature(self.ec.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            raise ValueError(alg)
        return f"{signing_input.decode()}.{b64url(sig)}"

    def claims(self, sub: str, aud: Any, *, lifetime: int = 600, **extra: Any) -> dict:
        now = int(time.time())
        c = {"iss": ISSUER, "aud": aud, "sub": sub, "iat": now - 5, "nbf": now - 5, "exp": now + lifetime}
        c.update(extra)
        return c


# ----------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def idp() -> Idp:
    return Idp()


@pytest.fixture(scope="module")
def ident(certvault_bin, idp, request):
    """A dedicated server with JWT authentication (JWKS file) and the identity endpoint on."""
    root = Path(tempfile.mkdtemp(prefix="certvault-identity-"))
    jwks = root / "jwks.json"
    jwks.write_text(json.dumps(idp.jwks()))
    mi_port = support.free_port()
    srv = support.new_server(certvault_bin, root)
    srv.extra_args += [
        "--jwt-issuer", ISSUER,
        "--jwt-jwks-file", str(jwks),
        "--identity-listen", f"127.0.0.1:{mi_port}",
        "--identity-principal", "mi-app",
    ]
    servers = access_support._conftest_servers()
    if servers is not None:
        servers.append(srv)
    srv.start()
    admin = access_support.Admin(srv)
    admin.principal("jwt-reader", token=False)
    admin.policy("default", "jwt-reader", certificates=["get", "list"])
    admin.principal("mi-app", token=False)
    admin.policy("default", "mi-app", certificates=["get", "list", "create"])
    srv.mi_endpoint = f"http://127.0.0.1:{mi_port}{TOKEN_PATH}"  # type: ignore[attr-defined]
    srv.mi_base = f"http://127.0.0.1:{mi_port}"  # type: ignore[attr-defined]
    # A certificate the readers can see.
    name = unique("idp-visible")
    srv.clients().certs.begin_create_certificate(
        name, support.self_policy(f"CN={name}.example.test"), **support.LRO).result(timeout=60)
    srv.visible = name  # type: ignore[attr-defined]
    yield srv
    failed = request.session.testsfailed
    access_support.stop_server(srv, root, keep=bool(failed))


def cert_client(srv, credential) -> CertificateClient:
    return CertificateClient(srv.vault_url, credential, connection_verify=srv.ca,
                             verify_challenge_resource=True, retry_total=0)


# ----------------------------------------------------------------------------- (a) JWTs


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256"])
def test_jwt_of_a_limited_principal_works_with_the_sdk(ident, idp, alg):
    cred = StaticCredential(idp.mint(idp.claims("jwt-reader", ident.resource), alg))
    client = cert_client(ident, cred)
    names = [p.name for p in client.list_properties_of_certificates()]
    assert ident.visible in names
    assert client.get_certificate(ident.visible).cer
    # The SDK asked the credential for <resource>/.default, the JWT's audience.
    assert cred.scopes and set(cred.scopes) == {f"{ident.resource}/.default"}
    # The access policy applies: no create, and no secrets at all.
    with pytest.raises(HttpResponseError) as e:
        client.begin_create_certificate(unique("denied"), support.self_policy("CN=denied"), **support.LRO)
    assert e.value.status_code == 403
    secrets = SecretClient(ident.vault_url, cred, connection_verify=ident.ca, retry_total=0)
    with pytest.raises(HttpResponseError) as e:
        secrets.get_secret(ident.visible)
    assert e.value.status_code == 403


def test_jwt_audience_may_be_an_array_and_claims_map_case_insensitively(ident, idp):
    token = idp.mint(idp.claims("JWT-Reader", ["api://other", ident.resource]))
    assert [p.name for p in cert_client(ident, StaticCredential(token)).list_properties_of_certificates()]


@pytest.mark.parametrize("case", ["expired", "wrong-audience", "wrong-issuer", "not-yet-valid",
                                  "unknown-principal", "admin-principal", "tampered", "alg-none"])
def test_bad_jwts_get_401_with_the_challenge(ident, idp, case):
    aud = ident.resource
    if case == "expired":
        token = idp.mint(idp.claims("jwt-reader", aud, lifetime=-3600))
    elif case == "wrong-audience":
        token = idp.mint(idp.claims("jwt-reader", "https://vault.azure.net"))
    elif case == "wrong-issuer":
        token = idp.mint(idp.claims("jwt-reader", aud, iss="https://evil.example.test/"))
    elif case == "not-yet-valid":
        token = idp.mint(idp.claims("jwt-reader", aud, nbf=int(time.time()) + 3600))
    elif case == "unknown-principal":
        token = idp.mint(idp.claims("nobody-here", aud))
    elif case == "admin-principal":
        token = idp.mint(idp.claims("admin", aud))
    elif case == "tampered":
        h, _, s = idp.mint(idp.claims("jwt-reader", aud)).split(".")
        token = f"{h}.{b64url(json.dumps(idp.claims('admin', aud)).encode())}.{s}"
    else:
        h = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        token = f"{h}.{b64url(json.dumps(idp.claims('jwt-reader', aud)).encode())}."
    # Through the SDK: ClientAuthenticationError (the 401 after one retry with a new token).
    with pytest.raises(ClientAuthenticationError):
        list(cert_client(ident, StaticCredential(token)).list_properties_of_certificates())
    # On the wire: 401 with the Bearer challenge, and the token is not echoed.
    r = requests.get(f"{ident.url}/certificates", params={"api-version": support.CERTS_API},
                     headers={"Authorization": f"Bearer {token}"}, verify=ident.ca, timeout=10)
    assert r.status_code == 401, describe(r)
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer authorization="), describe(r)
    assert token not in r.text and token.split(".")[1] not in r.text


def test_certvault_tokens_still_work_with_jwt_auth_on(ident):
    assert list(ident.clients(vault_host=True).certs.list_properties_of_certificates())


# ----------------------------------------------------------------------------- (b) managed identity


@pytest.fixture
def arc_env(ident, monkeypatch):
    """The application's environment: the Azure Arc variables pointing at certvault."""
    for var in OTHER_IDENTITY_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", ident.mi_endpoint)
    monkeypatch.setenv("IMDS_ENDPOINT", ident.mi_base)
    return ident


def test_managed_identity_credential_gets_a_token_and_the_sdk_works(arc_env):
    from azure.identity import ManagedIdentityCredential

    srv = arc_env
    before = set(ARC_KEY_DIR.glob("certvault-*.key"))
    cred = ManagedIdentityCredential()
    tok = cred.get_token(f"{srv.resource}/.default")
    assert tok.token.startswith("cvt_")
    assert 3500 < tok.expires_on - time.time() <= 3600 + 5
    client = cert_client(srv, ManagedIdentityCredential())
    assert srv.visible in [p.name for p in client.list_properties_of_certificates()]
    # The principal's policy applies: create is allowed, secrets are not.
    name = unique("mi-made")
    made = client.begin_create_certificate(name, support.self_policy(f"CN={name}.example.test"),
                                           **support.LRO).result(timeout=60)
    assert made.name == name
    secrets = SecretClient(srv.vault_url, ManagedIdentityCredential(), connection_verify=srv.ca, retry_total=0)
    with pytest.raises(HttpResponseError) as e:
        secrets.get_secret(name)
    assert e.value.status_code == 403
    # Each exchange removed its key file.
    assert set(ARC_KEY_DIR.glob("certvault-*.key")) <= before


def test_default_azure_credential_uses_the_endpoint(arc_env):
    from azure.identity import DefaultAzureCredential

    srv = arc_env
    # The chain's first credentials (environment, workload identity) are unavailable in this
    # environment; the developer-tool ones after the managed identity are excluded so that a
    # failure cannot be masked by an Azure CLI login on the machine.
    cred = DefaultAzureCredential(
        exclude_shared_token_cache_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_developer_cli_credential=True,
        exclude_interactive_browser_credential=True,
    )
    client = cert_client(srv, cred)
    assert srv.visible in [p.name for p in client.list_properties_of_certificates()]
    assert client.get_certificate(srv.visible).cer


def test_a_token_for_another_resource_is_refused(arc_env):
    from azure.identity import CredentialUnavailableError, ManagedIdentityCredential

    with pytest.raises((ClientAuthenticationError, CredentialUnavailableError)) as e:
        ManagedIdentityCredential().get_token("https://vault.azure.net/.default")
    assert "certvault issues tokens only for the resource" in str(e.value)


def test_arc_protocol_on_the_wire(ident):
    """The exchange azure-identity/MSAL perform, step by step (no token or secret in errors)."""
    params = {"api-version": "2020-06-01", "resource": ident.resource}
    # Metadata: true is required (as by the Arc agent and IMDS).
    r = requests.get(ident.mi_endpoint, params=params, timeout=10)
    assert r.status_code == 400, describe(r)
    # The challenge: 401, WWW-Authenticate: Basic realm=<path>.key in the Arc directory.
    r = requests.get(ident.mi_endpoint, params=params, headers={"Metadata": "true"}, timeout=10)
    assert r.status_code == 401, describe(r)
    header = r.headers["WWW-Authenticate"]
    scheme_realm, path = header.split("=")  # MSAL: exactly one '='
    assert scheme_realm.lower() == "basic realm"
    key = Path(path)
    assert key.parent == ARC_KEY_DIR and key.suffix == ".key"
    st = key.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and 0 < st.st_size <= 4096
    secret = key.read_text()
    # A wrong secret is refused; the right one once.
    r = requests.get(ident.mi_endpoint, params=params,
                     headers={"Metadata": "true", "Authorization": "Basic nope"}, timeout=10)
    assert r.status_code == 401
    r = requests.get(ident.mi_endpoint, params=params,
                     headers={"Metadata": "true", "Authorization": f"Basic {secret}"}, timeout=10)
    assert r.status_code == 200, describe(r)
    body = r.json()
    assert set(body) >= {"access_token", "expires_in", "expires_on", "resource", "token_type"}
    assert body["resource"] == ident.resource and body["token_type"] == "Bearer"
    assert not key.exists()
    r = requests.get(ident.mi_endpoint, params=params,
                     headers={"Metadata": "true", "Authorization": f"Basic {secret}"}, timeout=10)
    assert r.status_code == 401 and secret not in r.text
    # The token is an ordinary certvault token of the principal, listed with its expiry.
    toks = access_support.Admin(ident).call("GET", "/principals/mi-app/tokens", 200).json()
    assert any(t["label"] == "managed identity endpoint" and t["expires"] for t in toks["tokens"]), toks
    assert body["access_token"] not in json.dumps(toks)
    # Both steps are in the audit trail (who, from where), which still verifies.
    adm = access_support.Admin(ident)
    issued = adm.call("GET", "/audit", 200, params={"operation": "identity.token"}).json()["records"]
    assert any(r["principal"] == "mi-app" and r["outcome"] == "ok" and r["source"] == "127.0.0.1"
               for r in issued), issued
    challenges = adm.call("GET", "/audit", 200, params={"operation": "identity.challenge"}).json()["records"]
    assert challenges and all(r["principal"] == "anonymous" for r in challenges), challenges
    assert secret not in json.dumps(issued + challenges)
    assert body["access_token"] not in json.dumps(issued + challenges)
    verified = adm.call("POST", "/audit/verify", 200).json()
    assert verified["ok"] is True, verified
