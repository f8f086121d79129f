"""The TLS monitor for client apps (reload actions) and its event-driven loop."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import run, start_health
from monitor.config import MonitorConfig, load_config
from monitor.metrics import MonitorMetrics
from monitor.reloader import Reloader
from sidecar.settings import ConfigError
from sidecar.volume import Volume
from tests.manager_kit import RecordingLog, make_config, make_manager, metric
from tests.monitor_kit import PHASES, supervised_sleeper, wait_for
from tests.vault_setup import VaultTarget

TRAP = """
import signal, sys, time, pathlib
out = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGHUP, lambda *_: out.write_text(out.read_text() + "reloaded\\n"))
out.write_text("")
pathlib.Path(sys.argv[2]).write_text(str(__import__("os").getpid()))
while True:
    time.sleep(0.05)
"""


def client_monitor(volume: Path, **settings: Any) -> tuple[Reloader, MonitorMetrics,
                                                           RecordingLog]:
    config = MonitorConfig(**{"volume_dir": volume, "mode": "client", "listen": "",
                              "debounce": 0.05, **settings})
    metrics, log = MonitorMetrics(), RecordingLog()
    return Reloader(config, metrics, log), metrics, log


def write_material(vault: VaultTarget, tmp_path: Path, desired: Any = PHASES[0]) -> Any:
    config = make_config(vault.url, vault.token, tmp_path / "volume", tmp_path,
                         subject="CN=app-1.kafka.test,OU=kafka,O=Example",
                         dns_sans=["app-1.kafka.test"], ip_sans=[])
    manager = make_manager(config)[0]
    manager.reconcile(desired)
    return manager


def test_signal_action(vault: VaultTarget, tmp_path: Path) -> None:
    manager = write_material(vault, tmp_path)
    out, pid_file = tmp_path / "app.out", tmp_path / "app.pid"
    app = subprocess.Popen([sys.executable, "-c", TRAP, str(out), str(pid_file)])
    try:
        wait_for(pid_file.exists, "the app to start")
        reloader, metrics, log = client_monitor(tmp_path / "volume", reload_action="signal",
                                                reload_pid_file=pid_file)
        assert reloader.handle(), log.events
        wait_for(lambda: out.read_text().count("reloaded") == 1, "the app to get SIGHUP")
        manifest = manager.reconcile(PHASES[1])
        assert reloader.handle()
        wait_for(lambda: out.read_text().count("reloaded") == 2, "the second SIGHUP")
        ack = Volume(tmp_path / "volume").read_ack()
        assert ack is not None and ack.generation == manifest.generation
        assert ack.verified_by == "action:signal"
        assert metric(metrics, "tls_monitor_reloads_total", result="ok") == 2
    finally:
        app.kill()
        app.wait()
    manager.reconcile(PHASES[2])
    assert not reloader.handle(), "the app is gone: the signal fails"
    assert log.named("reload_failed")[-1]["result"] == "action_failed"
    assert Volume(tmp_path / "volume").read_ack().generation == manifest.generation
    assert metric(metrics, "tls_monitor_served_matches_disk") == 0


def test_http_hook_action(vault: VaultTarget, tmp_path: Path) -> None:
    write_material(vault, tmp_path)
    received: list[dict[str, Any]] = []
    status = {"code": 204}

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/reload"
        reloader, _, log = client_monitor(tmp_path / "volume", reload_action="http",
                                          reload_url=url)
        status["code"] = 500
        assert not reloader.handle()
        assert "answered 500" in log.named("reload_failed")[-1]["error"]
        status["code"] = 204
        assert reloader.handle()
        assert received[-1]["generation"] == 1 and "serial" in received[-1]
        assert "password" not in json.dumps(received)
        assert Volume(tmp_path / "volume").read_ack().verified_by == "action:http"
    finally:
        server.shutdown()


def test_command_and_restart_actions(vault: VaultTarget, tmp_path: Path) -> None:
    write_material(vault, tmp_path)
    marker = tmp_path / "ran"
    command = f"{sys.executable} -c \"import os,pathlib; pathlib.Path('{marker}')" \
              ".write_text(os.environ['PKI_GENERATION'])\""
    reloader, _, _ = client_monitor(tmp_path / "volume", reload_action="command",
                                    reload_command=command)
    assert reloader.handle()
    assert marker.read_text() == "1"
    (tmp_path / "volume" / "monitor-ack.json").unlink()  # as if never applied
    failing, _, log = client_monitor(tmp_path / "volume", reload_action="command",
                                     reload_command="false")
    assert not failing.handle()
    assert "exited 1" in log.named("reload_failed")[-1]["error"]
    # restart: a supervisor loop that restarts the app when it exits
    pid_file = tmp_path / "app.pid"
    with supervised_sleeper(pid_file) as first:
        restarter, _, log = client_monitor(tmp_path / "volume", reload_action="restart",
                                           reload_pid_file=pid_file, action_timeout=10)
        assert restarter.handle(), log.events
        assert int(pid_file.read_text()) != first


def test_restarted_monitor_takes_the_ack_as_verified(vault: VaultTarget,
                                                     tmp_path: Path) -> None:
    write_material(vault, tmp_path)
    first, _, _ = client_monitor(tmp_path / "volume", reload_action="command",
                                 reload_command="true")
    assert first.handle()
    reloader, metrics, _ = client_monitor(tmp_path / "volume", reload_action="command",
                                          reload_command="false")
    assert reloader.handle(), "nothing run (it would fail): the ack is up to date"
    ack = Volume(tmp_path / "volume").read_ack()
    assert ack is not None
    assert metric(metrics, "tls_monitor_served_matches_disk") == 1
    assert metric(metrics, "tls_monitor_last_verified_timestamp_seconds") == \
        dt.datetime.fromisoformat(ack.applied_at).timestamp()


def test_healthz_fails_when_the_loop_stalls(tmp_path: Path) -> None:
    reloader, metrics, _ = client_monitor(tmp_path / "volume", reload_action="command",
                                          reload_command="true", listen="127.0.0.1:0")
    server = start_health(reloader.config, reloader, metrics)
    assert server is not None

    def healthz() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz") as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        assert healthz()[0] == 200
        reloader.heartbeat -= 10 * 3600  # no pass of the loop for ten hours
        status, body = healthz()
        assert status == 503 and "watch loop stalled" in body
        reloader.handle()  # the loop's next pass (nothing on the volume yet)
        assert healthz()[0] == 200
    finally:
        server.stop()


def test_event_loop_applies_new_generations(vault: VaultTarget, tmp_path: Path) -> None:
    manager = write_material(vault, tmp_path)
    marker = tmp_path / "count"
    marker.write_text("")
    command = f"{sys.executable} -c \"import pathlib; p=pathlib.Path('{marker}'); " \
              "p.write_text(p.read_text()+'x')\""
    reloader, _, _ = client_monitor(tmp_path / "volume", reload_action="command",
                                    reload_command=command, poll_interval=600)
    stop = threading.Event()
    loop = threading.Thread(target=run, args=(reloader.config, reloader, stop), daemon=True)
    loop.start()
    try:
        wait_for(lambda: marker.read_text() == "x", "the first generation")
        manifest = manager.reconcile(PHASES[1])  # a rename + symlink swap: no 'modified'
        wait_for(lambda: (a := Volume(tmp_path / "volume").read_ack()) is not None
                 and a.generation == manifest.generation, "the watcher to react")
        assert marker.read_text() == "xx"
    finally:
        stop.set()
        reloader.config.volume_dir.joinpath("poke").write_text("")
        loop.join(timeout=10)


@pytest.mark.parametrize(("env", "message"), [
    ({}, "missing required setting volume_dir"),
    ({"MONITOR_VOLUME_DIR": "/v"}, "bootstrap_servers"),
    ({"MONITOR_VOLUME_DIR": "/v", "MONITOR_MODE": "client"}, "reload_action"),
    ({"MONITOR_VOLUME_DIR": "/v", "MONITOR_MODE": "client", "MONITOR_RELOAD_ACTION": "signal"},
     "reload_pid_file"),
    ({"MONITOR_VOLUME_DIR": "/v", "KAFKA_BOOTSTRAP_SERVERS": "h:1", "MONITOR_BROKER_ID": "1",
      "MONITOR_LISTENERS": "SSL=h:1", "MONITOR_STORE_PASSWORD_FILE": "/p",
      "MONITOR_INTER_BROKER_LISTENER": "INTERNAL"}, "inter_broker_listener"),
    ({"MONITOR_VOLUME_DIR": "/v", "KAFKA_BOOTSTRAP_SERVERS": "h:1", "MONITOR_BROKER_ID": "1",
      "MONITOR_LISTENERS": "SSL"}, "listeners"),
])
def test_monitor_configuration_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config([], env)
