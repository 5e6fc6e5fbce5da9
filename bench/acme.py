#!/usr/bin/env python3
"""ACME benchmark (issue 6): N certificates ordered through DNS-01 (RFC 2136 + TSIG into a real
BIND 9) from one Debian pebble (PEBBLE_VA_NOSLEEP=1, no authorization reuse, no nonce
rejection), by certvault and by lego (Debian package, `rfc2136` DNS provider against the same
BIND zone) with the same parallelism, in the same run. Prints both throughputs and the ratio.

    .venv/bin/python bench/acme.py --server-bin target/release/certvault [--certs 100] [--parallel 10]

Parallelism P: certvault gets P client workers, each creating its share of the certificates
one at a time and polling the operation until it completes (so P orders are in flight); lego
runs P processes at a time, one certificate each (`lego run`, one account per process). Both
use EC P-256 keys and one DNS name per certificate. Every issued chain is counted only after
it was checked (certvault: the operation completed and the version has a certificate; lego:
the .crt file exists and carries the name).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "sdk"))

from acme_peers import Bind, Pebble, binary  # noqa: E402
from support import new_server  # noqa: E402


def run_certvault(server_bin: str, bind: Bind, pebble: Pebble, n: int, parallel: int, work: Path) -> float:
    srv = new_server(server_bin, work / "certvault")
    srv.start()
    try:
        api = srv.api()
        r = api.put("/certificates/issuers/pebble", json={"provider": "acme", "acme": {
            "directory": pebble.directory_url, "email": "bench@example.test", "terms_agreed": True,
            "ca_pem": pebble.tls_ca_pem,
            "dns": {"mode": "rfc2136", "zone": bind.zone, "server": bind.addr,
                    "tsig_key_name": bind.key_name, "tsig_secret": bind.key_secret}}})
        assert r.status_code == 200, r.text

        def order(i: int) -> None:
            name = f"cv{i}.{bind.zone}"
            body = {"policy": {"key_props": {"kty": "EC", "crv": "P-256"},
                               "x509_props": {"subject": f"CN={name}", "sans": {"dns_names": [name]}},
                               "issuer": {"name": "pebble"}}}
            r = api.post(f"/certificates/cv{i}/create", json=body)
            assert r.status_code == 202, r.text
            delay = 0.05
            while True:
                op = api.get(f"/certificates/cv{i}/pending").json()
                if op["status"] != "inProgress":
                    break
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)
            assert op["status"] == "completed", op
            cert = api.get(f"/certificates/cv{i}/").json()
            assert cert.get("cer"), cert

        def worker(w: int) -> None:
            for i in range(w, n, parallel):
                order(i)

        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(parallel) as ex:
            for f in [ex.submit(worker, w) for w in range(parallel)]:
                f.result()
        return time.monotonic() - t0
    finally:
        srv.stop()


def run_lego(bind: Bind, pebble: Pebble, n: int, parallel: int, work: Path) -> float:
    lego = binary("lego", "lego")
    ca = work / "pebble-tls-ca.pem"
    ca.write_text(pebble.tls_ca_pem)
    env = dict(os.environ,
               LEGO_CA_CERTIFICATES=str(ca),
               RFC2136_NAMESERVER=bind.addr,
               RFC2136_TSIG_KEY=bind.key_name,
               RFC2136_TSIG_SECRET=bind.key_secret,
               RFC2136_TSIG_ALGORITHM="hmac-sha256.",
               RFC2136_TTL="60",
               RFC2136_PROPAGATION_TIMEOUT="60",
               RFC2136_POLLING_INTERVAL="1")

    def order(i: int) -> None:
        name = f"lego{i}.{bind.zone}"
        path = work / f"lego-{i}"
        cmd = [lego, "--server", pebble.directory_url, "--accept-tos", "--email", "bench@example.test",
               "--path", str(path), "--key-type", "ec256", "--dns", "rfc2136",
               "--dns.resolvers", bind.addr, "--dns.disable-cp", "--domains", name, "run"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        crt = path / "certificates" / f"{name}.crt"
        if out.returncode != 0 or not crt.is_file():
            tail = (out.stdout + out.stderr).strip().splitlines()[-3:]
            print(f"lego failed for {name}: {' | '.join(tail)}", flush=True)
            return False
        return True

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(parallel) as ex:
        done = [f.result() for f in [ex.submit(order, i) for i in range(n)]]
    return time.monotonic() - t0, sum(done)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server-bin", required=True)
    ap.add_argument("--certs", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--only", choices=["certvault", "lego"], default=None)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="certvault-acme-bench-"))
    bind = Bind("bench-acme.test")
    pebble = Pebble(bind.addr)
    try:
        print(f"ACME DNS-01 benchmark: {a.certs} certificates, parallelism {a.parallel}, "
              f"pebble (PEBBLE_VA_NOSLEEP=1, no authz reuse) + BIND 9 RFC 2136, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
              flush=True)
        results = {}
        if a.only in (None, "certvault"):
            t = run_certvault(a.server_bin, bind, pebble, a.certs, a.parallel, work)
            results["certvault"] = t
            print(f"certvault: {a.certs} certificates in {t:.1f} s = {a.certs / t:.2f} certificates/s", flush=True)
        if a.only in (None, "lego"):
            t, ok = run_lego(bind, pebble, a.certs, a.parallel, work)
            # Throughput counts issued certificates only (a failed lego run is not retried).
            results["lego"] = t * a.certs / max(ok, 1)
            print(f"lego 4.9.1: {ok} of {a.certs} certificates in {t:.1f} s = {ok / t:.2f} certificates/s", flush=True)
        orders = pebble.orders_created()
        print(f"pebble orders: {orders}")
        if len(results) == 2:
            ratio = results["lego"] / results["certvault"]  # seconds per certificate, lego / certvault
            print(f"ratio certvault / lego throughput: {ratio:.2f} (target >= 2)")
            return 0 if ratio >= 2 else 1
        return 0
    finally:
        pebble.stop()
        bind.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
