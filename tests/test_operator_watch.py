"""``kafka-pki rotate --wait`` and ``status --watch`` on a running cluster (in-process
participants on the Consul double and OpenBao, or the real servers), on a terminal, and on a
drill's cluster of separate sidecar processes."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar import operator_cli, watch
from sidecar.consul_store import ConsulStore
from sidecar.operator_cli import main
from sidecar.rotation import RotationRecord
from sidecar.watch_progress import Progress
from tests.consul_setup import ConsulTarget
from tests.drill import CLUSTER, PREFIX, Drill, Timeline
from tests.rotation_kit import Cluster
from tests.test_operator_cli import cli, cluster  # noqa: F401  (the fixture)

A, B = "pki_root_a", "pki_root_b"


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many reads of the prefix (O(N) each) and of single keys kafka-pki makes."""
    counts = {"prefix": 0, "key": 0}
    make_store = operator_cli._store

    def counting_store(args: argparse.Namespace) -> ConsulStore:
        store = make_store(args)
        read, get = store.read, store.get

        def counted_read(*a: Any, **kw: Any) -> Any:
            counts["prefix"] += 1
            return read(*a, **kw)

        def counted_get(*a: Any, **kw: Any) -> Any:
            counts["key"] += 1
            return get(*a, **kw)

        store.read = counted_read  # type: ignore[method-assign]
        store.get = counted_get  # type: ignore[method-assign]
        return store

    monkeypatch.setattr(operator_cli, "_store", counting_store)
    return counts


def settle(c: Cluster, *names: str) -> None:
    c.set_root(A)
    for name in names:
        c.start(name, role="client" if name.startswith("client") else "broker")
    c.wait_until(lambda: c.converged(A), "stable on A")


def test_rotate_wait_follows_the_rotation_and_exits_0(
        cluster: Cluster, counted: dict[str, int],  # noqa: F811
        capsys: pytest.CaptureFixture[str], record_property: Any) -> None:
    """Plain output (stdout is no terminal): one line per change, the last one "complete";
    the reports are read at most once a second plus once per change of the record."""
    settle(cluster, "broker-1", "broker-2", "client-1")
    capsys.readouterr()
    counted.update(prefix=0, key=0)
    start = time.monotonic()
    assert main(cli(cluster, "rotate", "--to", B, "--wait", "--timeout", "90")) == 0
    elapsed = time.monotonic() - start
    assert cluster.converged(B)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"active-root = {B}")
    assert lines[-1].split(" ", 1)[1].startswith(f"{A} -> {B}: complete"), lines
    shown = "\n".join(lines)
    for phase in (1, 2, 3):
        assert f"phase {phase} of 3" in shown, shown
    assert "/3 acknowledged" in shown
    record_property("figure", f"rotate --wait, 3 participants: {elapsed:.1f}s, "
                    f"{counted['prefix']} prefix reads, {counted['key']} single-key reads")
    # linear: a bounded number of O(N) reads, however many reports arrived
    assert counted["prefix"] <= elapsed / watch.MIN_SPACING + 4 + 2, (counted, elapsed)
    assert counted["key"] <= 2 * (elapsed / watch.WAIT_SECONDS + 4) + 2, (counted, elapsed)


def test_rotate_wait_timeout_names_who_holds_the_barrier(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    settle(cluster, "broker-1", "broker-2")
    cluster.nodes["broker-2"].monitor_enabled.clear()  # its monitor stops acknowledging
    capsys.readouterr()
    code = main(cli(cluster, "rotate", "--to", B, "--wait", "--timeout", "3", "--json"))
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 2, err  # the flip's line, then the timeout's
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"kafka-pki: --timeout 3s passed before the rotation to {B} "
                           f"completed: {A} -> {B}: phase 1 of 3; 1/2 acknowledged phase 1")
    assert "slowest: broker-2 (" in line
    updates = [json.loads(x) for x in out.splitlines()]
    assert updates and updates[-1]["slowest"][0]["node_id"] == "broker-2"
    cluster.nodes["broker-2"].monitor_enabled.set()
    cluster.wait_until(lambda: cluster.converged(B), "rotated once broker-2 acknowledges")
    assert main(cli(cluster, "rotate", "--timeout", "3", "--to", A)) == 1, "--timeout: --wait"


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_status_watch_on_a_terminal_redraws_until_complete(
        cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    """What a person sees: kafka-pki status --watch on a pseudo-terminal, while the cluster
    rotates: a redrawn picture (cursor movements), bars per phase, then complete, exit 0."""
    settle(cluster, "broker-1", "client-1")
    cluster.nodes["client-1"].monitor_enabled.clear()  # hold phase 1 until the watcher is up
    cluster.set_root(B)
    cluster.wait_until(lambda: (r := cluster.record()) is not None and r.to_root == B,
                       "rotation to B started")
    env = dict(os.environ, COLUMNS="100", LINES="40", TERM="xterm-256color")
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sidecar.operator_cli",
                             *cli(cluster, "status", "--watch")],
                            stdin=secondary, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    screen = b""
    released = False
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            if not released and b"waiting on 1 participant" in screen:
                cluster.nodes["client-1"].monitor_enabled.set()
                released = True
            if proc.poll() is not None and not ready:
                break
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    text = ANSI.sub("", screen.decode(errors="replace"))
    assert released, text
    assert "\x1b[" in screen.decode(errors="replace"), "drawn with cursor control"
    assert f"{A} -> {B}: phase 1 of 3" in text and "client-1" in text
    assert re.search(r"> phase 1 trust .* [━╺╸]+ 1/2", text), text
    assert f"{A} -> {B}: complete" in text
    assert text.count(f"{A} -> {B}:") >= 2, "redrawn, not printed once"


@pytest.fixture
def drill_cluster(tmp_path: Path) -> Iterator[Drill]:
    """A drill's cluster (every broker and client a real pki-auth-manager and tls-monitor
    process) settled on A; nobody flips it."""
    drill = Drill(2, 1, [], tmp_path)
    drill.setup()
    drill.timeline = Timeline(ConsulStore(drill.consul.url, f"{PREFIX}/{CLUSTER}/",
                                          drill.consul_token))
    drill.timeline.start()
    try:
        deadline = time.monotonic() + 120
        while not drill.converged(A):
            assert time.monotonic() < deadline, "the drill's participants did not settle on A"
            time.sleep(0.2)
        yield drill
    finally:
        drill.timeline.stop()
        drill.teardown()


def test_rotate_wait_exits_0_on_a_drills_cluster(drill_cluster: Drill) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "VAULT_"))}
    env.update(CONSUL_HTTP_ADDR=drill_cluster.consul.url, VAULT_ADDR=drill_cluster.vault.url,
               VAULT_TOKEN=drill_cluster.vault.root_token)
    result = subprocess.run([sys.executable, "-m", "sidecar.operator_cli", "--cluster", CLUSTER,
                             "rotate", "--to", B, "--wait", "--timeout", "120"],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.splitlines()[-1].split(" ", 1)[1].startswith(f"{A} -> {B}: complete")
    deadline = time.monotonic() + 30
    while not drill_cluster.converged(B):  # every volume serves B only
        assert time.monotonic() < deadline, result.stdout
        time.sleep(0.2)


@pytest.mark.parametrize("with_record", [True, False], ids=["record", "no-record-yet"])
def test_watch_reads_the_reports_at_a_bounded_rate_however_fast_they_change(
        consul: ConsulTarget, record_property: Any, with_record: bool) -> None:
    """N reports rewritten as fast as one writer can while the watcher follows a rotation
    that does not move: the O(N) read of the prefix happens about once a second, not once per
    report (N watchers of a prefix would pay N x N; one watcher polling would pay N per report).
    Without a record too, where Consul wakes the query on the missing key for every report."""
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    n = 300
    if with_record:
        store.put("rotation", RotationRecord("r1", A, B, 1, time.time(), time.time()).to_json())
    session = store.create_session("watch-test", 30)
    for i in range(n):
        store.put(f"nodes/p-{i}", b"{}", acquire=session)
    writes = 0
    stop = threading.Event()

    def writer() -> None:
        nonlocal writes
        own = store.clone()
        while not stop.is_set():
            own.put(f"nodes/p-{writes % n}", json.dumps({"updated_at": time.time()}).encode(),
                    acquire=session)
            writes += 1

    reads = 0
    watcher = store.clone()
    real_read = watcher.read

    def counted_read(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return real_read(*args, **kwargs)

    watcher.read = counted_read  # type: ignore[method-assign]
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    seen: list[Progress] = []
    start = time.monotonic()
    try:
        with pytest.raises(watch.TimedOut) as info:
            watch.follow(watcher, seen.append, target=B, timeout=5.0)
    finally:
        stop.set()
        thread.join(timeout=10)
        store.destroy_session(session)
    elapsed = time.monotonic() - start
    record_property("figure", f"watch ({'record' if with_record else 'no record yet'}), {n} "
                              f"reports, {writes} report writes in {elapsed:.1f}s: "
                              f"{reads} prefix reads ({reads * n} entries), {len(seen)} redraws")
    assert info.value.last.total == n
    assert info.value.last.phase == 1 if with_record else info.value.last.state == "no-record"
    assert writes > 5 * reads, "the reports changed far more often than they were read"
    assert reads <= elapsed / watch.MIN_SPACING + 2, (reads, elapsed)
