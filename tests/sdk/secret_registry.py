"""Whole-suite log secrecy (issue 4): a session-wide registry of every secret the suite creates or
learns, every server log, and the scanner the last test (test_zz_log_scan.py) runs over them.

Secrets are registered by a few central helpers rather than by each test:
- `support.CertvaultServer.start` registers the server's admin token (the bootstrap token, which
  the server prints once on its first start by design — allowed there and nowhere else);
- `support.rsa_key` / `support.ec_key` register every private key the suite generates;
- `support.Api.request` registers the bearer token it sends and every secret-looking field of the
  JSON it sends and receives (`token`, `pwd`, `password`, `secret`, `tsig_secret`, private key
  material in a secret `value`, private JWK members, ...);
- an azure-core pipeline policy in `support.make_clients` does the same for the SDK clients
  (import values and passwords, downloaded secrets, JWKs).

Every server log is written to one session directory (`log_dir()`), so it outlives the server's
data dir and can be scanned when the session ends. The scanner reports a label, the log file and
the line number, never the secret itself.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Optional

# Shorter values are not searched: they would match unrelated text ("pw", "right").
MIN_LEN = 8

_LOCK = threading.Lock()
_SECRETS: dict[str, str] = {}  # value -> label
_KEYS_SEEN: set[bytes] = set()  # PKCS#8 DER of the keys already registered
_LOGS: list[Path] = []
# log path -> admin tokens of the server writing it (shown once on its first start)
_BOOTSTRAP: dict[Path, set[str]] = {}
_LOG_DIR: Optional[Path] = None

# JSON members whose string value is a secret wherever they appear.
SECRET_FIELDS = {
    "token", "access_token", "refresh_token", "pwd", "password", "secret", "tsig_secret",
    "hmac_key", "eab_hmac_key", "eab_key", "signing_secret", "smtp_password", "pin",
    "client_secret", "api_key",
}
# Private members of a JWK.
JWK_PRIVATE = {"d", "p", "q", "dp", "dq", "qi", "k"}
PEM_KEY_RE = re.compile(r"-----BEGIN ([A-Z ]*PRIVATE KEY)-----(.*?)-----END \1-----", re.S)


def log_dir() -> Path:
    global _LOG_DIR
    with _LOCK:
        if _LOG_DIR is None:
            _LOG_DIR = Path(tempfile.mkdtemp(prefix="certvault-sdk-logs-"))
        return _LOG_DIR


def new_log_path(name: str) -> Path:
    d = log_dir()
    with _LOCK:
        path = d / f"server-{len(_LOGS) + 1:03d}-{name}.log"
        _LOGS.append(path)
    return path


def logs() -> list[Path]:
    with _LOCK:
        return list(_LOGS)


def secrets() -> list[tuple[str, str]]:
    """(label, value) of every registered secret."""
    with _LOCK:
        return [(label, value) for value, label in _SECRETS.items()]


def bootstrap_tokens() -> dict[Path, set[str]]:
    with _LOCK:
        return {p: set(t) for p, t in _BOOTSTRAP.items()}


def register(label: str, value: Any, min_len: int = MIN_LEN) -> None:
    if not isinstance(value, str):
        return
    value = value.strip()
    if len(value) < min_len:
        return
    with _LOCK:
        _SECRETS.setdefault(value, label)


def register_token(label: str, token: Any) -> None:
    """A bearer token, and its body without the `cvt_` prefix."""
    if not isinstance(token, str):
        return
    register(label, token)
    if "_" in token[:8]:
        register(label + " (without prefix)", token.split("_", 1)[1])


def register_bootstrap(log_path: Path, token: str) -> None:
    register_token("admin token", token)
    with _LOCK:
        _BOOTSTRAP.setdefault(log_path, set()).add(token)


def register_key(label: str, key: Any) -> None:
    """A private key: its PKCS#8 DER in base64url and every line of its PEM body (each PEM line is
    also a substring of the DER in standard base64, so one-line base64 is covered too)."""
    from cryptography.hazmat.primitives import serialization

    try:
        d = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    except Exception:  # noqa: BLE001 - not a private key object
        return
    with _LOCK:
        if d in _KEYS_SEEN:
            return
        _KEYS_SEEN.add(d)
    register(f"{label}: PKCS#8 DER base64url", base64.urlsafe_b64encode(d).decode().rstrip("="))
    b64 = base64.b64encode(d).decode()
    for i in range(0, len(b64), 64):
        # the last line can be short; 12 base64 characters are still unique in practice
        register(f"{label}: PEM line {i // 64 + 1}", b64[i:i + 64], min_len=12)


def register_key_material(label: str, value: Any, password: Any = None) -> None:
    """Private keys inside a PEM text or a base64 PKCS#12 (as a secret or an import carries them)."""
    if not isinstance(value, str) or len(value) < 64:
        return
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    found = False
    for m in PEM_KEY_RE.finditer(value):
        found = True
        try:
            der = base64.b64decode("".join(m.group(2).split()))
            register_key(label, serialization.load_der_private_key(der, None))
        except Exception:  # noqa: BLE001 - encrypted or malformed: register its body lines
            for line in m.group(2).split():
                register(f"{label}: PEM line", line, min_len=12)
    if found or "-----" in value:
        return
    try:
        raw = base64.b64decode(value, validate=True)
    except Exception:  # noqa: BLE001 - not base64
        return
    pwds: list[Optional[bytes]] = [None, b""]
    if isinstance(password, str):
        pwds.insert(0, password.encode())
    for pwd in pwds:
        try:
            key, _, _ = pkcs12.load_key_and_certificates(raw, pwd)
        except Exception:  # noqa: BLE001 - wrong password or not PKCS#12
            continue
        if key is not None:
            register_key(label, key)
        return


def register_json(label: str, obj: Any, depth: int = 0) -> None:
    """Every secret-looking member of a JSON document (request or response body)."""
    if depth > 8:
        return
    if isinstance(obj, list):
        for v in obj:
            register_json(label, v, depth + 1)
        return
    if not isinstance(obj, dict):
        return
    is_jwk = "kty" in obj
    for k, v in obj.items():
        if isinstance(v, (dict, list)):
            register_json(label, v, depth + 1)
        elif k in SECRET_FIELDS:
            if k.endswith("token"):
                register_token(f"{label}: {k}", v)
            else:
                register(f"{label}: {k}", v)
        elif is_jwk and k in JWK_PRIVATE:
            register(f"{label}: JWK {k}", v, min_len=16)
        elif k == "value":
            register_key_material(f"{label}: key in value", v, obj.get("pwd") or obj.get("password"))


def register_body(label: str, body: Any) -> None:
    if body is None:
        return
    if isinstance(body, (bytes, bytearray)):
        try:
            body = body.decode()
        except UnicodeDecodeError:
            return
    if isinstance(body, str):
        if not body.lstrip().startswith(("{", "[")):
            return
        try:
            body = json.loads(body)
        except ValueError:
            return
    register_json(label, body)


# ----------------------------------------------------------------------------- the scanner


def scan(log_paths: Iterable[Path], needles: list[tuple[str, str]],
         bootstrap: dict[Path, set[str]]) -> tuple[list[str], int]:
    """Searches every log for every needle. A server's own admin token may appear once, alone on
    the line after the "shown once" notice of its first start; that line is taken out before
    the search. Returns (findings as "label in file:line", lines scanned); findings never carry
    the secret itself."""
    findings: list[str] = []
    total_lines = 0
    for path in log_paths:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue  # a server object that was never started (e.g. a refused configuration)
        lines = text.splitlines()
        total_lines += len(lines)
        for tok in bootstrap.get(path, ()):
            for i, line in enumerate(lines):
                if line.strip() == tok and i > 0 and "shown once" in lines[i - 1]:
                    lines[i] = ""  # the one allowed place
                    break
        text = "\n".join(lines)
        for label, value in needles:
            if value in text:
                at = [n + 1 for n, line in enumerate(lines) if value in line] or ["?"]
                where = ", ".join(str(n) for n in at[:5]) + (" ..." if len(at) > 5 else "")
                findings.append(f"{label} in {path}: line {where}")
    return findings, total_lines
