"""Fixtures for the Azure SDK conformance suite.

The suite starts its own `certvault serve` ($CERTVAULT_BIN) on a free port with a temp data dir,
and talks to it with the official Python SDKs (azure-keyvault-certificates/-secrets/-keys) and with
raw `requests` for wire-level checks.

    CERTVAULT_BIN=target/debug/certvault .venv/bin/python -m pytest tests/sdk -v
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import secret_registry  # noqa: F401 - the session-wide registry (whole-suite log scan)
import support
from support import CertvaultServer, Clients, new_server

support.install_resolver()


def _binary() -> str:
    path = os.environ.get("CERTVAULT_BIN")
    if not path:
        pytest.fail("CERTVAULT_BIN is not set: point it at the certvault binary "
                    "(e.g. CERTVAULT_BIN=target/debug/certvault)", pytrace=False)
    p = Path(path)
    if not p.is_file() or not os.access(p, os.X_OK):
        pytest.fail(f"CERTVAULT_BIN={path} does not exist or is not executable "
                    "(build it with `cargo build -p certvault`)", pytrace=False)
    return str(p.resolve())


@pytest.fixture(scope="session")
def certvault_bin() -> str:
    return _binary()


# Every server started by the suite, so failed tests can attach the server log.
_SERVERS: list[CertvaultServer] = []
# (server, exit code on SIGTERM) of the session server, reported in the terminal summary.
_EXIT_NOTES: list[tuple[CertvaultServer, object]] = []


@pytest.fixture(scope="session")
def server(certvault_bin, request):
    """The shared server for the session. Tests must not stop it (use `start_server` for that)."""
    root = Path(tempfile.mkdtemp(prefix="certvault-sdk-"))
    srv = new_server(certvault_bin, root)
    _SERVERS.append(srv)
    startup_error = None
    try:
        srv.start()
    except Exception as e:  # noqa: BLE001 - report the startup failure with the server's output
        startup_error = str(e)
    if startup_error is not None:
        pytest.fail(startup_error, pytrace=False)
    yield srv
    code = srv.stop()
    _EXIT_NOTES.append((srv, code))
    if not request.session.testsfailed:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def start_server(certvault_bin, request):
    """Factory for a dedicated server (own data dir and port), stopped at test end."""
    started: list[tuple[CertvaultServer, Path]] = []

    def factory() -> CertvaultServer:
        root = Path(tempfile.mkdtemp(prefix="certvault-sdk-own-"))
        srv = new_server(certvault_bin, root)
        _SERVERS.append(srv)
        started.append((srv, root))
        srv.start()
        return srv

    yield factory
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for srv, root in started:
        srv.stop()
        _SERVERS.remove(srv)
        if not failed:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def clients(server) -> Clients:
    """SDK clients on https://127.0.0.1:PORT (challenge-resource verification off: an IP can't pass)."""
    return server.clients()


@pytest.fixture(scope="session")
def certs(clients):
    return clients.certs


@pytest.fixture(scope="session")
def secrets(clients):
    return clients.secrets


@pytest.fixture(scope="session")
def keys(clients):
    return clients.keys


@pytest.fixture(scope="session")
def vault_clients(server) -> Clients:
    """SDK clients on https://default.DOMAIN:PORT with challenge-resource verification ON."""
    return server.clients(vault_host=True)


@pytest.fixture(scope="session")
def api(server) -> support.Api:
    return server.api()


@pytest.fixture(scope="session")
def rsa_cert(certs):
    """A Self-issued RSA-2048 certificate (PKCS#12 secret) shared by read-only tests."""
    name = support.unique("shared-rsa")
    policy = support.self_policy(f"CN={name}.example.test", dns=[f"{name}.example.test"])
    return certs.begin_create_certificate(name, policy, **support.LRO).result(timeout=60)


@pytest.fixture(scope="session")
def rsa_enc_cert(certs):
    """A Self-issued RSA-2048 certificate whose key usage adds dataEncipherment, so its key
    allows encrypt and decrypt as well (the seed's key-usage table)."""
    from azure.keyvault.certificates import KeyUsageType
    name = support.unique("shared-rsa-enc")
    usage = [KeyUsageType.digital_signature, KeyUsageType.key_encipherment, KeyUsageType.data_encipherment]
    policy = support.self_policy(f"CN={name}.example.test", dns=[f"{name}.example.test"], key_usage=usage)
    return certs.begin_create_certificate(name, policy, **support.LRO).result(timeout=60)


@pytest.fixture(scope="session")
def ec_cert(certs):
    """A Self-issued EC P-256 certificate (PEM secret) shared by read-only tests."""
    name = support.unique("shared-ec")
    policy = support.self_policy(f"CN={name}.example.test", key_type="EC", curve="P-256",
                                 content_type="application/x-pem-file")
    return certs.begin_create_certificate(name, policy, **support.LRO).result(timeout=60)


# ----------------------------------------------------------------------------- reporting


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item._certvault_log_offsets = {id(s): s.log_size() for s in _SERVERS}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
    if rep.failed and rep.when in ("setup", "call"):
        offsets = getattr(item, "_certvault_log_offsets", {})
        for srv in list(_SERVERS):
            text = srv.log_text(offsets.get(id(srv), 0))
            if text.strip():
                lines = text.splitlines()
                if len(lines) > 150:
                    lines = [f"... ({len(lines) - 150} earlier lines cut)"] + lines[-150:]
                rep.sections.append((f"certvault log during this test ({srv.url})", "\n".join(lines)))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    for srv, code in _EXIT_NOTES:
        if code not in (0, None, -15):
            tr.write_line(f"certvault (session server) exited with code {code} on SIGTERM", red=True)
        if tr.stats.get("failed") or tr.stats.get("error"):
            tr.section(f"certvault session server log, last 200 lines ({srv.log_path})")
            tr.write_line(srv.log_tail(200))


# ----------------------------------------------------------------------------- whole-suite log scan


def pytest_collection_modifyitems(session, config, items):
    """The log scan (test_zz_log_scan.py) runs after every other test, whatever the file order."""
    last = [i for i in items if i.nodeid.split("::")[0].endswith("test_zz_log_scan.py")]
    items[:] = [i for i in items if i not in last] + last


def pytest_sessionfinish(session, exitstatus):
    """Server logs live in one session dir (secret_registry.log_dir) until the session ends; kept
    when something failed."""
    import secret_registry

    if exitstatus == 0 and secret_registry.logs():
        shutil.rmtree(secret_registry.log_dir(), ignore_errors=True)
