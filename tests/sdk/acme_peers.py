"""Real ACME peers for the SDK tests: BIND 9 (named) authoritative for one zone with a TSIG key
allowed to update TXT records (RFC 2136), and Debian's pebble resolving through it.

The Python twin of crates/certvault-testkit (same configuration): each peer runs on free loopback
ports in its own temp directory and is killed by `stop()`. A missing binary fails the test with
the Debian package to install (scripts/test-all.sh installs them).
"""

from __future__ import annotations

import secret_registry
import base64
import datetime
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import pytest


def binary(name: str, package: str) -> str:
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]:
        p = Path(d) / name
        if p.is_file():
            return str(p)
    pytest.fail(f"required binary `{name}` not found: apt-get install -y {package}", pytrace=False)


def free_port() -> int:
    """A loopback port free for TCP and UDP at the time of the call."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class _Proc:
    def __init__(self, name: str, cmd: list[str], cwd: Path, env: dict | None = None):
        self.name = name
        self.log = cwd / f"{name}.log"
        self._f = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._f,
                                     stderr=subprocess.STDOUT, env=env)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def check(self, what: str, deadline: float) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited early; log:\n{self.text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{self.name}: {what}; log:\n{self.text()}")

    def wait_tcp(self, port: int) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                self.check(f"port {port} not open within 20 s", deadline)
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._f.close()


class Bind:
    def __init__(self, zone: str):
        named = binary("named", "bind9")
        dig = binary("dig", "bind9-dnsutils")
        self.dir = Path(tempfile.mkdtemp(prefix="certvault-bind-"))
        self.zone = zone
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.key_name = "certvault-test"
        self.key_secret = base64.b64encode(os.urandom(32)).decode()
        secret_registry.register("bind9 TSIG secret", self.key_secret)
        d = self.dir
        (d / "zone.db").write_text(
            f"$TTL 60\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n"
            f"@ IN NS ns.{zone}.\n@ IN A 127.0.0.1\nns IN A 127.0.0.1\nwww IN A 127.0.0.1\n")
        (d / "named.conf").write_text(f"""options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{self.key_name}" {{
    algorithm hmac-sha256;
    secret "{self.key_secret}";
}};
zone "{zone}" {{
    type primary;
    file "{d}/zone.db";
    update-policy {{ grant {self.key_name} zonesub TXT; }};
}};
""")
        self.proc = _Proc("named", [named, "-g", "-4", "-c", str(d / "named.conf")], d)
        self.proc.wait_tcp(self.port)
        deadline = time.monotonic() + 20
        while True:
            out = subprocess.run([dig, "+short", "+norecurse", "+time=1", "+tries=1", "-p", str(self.port),
                                  "@127.0.0.1", zone, "SOA"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                break
            self.proc.check("did not serve the zone's SOA within 20 s", deadline)
            time.sleep(0.05)
        self._dig = dig

    def dig_txt(self, name: str) -> list[str]:
        # Over TCP, and again when dig reports a problem instead of records (as the testkit).
        last = ""
        for _ in range(5):
            out = subprocess.run([self._dig, "+short", "+tcp", "+norecurse", "-p", str(self.port), "@127.0.0.1",
                                  name, "TXT"], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            lines = [l.strip() for l in out.stdout.splitlines() if l.strip()]
            if any(l.startswith(";") for l in lines):
                last = out.stdout
                time.sleep(0.2)
                continue
            return sorted(l.strip('"') for l in lines)
        raise AssertionError(f"dig kept reporting problems: {last}")

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _tls_material() -> tuple[str, str, str]:
    """A throwaway CA and a leaf for 127.0.0.1/localhost signed by it: (CA, leaf, key) PEM."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certvault test pebble TLS CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return pem(ca), pem(leaf), key_pem


class Pebble:
    def __init__(self, dns_server: str, va_sleep: bool = False):
        pebble = binary("pebble", "pebble")
        self.dir = Path(tempfile.mkdtemp(prefix="certvault-pebble-"))
        d = self.dir
        self.tls_ca_pem, leaf, key = _tls_material()
        (d / "ca.pem").write_text(self.tls_ca_pem)
        (d / "cert.pem").write_text(leaf)
        (d / "key.pem").write_text(key)
        port, mgmt = free_port(), free_port()
        (d / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{mgmt}",
            "certificate": str(d / "cert.pem"),
            "privateKey": str(d / "key.pem"),
            "httpPort": free_port(),
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}))
        env = dict(os.environ, PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        env.pop("PEBBLE_VA_NOSLEEP", None)
        if not va_sleep:
            # Else its VA sleeps 0-5 s before each lookup: a window to act mid-order.
            env["PEBBLE_VA_NOSLEEP"] = "1"
        self.proc = _Proc("pebble", [pebble, "-config", str(d / "pebble.json"), "-dnsserver", dns_server], d, env)
        self.proc.wait_tcp(port)
        self.proc.wait_tcp(mgmt)
        self.directory_url = f"https://127.0.0.1:{port}/dir"
        self.management_url = f"https://127.0.0.1:{mgmt}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(self.directory_url, verify=str(d / "ca.pem"), timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            self.proc.check("directory did not answer within 20 s", deadline)
            time.sleep(0.1)

    def root_pem(self, i: int = 0) -> str:
        r = requests.get(f"{self.management_url}/roots/{i}", verify=str(self.dir / "ca.pem"), timeout=5)
        r.raise_for_status()
        return r.text

    def orders_created(self) -> int:
        return self.proc.text().count("Added order")

    def log(self) -> str:
        return self.proc.text()

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
