"""schemathesis against the committed OpenAPI document (docs/openapi.json) and the real server.

Starts `certvault serve` ($CERTVAULT_BIN) on a free loopback port with a fresh data directory,
waits for /readyz, and runs `st run` with the bootstrap administrator's token. The checks: no
5xx response, every status code and content type documented, every response body valid
against its schema. Afterwards the server is stopped with SIGTERM and must exit 0.

    CERTVAULT_BIN=target/debug/certvault .venv/bin/python tests/api/run_schemathesis.py

Extra `st run` arguments may follow (e.g. --max-examples 5). Exit code: schemathesis's, or 1
when the server misbehaved.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, ca: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    ctx = ssl.create_default_context(cafile=str(ca)) if ca.exists() else None
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"certvault exited early with code {proc.returncode}")
        if ctx is None and ca.exists():
            ctx = ssl.create_default_context(cafile=str(ca))
        if ctx is not None:
            try:
                with urllib.request.urlopen(url + "/readyz", context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception as e:  # noqa: BLE001 - not up yet
                last = str(e)
        time.sleep(0.2)
    raise SystemExit(f"certvault did not become ready within {timeout}s: {last}")


def main() -> int:
    binary = os.environ.get("CERTVAULT_BIN")
    if not binary or not os.access(binary, os.X_OK):
        print("CERTVAULT_BIN must name the certvault binary", file=sys.stderr)
        return 1
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        print(f"schemathesis is not installed in this venv ({st} is missing)", file=sys.stderr)
        return 1
    spec = ROOT / "docs" / "openapi.json"
    work = Path(tempfile.mkdtemp(prefix="certvault-api-"))
    data = work / "data"
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen(
        [binary, "serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
         "--base-domain", "certvault.test", "--log", "info,certvault_server=debug"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    rc = 1
    try:
        wait_ready(url, data / "tls" / "ca.pem", proc)
        token = (data / "admin.token").read_text().strip()
        cmd = [
            str(st), "run", str(spec), "--url", url,
            "--header", f"Authorization: Bearer {token}",
            "--tls-verify", str(data / "tls" / "ca.pem"),
            "--checks", CHECKS,
            "--max-examples", os.environ.get("CERTVAULT_API_EXAMPLES", "25"),
            "--seed", os.environ.get("CERTVAULT_API_SEED", "8"),
            "--workers", "1",
            "--request-timeout", "30",
            "--suppress-health-check", "all",
            "--output-sanitize", "true",
            *sys.argv[1:],
        ]
        printable = [("Authorization: Bearer ***" if c.startswith("Authorization:") else c) for c in cmd]
        print("$", " ".join(printable), flush=True)
        rc = subprocess.call(cmd, cwd=work)
        if proc.poll() is not None:
            print(f"certvault died during the run (exit code {proc.returncode})", file=sys.stderr)
            rc = rc or 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code != 0:
                print(f"certvault exited with {code} after SIGTERM (want 0)", file=sys.stderr)
                rc = rc or 1
        log.close()
        text = (work / "server.log").read_text(errors="replace")
        if "panicked" in text:
            print("certvault panicked during the run:", file=sys.stderr)
            rc = rc or 1
        if rc != 0:
            print("---- server log (last 80 lines) ----", file=sys.stderr)
            print("\n".join(text.splitlines()[-80:]), file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
