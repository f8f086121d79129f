"""Benchmarks that print figures (never timed assertions).

    python -m tests.bench bundle      one bundle vs. the manual keytool/openssl pipeline
    python -m tests.bench reaction    record change -> seen by 50 watchers, p50/p99
    python -m tests.bench rotation    A->B with 3 brokers + 3 clients, by phase and step
    python -m tests.bench footprint   RSS and CPU of one idle auth manager and monitor
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sidecar.consul_store import ConsulStore, KeyRead, watch
from sidecar.renewal import Desired
from tests.manager_kit import make_config, make_manager
from tests.vault_setup import FaultyVault, server

DESIRED = Desired(signer="pki_root_a", trust=("pki_root_a",))


def _force_renewal_desired(i: int) -> Desired:
    return Desired(signer="pki_root_a", trust=("pki_root_a",) if i % 2 else
                   ("pki_root_a", "pki_root_b"))


def our_bundle(runs: int) -> list[float]:
    with FaultyVault(*server()) as vault, tempfile.TemporaryDirectory() as tmp:
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
    print("peak RSS: ours is the whole Python process (the fault proxy in front of OpenBao "
          "included, OpenBao apart); keytool's is the largest single JVM of the pipeline")
    print(f"ratio_vs_keytool={manual_median / ours_median:.1f}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@contextmanager
def consul_process() -> Iterator[str]:
    """The Consul double in its own process (so the watchers do not share its GIL)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.doubles.consul", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield str(json.loads(proc.stdout.readline())["url"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _watcher_process(url: str, prefix: str, threads: str) -> None:
    """``threads`` watchers of the rotation key, as the participants' record watches do
    (one single-key blocking query each): prints "<value> <unix time>" per change."""
    lock = threading.Lock()

    def one() -> None:
        store = ConsulStore(url, prefix)

        def on_change(read: KeyRead) -> None:
            value = (read.entry.value if read.entry else b"").decode()
            with lock:
                print(f"{value} {time.time():.6f}", flush=True)

        watch(lambda index, wait: store.get("rotation", index, wait), 30, on_change,
              lambda e, d: None, lambda: False)

    for _ in range(int(threads)):
        threading.Thread(target=one, daemon=True).start()
    threading.Event().wait()


def bench_reaction(watchers: int, flips: int, processes: int) -> None:
    """Time from a write of the rotation record (the keeper's) to each watcher seeing it,
    the watchers spread over ``processes`` processes."""
    prefix = "kafka-pki/bench/"
    processes = max(1, min(processes, watchers))
    with consul_process() as url:
        writer = ConsulStore(url, prefix)
        writer.put("rotation", b"start")
        code = "import sys; from tests.bench import _watcher_process as w; w(*sys.argv[1:])"
        procs = []
        for k in range(processes):
            count = watchers // processes + (1 if k < watchers % processes else 0)
            procs.append((count, subprocess.Popen(
                [sys.executable, "-c", code, url, prefix, str(count)],
                stdout=subprocess.PIPE, text=True)))
        lock = threading.Lock()
        per_process: list[dict[str, list[float]]] = [{} for _ in procs]

        def read(k: int, proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                value, at = line.rsplit(" ", 1)
                with lock:
                    per_process[k].setdefault(value, []).append(float(at))

        def count_seen(value: str) -> list[float]:
            with lock:
                return [t for times in per_process for t in times.get(value, [])]

        for k, (_, proc) in enumerate(procs):
            threading.Thread(target=read, args=(k, proc), daemon=True).start()
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and len(count_seen("start")) < watchers:
                time.sleep(0.1)
            time.sleep(1.0)
            per_watcher: list[float] = []
            all_seen: list[float] = []
            for n in range(flips):
                value = f"record-{n}"
                time.sleep(0.5)
                start = time.time()
                writer.put("rotation", value.encode())
                until = time.monotonic() + 20
                while time.monotonic() < until and len(count_seen(value)) < watchers:
                    time.sleep(0.002)
                times = [t - start for t in count_seen(value)]
                per_watcher += times
                all_seen.append(max(times) if len(times) == watchers else float("inf"))
        finally:
            for _, proc in procs:
                proc.kill()
                proc.wait()
    print(f"watchers={watchers} in {processes} processes, flips={flips}, Consul double in its "
          f"own process, {os.cpu_count()} cores")
    print(f"per watcher:  p50={_percentile(per_watcher, 50) * 1000:.1f} ms  "
          f"p99={_percentile(per_watcher, 99) * 1000:.1f} ms")
    print(f"all watchers: p50={_percentile(all_seen, 50) * 1000:.1f} ms  "
          f"p99={_percentile(all_seen, 99) * 1000:.1f} ms")


def _events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def _ts(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["timestamp"]).timestamp()


def alter_breakdown(result: Any) -> list[dict[str, float]]:
    """Every broker reload of a drill, split: admin client, request (to its answer), applied
    (answer -> the broker double serves it on every listener), detected (served -> verified)."""
    rows = []
    for p in result.participants:
        if p.broker is None:
            continue
        for event in _events(result.base / f"{p.name}-monitor.log"):
            if event.get("event") != "reload_verified" or "request_seconds" not in event:
                continue
            serial = int(event["serial"].replace(":", ""), 16)
            swaps = [at for at, _, s in p.broker.swaps if s == serial]
            verified = _ts(event)
            answered = verified - event["verify_seconds"]
            served = max(swaps, default=answered)
            rows.append({"admin": event["admin_seconds"], "request": event["request_seconds"],
                         "applied": served - answered, "detected": verified - served,
                         "alter_to_verified": event["alter_seconds"] + event["verify_seconds"]})
    return rows


def print_alter_breakdown(rows: list[dict[str, float]]) -> None:
    columns = ("admin", "request", "applied", "detected", "alter_to_verified")
    print(f"alter step, {len(rows)} broker reloads (A->B and back), seconds:")
    print(f"{'':>8}" + "".join(f"{c:>19}" for c in columns))
    for name, pick in (("median", statistics.median), ("max", max)):
        print(f"{name:>8}" + "".join(f"{pick([r[c] for r in rows]):>19.3f}" for c in columns))


def bench_rotation(brokers: int, clients: int, broker_mode: str = "kraft") -> None:
    """One drill (no faults, no dwell); the A->B rotation split by phase and by step, and the
    monitor's alter step split (admin client, request, applied, detected)."""
    from tests.drill import run_drill

    with tempfile.TemporaryDirectory() as tmp:
        result = run_drill(brokers, clients, [], keep=Path(tmp),
                           broker_mode="zk" if broker_mode == "zk" else "kraft")
        if not result.converged:
            print(result.report)
            raise SystemExit("the rotation did not converge")
        first = next(r for _, r in result.timeline if r.to_root == "pki_root_b")
        marks = [(at, r) for at, r in result.timeline if r.id == first.id]
        auth = {p.name: _events(result.base / f"{p.name}-auth.log")
                for p in result.participants}
        monitor = {p.name: _events(result.base / f"{p.name}-monitor.log")
                   for p in result.participants}
        print(f"rotation A->B, {brokers} brokers + {clients} clients, no dwell: "
              f"{result.rotation_seconds:.2f} s flip to stable "
              f"(failed handshakes: {result.failed_handshakes})")
        header = ("phase", "total", "watch", "vault", "write", "reload", "verify", "barrier")
        print("".join(f"{h:>9}" for h in header) + "   (seconds; slowest participant)")
        for (start, record), (end, _) in itertools.pairwise(marks):
            if record.stable:
                break
            issued = [e for events in auth.values() for e in events
                      if e.get("event") == "certificate_issued"
                      and e.get("rotation_id") == record.id and e.get("phase") == record.phase]
            started = [e for events in auth.values() for e in events
                       if e.get("event") == "renewal_started"
                       and e.get("rotation_id") == record.id and e.get("phase") == record.phase]
            verified = [e for events in monitor.values() for e in events
                        if e.get("event") == "reload_verified" and start <= _ts(e) <= end + 5]
            watch = max((_ts(e) - start for e in started), default=0.0)
            vault = max((e.get("vault_seconds", 0) for e in issued), default=0.0)
            write = max((e.get("write_seconds", 0) for e in issued), default=0.0)
            reload = max((e.get("check_seconds", 0) + e.get("alter_seconds", 0)
                          for e in verified), default=0.0)
            verify = max((e.get("verify_seconds", 0) for e in verified), default=0.0)
            acked = max((_ts(e) for e in verified if _ts(e) <= end), default=start)
            row = (f"{record.phase}", end - start, watch, vault, write, reload, verify,
                   end - acked)
            print(f"{row[0]:>9}" + "".join(f"{v:>9.3f}" for v in row[1:]))
        print_alter_breakdown(alter_breakdown(result))
        print(f"broker_mode={broker_mode} rotation_seconds={result.rotation_seconds:.2f}")


def _proc_sample(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process from /proc."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks


def bench_footprint(seconds: float) -> None:
    """An idle coordinated auth manager and an idle monitor, sampled over ``seconds``."""
    from tests.drill import run_idle_pair

    with tempfile.TemporaryDirectory() as tmp, run_idle_pair(Path(tmp)) as pids:
        time.sleep(5)  # past start-up
        before = {name: _proc_sample(pid) for name, pid in pids.items()}
        peak = {name: sample[0] for name, sample in before.items()}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(1)
            for name, pid in pids.items():
                peak[name] = max(peak[name], _proc_sample(pid)[0])
        after = {name: _proc_sample(pid) for name, pid in pids.items()}
    print(f"idle for {seconds:.0f} s (after 5 s of start-up)")
    print(f"{'process':<18}{'rss_mb':>9}{'peak_rss_mb':>13}{'cpu_s_per_min':>15}{'cpu_%':>8}")
    for name in pids:
        cpu = after[name][1] - before[name][1]
        per_minute = cpu / seconds * 60
        print(f"{name:<18}{after[name][0]:>9.1f}{peak[name]:>13.1f}{per_minute:>15.3f}"
              f"{cpu / seconds * 100:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    sub = parser.add_subparsers(dest="what", required=True)
    bundle = sub.add_parser("bundle", help="one bundle vs. the keytool/openssl pipeline")
    bundle.add_argument("--runs", type=int, default=30)
    bundle.add_argument("--keytool-runs", type=int, default=5)
    reaction = sub.add_parser("reaction", help="flip -> seen by every watcher")
    reaction.add_argument("--watchers", type=int, default=50)
    reaction.add_argument("--flips", type=int, default=20)
    reaction.add_argument("--processes", type=int, default=50)
    rotation = sub.add_parser("rotation", help="A->B rotation split by phase and step")
    rotation.add_argument("--brokers", type=int, default=3)
    rotation.add_argument("--clients", type=int, default=3)
    rotation.add_argument("--broker-mode", choices=("kraft", "zk"), default="kraft",
                          help="zk: brokers as the 2.4 field broker (reload in the request, "
                               "passwords sent)")
    footprint = sub.add_parser("footprint", help="idle RSS and CPU")
    footprint.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args(argv)
    if args.what == "bundle":
        bench_bundle(args.runs, args.keytool_runs)
    elif args.what == "reaction":
        bench_reaction(args.watchers, args.flips, args.processes)
    elif args.what == "rotation":
        bench_rotation(args.brokers, args.clients, args.broker_mode)
    else:
        bench_footprint(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
