"""Benchmarks that print figures (never timed assertions).

    python -m tests.bench bundle      one bundle vs. the manual keytool/openssl pipeline
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sidecar.renewal import Desired
from tests.doubles.vault import VaultDouble
from tests.manager_kit import make_config, make_manager

DESIRED = Desired(signer="pki_root_a", trust=("pki_root_a",))


def _force_renewal_desired(i: int) -> Desired:
    return Desired(signer="pki_root_a", trust=("pki_root_a",) if i % 2 else
                   ("pki_root_a", "pki_root_b"))


def our_bundle(runs: int) -> list[float]:
    with VaultDouble() as vault, tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        config = make_config(vault.url, vault.root_token, base / "volume", base)
        manager, _, _ = make_manager(config)
        manager.reconcile(DESIRED)  # warm-up: login, connection
        times = []
        for i in range(runs):
            start = time.perf_counter()
            manager.reconcile(_force_renewal_desired(i))  # trust set flips: always renews
            times.append(time.perf_counter() - start)
    return times


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=120)


def keytool_pipeline(runs: int) -> list[float]:
    """The articles' manual pipeline: keytool -genkey, -certreq, openssl x509 -req, 3 imports."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        _run(["openssl", "req", "-new", "-x509", "-nodes", "-newkey", "ec",
              "-pkeyopt", "ec_paramgen_curve:P-256", "-keyout", "ca.key", "-out", "ca.crt",
              "-days", "365", "-subj", "/CN=Kafka Root A"], base)
        for i in range(runs):
            work = base / f"run{i}"
            work.mkdir()
            (work / "pw").write_text("changeit-123\n")
            start = time.perf_counter()
            pw = ["-storepass:file", "pw", "-keypass:file", "pw"]
            _run(["keytool", "-genkey", "-keystore", "server.keystore.jks", "-alias", "localhost",
                  "-keyalg", "EC", "-groupname", "secp256r1", "-validity", "1",
                  "-dname", "CN=broker-1.kafka.test,OU=kafka,O=Example",
                  "-ext", "SAN=dns:broker-1.kafka.test,dns:localhost,ip:127.0.0.1",
                  "-storetype", "JKS", *pw], work)
            _run(["keytool", "-certreq", "-keystore", "server.keystore.jks", "-alias",
                  "localhost", "-file", "cert-file", *pw], work)
            _run(["openssl", "x509", "-req", "-CA", "../ca.crt", "-CAkey", "../ca.key",
                  "-in", "cert-file", "-out", "cert-signed", "-days", "1",
                  "-CAcreateserial"], work)
            _run(["keytool", "-import", "-noprompt", "-keystore", "server.keystore.jks",
                  "-alias", "CARoot", "-file", "../ca.crt", *pw], work)
            _run(["keytool", "-import", "-noprompt", "-keystore", "server.keystore.jks",
                  "-alias", "localhost", "-file", "cert-signed", *pw], work)
            _run(["keytool", "-import", "-noprompt", "-keystore", "server.truststore.jks",
                  "-alias", "CARoot", "-file", "../ca.crt", "-storepass:file", "pw"], work)
            times.append(time.perf_counter() - start)
    return times


def _peak_rss_mb(kind: str, runs: int) -> float:
    """Peak RSS of a fresh process doing ``runs`` bundles of one kind (children included)."""
    code = (f"import json,resource; from tests.bench import {kind}; {kind}({runs}); "
            "s=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "c=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
            "print(json.dumps([s, c]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600).stdout
    self_kb, children_kb = json.loads(out.strip().splitlines()[-1])
    return (children_kb if kind == "keytool_pipeline" else max(self_kb, children_kb)) / 1024


def bench_bundle(runs: int, keytool_runs: int) -> None:
    ours = our_bundle(runs)
    manual = keytool_pipeline(keytool_runs)
    ours_rss = _peak_rss_mb("our_bundle", 3)
    manual_rss = _peak_rss_mb("keytool_pipeline", 1)
    ours_median, manual_median = statistics.median(ours), statistics.median(manual)
    print(f"{'pipeline':<34}{'runs':>6}{'median_ms':>12}{'p90_ms':>10}{'peak_rss_mb':>14}")
    for name, times, rss in (("pki-auth-manager (all formats)", ours, ours_rss),
                             ("keytool+openssl (JKS only)", manual, manual_rss)):
        p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else times[0]
        print(f"{name:<34}{len(times):>6}{statistics.median(times) * 1000:>12.1f}"
              f"{p90 * 1000:>10.1f}{rss:>14.1f}")
    print("peak RSS: ours is the whole Python process (Vault double included); keytool's is "
          "the largest single JVM of the pipeline")
    print(f"ratio_vs_keytool={manual_median / ours_median:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    sub = parser.add_subparsers(dest="what", required=True)
    bundle = sub.add_parser("bundle", help="one bundle vs. the keytool/openssl pipeline")
    bundle.add_argument("--runs", type=int, default=30)
    bundle.add_argument("--keytool-runs", type=int, default=5)
    args = parser.parse_args(argv)
    if args.what == "bundle":
        bench_bundle(args.runs, args.keytool_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
