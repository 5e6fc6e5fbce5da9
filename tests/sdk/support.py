"""Helpers shared by the SDK conformance suite: server process, clients, raw wire access, local PKI.

Everything here is self-contained: the suite must run on a machine that has only this repository.
The wire contract the tests check is docs/keyvault-api.md (the shared spec); section numbers in
comments (§n) refer to it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateContentType,
    CertificatePolicy,
    CertificatePolicyAction,
    KeyType,
    KeyUsageType,
    LifetimeAction,
    WellKnownIssuerNames,
)
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import secret_registry

# ----------------------------------------------------------------------------- constants

DOMAIN = "certvault.test"
DEFAULT_VAULT = "default"
# Default api-versions of the pinned SDKs (§1): certificates/secrets and keys differ.
CERTS_API = "2026-04-01"
KEYS_API = "2025-07-01"
LRO = {"_polling_interval": 0.2}
STARTUP_TIMEOUT = float(os.environ.get("CERTVAULT_STARTUP_TIMEOUT", "30"))
HTTP_TIMEOUT = 30.0

EKU_SERVER = "1.3.6.1.5.5.7.3.1"
EKU_CLIENT = "1.3.6.1.5.5.7.3.2"

VERSION_RE = re.compile(r"^[0-9a-f]{32}$")
B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")
B64STD_RE = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


# ----------------------------------------------------------------------------- name resolution

_ORIG_GETADDRINFO = socket.getaddrinfo


def _patched_getaddrinfo(host, *args, **kwargs):
    """Resolve DOMAIN and *.DOMAIN to 127.0.0.1 inside this process (like curl --resolve)."""
    if isinstance(host, bytes):
        host = host.decode()
    if isinstance(host, str):
        h = host.lower().rstrip(".")
        if h == DOMAIN or h.endswith("." + DOMAIN):
            host = "127.0.0.1"
    return _ORIG_GETADDRINFO(host, *args, **kwargs)


def install_resolver() -> None:
    socket.getaddrinfo = _patched_getaddrinfo


# ----------------------------------------------------------------------------- small utilities


def unique(prefix: str) -> str:
    """A fresh certificate/issuer name: prefix + random hex (valid name chars only)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(fn: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Call fn until it returns a truthy value; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


# ----------------------------------------------------------------------------- server process


# Databases created for data directories in this session (CERTVAULT_TEST_DATABASE=postgres).
_PG_DATABASES: dict[str, str] = {}


def database_args(data_dir: Path) -> list[str]:
    """The `--database` arguments of a server with this data directory.

    CERTVAULT_TEST_DATABASE unset or `sqlite`: none (SQLite in the data directory). `postgres`:
    a database of its own on the PostgreSQL server at 127.0.0.1:$CERTVAULT_TEST_PG_PORT (role
    `postgres`, trust authentication; `scripts/test-all.sh sdk-pg` starts one), the same one
    for every start of the same data directory (restarts find their data).
    """
    kind = os.environ.get("CERTVAULT_TEST_DATABASE", "") or "sqlite"
    if kind == "sqlite":
        return []
    if kind != "postgres":
        raise RuntimeError(f"CERTVAULT_TEST_DATABASE must be sqlite or postgres, not {kind!r}")
    port = os.environ.get("CERTVAULT_TEST_PG_PORT")
    if not port:
        raise RuntimeError(
            "CERTVAULT_TEST_DATABASE=postgres needs CERTVAULT_TEST_PG_PORT, the port of a "
            "PostgreSQL server on 127.0.0.1 (run `bash scripts/test-all.sh sdk-pg`, which "
            "installs the `postgresql` package and starts one)")
    key = str(data_dir.resolve())
    if key not in _PG_DATABASES:
        name = "sdk_" + hashlib.sha256(key.encode()).hexdigest()[:20]
        out = subprocess.run(
            ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", "postgres",
             "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {name}"],
            capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE {name} failed: {out.stderr}")
        _PG_DATABASES[key] = f"postgres://postgres@127.0.0.1:{port}/{name}"
    return ["--database", _PG_DATABASES[key]]


def using_postgres() -> bool:
    """Whether the suite's servers keep their store in PostgreSQL (CERTVAULT_TEST_DATABASE)."""
    return (os.environ.get("CERTVAULT_TEST_DATABASE", "") or "sqlite") == "postgres"


def db_query(data_dir: Path, sql: str) -> list[tuple]:
    """Runs `sql` directly on the store of the server with this data directory, bypassing the
    server (to inspect it, or to tamper with it as an attacker would): the SQLite file, or the
    server's PostgreSQL database through psql. Returns the rows (PostgreSQL values as text,
    integers converted)."""
    if not using_postgres():
        import sqlite3
        con = sqlite3.connect(data_dir / "certvault.db")
        try:
            with con:
                return con.execute(sql).fetchall()
        finally:
            con.close()
    url = database_args(data_dir)[1]
    out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                          url, "-c", sql], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr}")
    rows = []
    for line in out.stdout.splitlines():
        if line:
            rows.append(tuple(int(v) if re.fullmatch(r"-?\d+", v) else v for v in line.split("\t")))
    return rows


def store_files() -> list[Path]:
    """On PostgreSQL, every file of the server's data directory ($CERTVAULT_TEST_PG_DATA: tables,
    WAL), to scan for plaintext; on SQLite none (the database is in the data directory)."""
    if not using_postgres():
        return []
    data = os.environ.get("CERTVAULT_TEST_PG_DATA")
    if not data:
        raise RuntimeError("CERTVAULT_TEST_DATABASE=postgres needs CERTVAULT_TEST_PG_DATA, the "
                           "PostgreSQL data directory (scripts/test-all.sh sdk-pg sets it)")
    return [p for p in Path(data).rglob("*") if p.is_file()]


@dataclass
class CertvaultServer:
    """One `certvault serve` process on 127.0.0.1:port with its own data dir."""

    binary: str
    data_dir: Path
    port: int
    log_path: Path
    domain: str = DOMAIN
    proc: Optional[subprocess.Popen] = None
    _log_file: Any = None
    starts: int = 0
    # Extra `serve` arguments and environment (e.g. the PKCS#11 settings).
    extra_args: list = field(default_factory=list)
    extra_env: dict = field(default_factory=dict)

    # --- derived
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def vault_url(self) -> str:
        """The vault-host URL: https://default.DOMAIN:PORT (resolved in-process)."""
        return f"https://{DEFAULT_VAULT}.{self.domain}:{self.port}"

    @property
    def resource(self) -> str:
        return f"https://{self.domain}:{self.port}"

    @property
    def ca(self) -> str:
        return str(self.data_dir / "tls" / "ca.pem")

    @property
    def token_path(self) -> Path:
        return self.data_dir / "admin.token"

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def command(self) -> list[str]:
        return [
            self.binary,
            "serve",
            "--data-dir",
            str(self.data_dir),
            *database_args(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--base-domain",
            self.domain,
            *self.extra_args,
        ]

    # --- lifecycle
    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab", buffering=0)
        self._log_file.write(f"\n===== start #{self.starts + 1}: {' '.join(self.command())}\n".encode())
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")
        # Every crate at debug: a failing test can show what the server saw, and the final log
        # scan (test_zz_log_scan.py) searches the most output for secrets (+~5% run time).
        env.setdefault("CERTVAULT_LOG", "debug")
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.starts += 1
        self._wait_healthy()
        # The admin token: printed once on the first start by design, a secret everywhere else.
        if self.token_path.is_file():
            secret_registry.register_bootstrap(self.log_path, self.token)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last_err = "no attempt yet"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"certvault exited with code {self.proc.returncode} during startup.\n"
                    f"command: {' '.join(self.command())}\n--- server output ---\n{self.log_tail()}"
                )
            if Path(self.ca).is_file():
                try:
                    r = requests.get(f"{self.url}/healthz", verify=self.ca, timeout=2)
                    if r.status_code == 200:
                        return
                    last_err = f"GET /healthz -> {r.status_code} {r.text[:200]}"
                except requests.RequestException as e:  # not listening yet, TLS not ready, ...
                    last_err = f"{type(e).__name__}: {e}"
            else:
                last_err = f"{self.ca} does not exist yet"
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"certvault did not become healthy within {STARTUP_TIMEOUT}s ({last_err}).\n"
            f"command: {' '.join(self.command())}\n--- server output ---\n{self.log_tail()}"
        )

    def stop(self) -> Optional[int]:
        """SIGTERM, then SIGKILL after 10 s. Returns the exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            code = self.proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def restart(self) -> None:
        """Stop and start again on the same data dir and port."""
        self.stop()
        self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_tail(self, lines: int = 200) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # --- clients
    def clients(self, vault_host: bool = False, **kw: Any) -> "Clients":
        return make_clients(self.vault_url if vault_host else self.url, self.token, self.ca,
                            verify_challenge_resource=vault_host, **kw)

    def api(self, base: Optional[str] = None) -> "Api":
        return Api(base or self.url, self.token, self.ca)


def new_server(binary: str, root: Optional[Path] = None, port: Optional[int] = None) -> CertvaultServer:
    root = Path(root or tempfile.mkdtemp(prefix="certvault-sdk-"))
    return CertvaultServer(
        binary=binary,
        data_dir=root / "data",
        port=port or free_port(),
        # In the session log dir, not the data dir: kept for the final log scan (secret_registry).
        log_path=secret_registry.new_log_path(root.name),
    )


# ----------------------------------------------------------------------------- SDK clients


class StaticCredential:
    """A TokenCredential returning a fixed token; records what the SDK asked for (§3)."""

    def __init__(self, token: str):
        secret_registry.register_token("SDK credential token", token)
        self.token = token
        self.calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls.append((scopes, kwargs))
        return AccessToken(self.token, int(time.time()) + 3600)

    @property
    def scopes(self) -> list[str]:
        return [s for call in self.calls for s in call[0]]


@dataclass
class Clients:
    url: str
    cred: StaticCredential
    certs: CertificateClient
    secrets: SecretClient
    keys: KeyClient
    kwargs: dict = field(default_factory=dict)

    def crypto(self, key_id: str):
        from azure.keyvault.keys.crypto import CryptographyClient

        return CryptographyClient(key_id, self.cred, **self.kwargs)


class _RegisterSecretsPolicy(SansIOHTTPPolicy):
    """Registers every secret the SDK sends or receives (passwords, import values, downloaded
    secrets, JWKs) for the final log scan."""

    def on_request(self, request):  # noqa: D401
        try:
            secret_registry.register_body("SDK request", request.http_request.body)
        except Exception:  # noqa: BLE001 - registration must never break a request
            pass

    def on_response(self, request, response):
        try:
            secret_registry.register_body("SDK response", response.http_response.text())
        except Exception:  # noqa: BLE001
            pass


def make_clients(url: str, token: str, ca: str, verify_challenge_resource: bool = False, **extra: Any) -> Clients:
    cred = StaticCredential(token)
    kw = dict(
        per_call_policies=[_RegisterSecretsPolicy()],
        connection_verify=ca,
        verify_challenge_resource=verify_challenge_resource,
        connection_timeout=10,
        read_timeout=HTTP_TIMEOUT,
        retry_total=1,
    )
    kw.update(extra)
    return Clients(
        url=url,
        cred=cred,
        certs=CertificateClient(url, cred, **kw),
        secrets=SecretClient(url, cred, **{k: v for k, v in kw.items() if k != "api_version"}),
        keys=KeyClient(url, cred, **{k: v for k, v in kw.items() if k != "api_version"}),
        kwargs={k: v for k, v in kw.items() if k != "api_version"},
    )


# ----------------------------------------------------------------------------- raw wire access

_DEFAULT = object()


class Api:
    """Raw HTTPS access with the CA bundle and the bearer token, for wire-level checks."""

    def __init__(self, base: str, token: str, ca: str):
        self.base = base.rstrip("/")
        self.token = token
        self.ca = ca
        self.session = requests.Session()

    def request(
        self,
        method: str,
        path: str,
        *,
        api_version: Any = _DEFAULT,
        params: Optional[dict] = None,
        json: Any = _DEFAULT,
        data: Any = None,
        headers: Optional[dict] = None,
        token: Any = _DEFAULT,
    ) -> requests.Response:
        """path is relative to the base URL, or an absolute URL (then api-version is not added
        unless given explicitly). api_version=None leaves it out; token=None sends no Authorization."""
        absolute = path.startswith("https://")
        url = path if absolute else self.base + path
        q = dict(params or {})
        if api_version is _DEFAULT:
            api_version = None if absolute else (KEYS_API if path.startswith("/keys") else CERTS_API)
        if api_version is not None:
            q["api-version"] = api_version
        h = {}
        tok = self.token if token is _DEFAULT else token
        secret_registry.register_token("bearer token", tok)
        secret_registry.register_body("request", json if json is not _DEFAULT else data)
        if tok is not None:
            h["Authorization"] = f"Bearer {tok}"
        if headers:
            h.update(headers)
        kw: dict[str, Any] = {}
        if json is not _DEFAULT:
            kw["json"] = json
        elif data is not None:
            kw["data"] = data
            h.setdefault("Content-Type", "application/json")
        r = self.session.request(method, url, params=q, headers=h, verify=self.ca, timeout=HTTP_TIMEOUT, **kw)
        secret_registry.register_body("response", r.content)
        return r

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.request("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> requests.Response:
        return self.request("PATCH", path, **kw)

    def put(self, path: str, **kw: Any) -> requests.Response:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, **kw)


def describe(resp: requests.Response) -> str:
    req = resp.request
    return f"{req.method} {req.url} -> {resp.status_code} {resp.text[:600]!r}"


def ok_json(resp: requests.Response, status: int = 200) -> dict:
    """Assert an exact success status and a JSON body with the right content type (§2)."""
    assert resp.status_code == status, f"expected {status}: {describe(resp)}"
    ctype = resp.headers.get("Content-Type", "")
    assert ctype.lower().replace(" ", "").startswith("application/json"), f"content type {ctype!r}: {describe(resp)}"
    return resp.json()


def assert_error(resp: requests.Response, status: Any, code: Optional[str] = None,
                 inner: Optional[str] = None) -> dict:
    """Assert an error status (int or collection of ints) and the Key Vault error shape (§2 Errors)."""
    allowed = {status} if isinstance(status, int) else set(status)
    assert resp.status_code in allowed, f"expected {sorted(allowed)}: {describe(resp)}"
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {describe(resp)}") from None
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict), f"no 'error' object: {describe(resp)}"
    assert isinstance(err.get("code"), str) and err["code"], f"error.code missing: {describe(resp)}"
    assert isinstance(err.get("message"), str) and err["message"], f"error.message missing: {describe(resp)}"
    if code is not None:
        assert err["code"] == code, f"error.code {err['code']!r} != {code!r}: {describe(resp)}"
    if inner is not None:
        codes = []
        ie = err.get("innererror")
        while isinstance(ie, dict):
            codes.append(ie.get("code"))
            ie = ie.get("innererror")
        assert inner in codes, f"innererror codes {codes} lack {inner!r}: {describe(resp)}"
    return err


def sdk_error_code(exc: Exception) -> Optional[str]:
    err = getattr(exc, "error", None)
    return getattr(err, "code", None)


def follow_pages(api: Api, first_path: str, params: dict) -> list[requests.Response]:
    """GET a list and follow nextLink (absolute) until it is null/absent. Returns every page response."""
    pages = [api.get(first_path, params=params)]
    while True:
        body = ok_json(pages[-1])
        nxt = body.get("nextLink")
        if not nxt:
            return pages
        assert len(pages) < 200, "nextLink loop"
        pages.append(api.get(nxt, api_version=None))


def wait_operation_done(api: Api, name: str, timeout: float = 30.0) -> dict:
    """Poll GET /certificates/{name}/pending until status != inProgress."""
    def poll():
        body = ok_json(api.get(f"/certificates/{name}/pending"))
        return body if body.get("status") != "inProgress" else None
    return wait_until(poll, f"operation on {name} to finish", timeout=timeout)


# ----------------------------------------------------------------------------- policies


def self_policy(subject: Optional[str] = None, *, key_type: str = "RSA", key_size: Optional[int] = 2048,
                curve: Optional[str] = None, content_type: str = CertificateContentType.pkcs12,
                dns: Optional[list[str]] = None, issuer: str = WellKnownIssuerNames.self,
                validity: int = 12, key_usage: Optional[list] = None, ekus: Optional[list] = None,
                exportable: bool = True, **extra: Any) -> CertificatePolicy:
    if key_usage is None:
        key_usage = ([KeyUsageType.digital_signature, KeyUsageType.key_encipherment] if key_type.startswith("RSA")
                     else [KeyUsageType.digital_signature])
    return CertificatePolicy(
        issuer_name=issuer,
        subject=subject,
        san_dns_names=dns,
        exportable=exportable,
        key_type=KeyType(key_type),
        key_size=key_size if key_type.startswith("RSA") else None,
        key_curve_name=curve,
        reuse_key=False,
        content_type=content_type,
        enhanced_key_usage=ekus if ekus is not None else [EKU_SERVER, EKU_CLIENT],
        key_usage=key_usage,
        validity_in_months=validity,
        lifetime_actions=[LifetimeAction(CertificatePolicyAction.auto_renew if issuer == "Self"
                                         else CertificatePolicyAction.email_contacts, lifetime_percentage=80)],
        **extra,
    )


def raw_policy(subject: str, *, issuer: str = "Self", kty: str = "RSA", key_size: Optional[int] = 2048,
               crv: Optional[str] = None, content_type: str = "application/x-pkcs12") -> dict:
    key_props: dict[str, Any] = {"exportable": True, "kty": kty, "reuse_key": False}
    if kty.startswith("RSA"):
        key_props["key_size"] = key_size
    else:
        key_props["crv"] = crv or "P-256"
    return {
        "key_props": key_props,
        "secret_props": {"contentType": content_type},
        "x509_props": {"subject": subject, "validity_months": 12},
        "issuer": {"name": issuer},
    }


# ----------------------------------------------------------------------------- local PKI


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    secret_registry.register_key(f"generated RSA-{bits} key", key)
    return key


CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
CURVE_BYTES = {"P-256": 32, "P-384": 48, "P-521": 66}


def ec_key(curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(CURVES[curve]())
    secret_registry.register_key(f"generated EC {curve} key", key)
    return key


def name_cn(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "certvault test CA", key=None):
    key = key or ec_key("P-256")
    subject = name_cn(cn)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - datetime.timedelta(minutes=5))
        .not_valid_after(now() + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(issuer_key, issuer_cert, subject: x509.Name, public_key, *, dns: Iterable[str] = (),
              days: int = 90, extensions: Iterable[tuple[x509.ExtensionType, bool]] = ()):
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - datetime.timedelta(minutes=5))
        .not_valid_after(now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    dns = list(dns)
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    for ext, crit in extensions:
        b = b.add_extension(ext, critical=crit)
    return b.sign(issuer_key, hashes.SHA256())


def self_signed(cn: str, key=None, *, dns: Optional[list[str]] = None, days: int = 60):
    """A self-signed leaf with SAN + serverAuth EKU + KU, like the ones users import."""
    key = key or rsa_key()
    subject = name_cn(cn)
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - datetime.timedelta(minutes=5))
        .not_valid_after(now() + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in (dns or [cn])]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(True, False, is_rsa, False, False, False, False, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def spki(pub) -> bytes:
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def pkcs8_der(key) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pkcs8_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_bundle(key, cert, chain: Iterable[x509.Certificate] = ()) -> bytes:
    out = (pkcs8_pem(key) if key is not None else b"") + cert_pem(cert)
    for c in chain:
        out += cert_pem(c)
    return out


def sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


PEM_BLOCK_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\n(.*?)\n-----END \1-----\n", re.S)


def pem_blocks(text: str) -> list[tuple[str, bytes, str]]:
    """[(label, der, raw_block_text)] in order; requires \\n line endings."""
    return [(m.group(1), base64.b64decode("".join(m.group(2).split("\n"))), m.group(0))
            for m in PEM_BLOCK_RE.finditer(text)]


def strip_none(v: Any) -> Any:
    """Drop null members recursively (a server may send "days_before_expiry": null)."""
    if isinstance(v, dict):
        return {k: strip_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [strip_none(x) for x in v]
    return v


def load_cer(cer: Any) -> x509.Certificate:
    return x509.load_der_x509_certificate(bytes(cer))
