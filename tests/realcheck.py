"""Run every real-server test group and print one line per group.

    python -m tests.realcheck [--doubles] [--group NAME ...] [-k EXPR]
    python -m tests.realcheck --make-kafka-pki DIR [--store-type PKCS12|JKS|PEM]

Each group is a set of test files that run unchanged against a real server when its
environment is set (docs/testing.md). A group runs as one pytest
subprocess, with its counts read from pytest's JUnit XML, and prints
``<group>: passed=N failed=N skipped=N``; a group whose environment is missing prints
``<group>: not configured (missing VAR ...)`` and counts as neither passed nor failed. The exit
status is 1 if any group failed (a test failed or errored, or pytest itself broke), else 0.

Kafka groups need the broker back on its start material before every test, because their tests
alter its listeners. ``KAFKA_RESTART_COMMAND`` (run by ``sh -c``) does that: realcheck runs it
before each test of a Kafka group, one pytest subprocess per test, with ``KAFKA_TEST_GROUP``
(``kafka`` or ``monitor``) and the group's variables in its environment, then waits until
``KAFKA_BOOTSTRAP_SERVERS`` accepts connections. Without it the Kafka groups are not configured.

``--doubles`` starts the Consul double as a separate process (``python -m tests.doubles.consul
--port 0``) and an OpenBao dev server (``tests.openbao``, from the test extra) and hands them
to the groups only through the variables a real server would be given (every other server
variable is cleared). The Kafka groups get the broker double as a process (``python -m
tests.doubles.kafka --config ...``, fixed ports) and, as ``KAFKA_RESTART_COMMAND``,
``python -m tests.realcheck --restart-broker-double DIR``, which stops it, writes the group's
start material and starts it again: what a real broker's restart command has to do.

``--make-kafka-pki DIR`` writes the material the ``kafka`` group's broker starts on: roots A and
B (``root-a.pem``/``.key``, ``root-b.pem``/``.key``; kept if present) and, for listeners SSL and
INTERNAL, fresh keystores from root A and truststores holding root A, with the
``listener.name.*`` lines that load them in ``DIR/listeners.properties`` (password
``changeit``). Running it again is the store half of a reset.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.openbao import OpenBao

ROOT = Path(__file__).resolve().parent.parent

#: Every variable that points a test at a real server (cleared under ``--doubles``).
SERVER_VARS = (
    "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_SSL_VERIFY", "CONSUL_CACERT", "VAULT_ADDR", "VAULT_TOKEN",
    "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BROKER_ID",
    "KAFKA_INTERNAL_BOOTSTRAP", "KAFKA_SSL_LISTENER", "KAFKA_INTERNAL_LISTENER",
    "KAFKA_STORE_TYPE", "KAFKA_TEST_PKI_DIR", "KAFKA_TEST_VOLUME_DIR", "KAFKA_RESTART_COMMAND",
)


@dataclass(frozen=True)
class Group:
    """Test files that need the same servers; ``restart``: reset the broker before each test."""

    name: str
    needs: tuple[str, ...]
    files: tuple[str, ...]
    restart: bool = False


GROUPS = (
    Group("consul", ("CONSUL_HTTP_ADDR",), (
        "tests/test_consul_double.py", "tests/test_consul_store.py",
        "tests/test_rotation_consul.py", "tests/test_operator_cli.py",
    )),
    Group("vault", ("VAULT_ADDR", "VAULT_TOKEN"), (
        "tests/test_vault_profiles.py", "tests/test_auth_manager.py", "tests/test_vault_init.py",
    )),
    Group("kafka", ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TEST_PKI_DIR", "KAFKA_RESTART_COMMAND"),
          ("tests/test_kafka_double.py",), restart=True),
    # The volume the broker reads is filled from the tests' Vault, so the real one is needed.
    Group("monitor", ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TEST_VOLUME_DIR", "KAFKA_RESTART_COMMAND",
                      "VAULT_ADDR", "VAULT_TOKEN"),
          ("tests/test_monitor_broker.py",), restart=True),
)


@dataclass
class Counts:
    """What one group's pytest runs reported."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def add(self, other: Counts) -> None:
        self.passed += other.passed
        self.failed += other.failed
        self.skipped += other.skipped


def _junit_counts(path: Path) -> Counts | None:
    """Counts from pytest's JUnit XML (errors count as failures), None if it wrote none."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = Counts()
    for suite in suites:
        total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        counts.add(Counts(total - failed - skipped, failed, skipped))
    return counts


def run_pytest(args: Sequence[str], env: Mapping[str, str], timeout: float) -> Counts:
    """One pytest subprocess; a run that reports nothing (crash, timeout) is one failure."""
    with tempfile.TemporaryDirectory(prefix="realcheck-") as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}", *args]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=dict(env), timeout=timeout, check=False,
                                  stdout=2)  # stdout keeps only the group lines
        except subprocess.TimeoutExpired:
            print(f"realcheck: timed out after {timeout:.0f} s: {shlex.join(cmd)}", flush=True)
            return Counts(failed=1)
        counts = _junit_counts(xml)
        if counts is None or proc.returncode not in (0, 1, 5):
            # 5 is "nothing collected"; anything else beyond 1 is pytest itself failing.
            return Counts(failed=1) if counts is None else Counts(counts.passed,
                                                                  max(counts.failed, 1),
                                                                  counts.skipped)
        return counts


def collect(files: Sequence[str], extra: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The test ids pytest would run for ``files`` (with ``extra`` options such as ``-k``)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
         *extra, *files],
        cwd=ROOT, env=dict(env), capture_output=True, text=True, check=False,
    ).stdout
    return [line for line in out.splitlines() if "::" in line and not line.startswith(" ")]


def wait_for_port(address: str, timeout: float) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 2):
            return True
        time.sleep(0.5)
    return False


def restart_broker(group: Group, env: Mapping[str, str], timeout: float) -> bool:
    """Run KAFKA_RESTART_COMMAND for ``group`` and wait for the broker's listener."""
    command_env = dict(env) | {"KAFKA_TEST_GROUP": group.name}
    try:
        done = subprocess.run(["sh", "-c", env["KAFKA_RESTART_COMMAND"]], env=command_env,
                              timeout=timeout, check=False, stdout=2)
    except subprocess.TimeoutExpired:
        print(f"realcheck: KAFKA_RESTART_COMMAND timed out ({group.name})", flush=True)
        return False
    if done.returncode != 0:
        print(f"realcheck: KAFKA_RESTART_COMMAND exited {done.returncode} ({group.name})",
              flush=True)
        return False
    return wait_for_port(env["KAFKA_BOOTSTRAP_SERVERS"].split(",")[0], timeout)


def run_group(group: Group, env: Mapping[str, str], extra: Sequence[str],
              timeout: float) -> Counts:
    """Run one configured group: one pytest, or one per test after a broker reset."""
    if not group.restart:
        return run_pytest([*extra, *group.files], env, timeout)
    counts = Counts()
    for test_id in collect(group.files, extra, env):
        if not restart_broker(group, env, timeout):
            counts.add(Counts(failed=1))
            continue
        counts.add(run_pytest([test_id], env, timeout))
    return counts


def missing(group: Group, env: Mapping[str, str]) -> list[str]:
    """The variables ``group`` needs that ``env`` lacks."""
    return [name for name in group.needs if not env.get(name)]


def _start(args: list[str]) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise RuntimeError(f"{args[0]} exited {proc.returncode} before printing its address")
    return proc, json.loads(line)


@contextlib.contextmanager
def doubles(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Start the Consul double and an OpenBao as processes; the env that addresses them."""
    procs: list[subprocess.Popen[str]] = []
    work: Path | None = None
    bao = OpenBao()
    try:
        env = {k: v for k, v in env.items() if k not in SERVER_VARS}
        consul_token = secrets.token_hex(16)
        proc, info = _start(["tests.doubles.consul", "--port", "0", "--acl-token", consul_token])
        procs.append(proc)
        env |= {"CONSUL_HTTP_ADDR": f"{info['host']}:{info['port']}",
                "CONSUL_HTTP_TOKEN": consul_token}
        # A random root token: a common word would make "not in the logs" checks meaningless.
        bao.start()
        env |= {"VAULT_ADDR": bao.url, "VAULT_TOKEN": bao.root_token}
        work = Path(tempfile.mkdtemp(prefix="realcheck-kafka-"))
        env |= {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_free_port()}",
            "KAFKA_INTERNAL_BOOTSTRAP": f"127.0.0.1:{_free_port()}",
            "KAFKA_TEST_PKI_DIR": str(work / "pki"),
            "KAFKA_TEST_VOLUME_DIR": str(work / "volume"),
            "KAFKA_RESTART_COMMAND": shlex.join([sys.executable, "-m", "tests.realcheck",
                                                 "--restart-broker-double", str(work)]),
        }
        yield env
    finally:
        bao.stop()
        if work is not None:
            _stop_pid(work / "broker.pid")
            shutil.rmtree(work, ignore_errors=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def make_kafka_pki(directory: Path, store_type: str = "PKCS12") -> Path:
    """Write the ``kafka`` group's start material into ``directory``; the properties file."""
    from cryptography.hazmat.primitives import serialization

    from tests import kafka_setup as ks

    directory.mkdir(parents=True, exist_ok=True)
    roots = {}
    for label in ("a", "b"):
        if not (directory / f"root-{label}.pem").exists():
            ca = ks.make_ca(label.upper())
            (directory / f"root-{label}.pem").write_bytes(
                ca.cert.public_bytes(serialization.Encoding.PEM))
            (directory / f"root-{label}.key").write_bytes(ca.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        roots[label] = ks._load_identity(directory, label)
    ext = {"PKCS12": "p12", "JKS": "jks", "PEM": "pem"}[store_type]
    lines = []
    for listener in ("SSL", "INTERNAL"):
        name = listener.lower()
        settings = ks.write_keystore(directory / f"{name}-keystore.{ext}",
                                     ks.make_leaf(roots["a"]), store_type)
        settings |= ks.write_truststore(directory / f"{name}-truststore.{ext}", [roots["a"]],
                                        store_type)
        lines += [f"{k}={v}" for k, v in ks.listener_prefixed(listener, settings).items()]
    properties = directory / "listeners.properties"
    properties.write_text("\n".join(lines) + "\n")
    return properties


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_pid(pid_file: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text())
        os.kill(pid, 15)
        for _ in range(100):
            os.kill(pid, 0)  # raises once it is gone
            time.sleep(0.1)
        os.kill(pid, 9)


def _fill_volume(volume: Path, work: Path) -> dict[str, str]:
    """``pki-auth-manager --once`` into a fresh ``volume`` (docs/deploying.md); its settings."""
    from tests.manager_kit import PASSWORD, SUBJECT
    from tests.monitor_kit import broker_settings

    shutil.rmtree(volume, ignore_errors=True)
    password = work / "store-password"
    password.write_text(PASSWORD)
    subprocess.run(
        [str(Path(sys.executable).with_name("pki-auth-manager")), "--once",
         "--subject", SUBJECT, "--dns-sans", "broker-1.kafka.test,localhost",
         "--ip-sans", "127.0.0.1", "--root", "pki_root_a", "--output-dir", str(volume),
         "--store-password-file", str(password), "--listen", ""],
        # Static mode: with CONSUL_HTTP_ADDR in its environment it would wait for a rotation.
        env={k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")},
        check=True, stdout=2, timeout=120,
    )
    return broker_settings(volume, "PKCS12")


def restart_broker_double(work: Path) -> None:
    """KAFKA_RESTART_COMMAND under --doubles: the broker double back on the group's material."""
    _stop_pid(work / "broker.pid")
    if os.environ.get("KAFKA_TEST_GROUP") == "monitor":
        settings = _fill_volume(Path(os.environ["KAFKA_TEST_VOLUME_DIR"]), work)
    else:
        pki = Path(os.environ["KAFKA_TEST_PKI_DIR"])
        for run in pki.glob("run-*"):
            shutil.rmtree(run, ignore_errors=True)
        settings = dict(line.split("=", 1) for line in
                        make_kafka_pki(pki).read_text().splitlines())
    ssl, internal = (os.environ[n] for n in ("KAFKA_BOOTSTRAP_SERVERS",
                                             "KAFKA_INTERNAL_BOOTSTRAP"))
    config = work / "server.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in {
        "listeners": f"SSL://{ssl},INTERNAL://{internal}",
        "inter.broker.listener.name": "INTERNAL", **settings}.items()))
    with open(work / "broker.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.doubles.kafka", "--config", str(config)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    assert proc.stdout is not None
    if not proc.stdout.readline():  # the JSON line: listening
        raise SystemExit(f"the broker double did not start, see {work / 'broker.log'}")
    (work / "broker.pid").write_text(str(proc.pid))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.realcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doubles", action="store_true",
                        help="start the Consul double and an OpenBao as processes and use them")
    parser.add_argument("--group", action="append", choices=[g.name for g in GROUPS],
                        help="run only this group (repeatable; default: all)")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression, for every group")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds for one pytest run or one broker restart (default 1800)")
    parser.add_argument("--make-kafka-pki", metavar="DIR", type=Path,
                        help="write the kafka group's broker material into DIR and exit")
    parser.add_argument("--store-type", default="PKCS12", choices=("PKCS12", "JKS", "PEM"),
                        help="with --make-kafka-pki: the listener stores' type")
    parser.add_argument("--restart-broker-double", metavar="DIR", type=Path,
                        help=argparse.SUPPRESS)  # the KAFKA_RESTART_COMMAND of --doubles
    args = parser.parse_args(argv)
    if args.restart_broker_double:
        restart_broker_double(args.restart_broker_double)
        return 0
    if args.make_kafka_pki:
        print(make_kafka_pki(args.make_kafka_pki, args.store_type))
        return 0
    chosen = [g for g in GROUPS if not args.group or g.name in args.group]
    extra = ["-k", args.keyword] if args.keyword else []
    with contextlib.ExitStack() as stack:
        env = dict(os.environ)
        if args.doubles:
            env = stack.enter_context(doubles(env))
        failed = False
        for group in chosen:
            lacking = missing(group, env)
            if lacking:
                print(f"{group.name}: not configured (missing {' '.join(lacking)})", flush=True)
                continue
            counts = run_group(group, env, extra, args.timeout)
            failed |= counts.failed > 0
            print(f"{group.name}: passed={counts.passed} failed={counts.failed} "
                  f"skipped={counts.skipped}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
