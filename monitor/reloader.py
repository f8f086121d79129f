"""Apply a generation: predict Kafka's verdict, reload, verify by handshake, acknowledge."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from monitor import actions
from monitor.checks import (
    PredictedRefusal,
    check_compatible,
    check_handshakes,
    check_material,
    client_context,
)
from monitor.config import MonitorConfig
from monitor.kafka import BrokerAdmin, KafkaRefused, served_certificate
from monitor.listener_settings import SentSettings, listener_settings
from monitor.metrics import MonitorMetrics
from monitor.raft_restart import RaftRestarter, RaftState, RestartDeferred, RestartWaiting
from monitor.stores import STORE_FILES, load_stores
from sidecar import layout, restart_handoff
from sidecar.atomic_file import replace_file
from sidecar.lifecycle import Stopped
from sidecar.manifest import Acknowledgement, Manifest
from sidecar.material import MaterialError, format_serial
from sidecar.volume import Volume, VolumeError, read_generation

FAST_VERIFY = 3.0  # seconds after the alter during which the listeners are probed every 50 ms


class VerifyFailed(Exception):
    """The broker does not serve the new certificate (yet)."""


class Superseded(Exception):
    """A newer generation was published while this one was being applied."""


def write_ack(volume: Path, ack: Acknowledgement) -> None:
    """Write monitor-ack.json atomically (temp file, fsync, rename)."""
    replace_file(layout.ack_path(volume), ack.to_json())


def find_generation_by_serial(volume: Path, serial: str) -> Path | None:
    """The generation directory whose manifest has ``serial`` (the one being served)."""
    gens = layout.generations_dir(volume)
    for directory in sorted(gens.glob("[0-9]*"), reverse=True):
        try:
            if read_generation(directory).serial == serial:
                return directory
        except VolumeError:
            continue
    return None


def _unix_time(iso: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


class Reloader:
    """Makes the broker (or app) serve the current generation, then acknowledges it."""

    def __init__(self, config: MonitorConfig, metrics: MonitorMetrics, log: Any,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                 stop: threading.Event | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.log = log
        self.now = now
        self.stop = stop or threading.Event()  # set: every wait of a pass raises Stopped
        self.volume = Volume(config.volume_dir)
        ack = self.volume.read_ack()
        self.applied: int | None = ack.generation if ack else None
        self.confirmed = False  # the gauges reflect what is served for ``applied``
        self.heartbeat = time.monotonic()  # the watch loop is alive (/healthz)
        self.last_refused: tuple[int, str] | None = None
        self.pending_since: float | None = None
        self.timings: dict[str, float] = {}
        self.admin = BrokerAdmin(config.bootstrap_servers or "", config.broker_id or 0,
                                 config.admin_hostname_verification, config.admin_timeout,
                                 log=log)  # librdkafka's lines into the monitor's own log
        self.sent = SentSettings()  # what the broker is known to hold: sent once, not each time
        self.raft: RaftState | None = None  # what the Raft client holds, for the next ack
        self.restarter = RaftRestarter(config, self.volume, log, now, self.password)

    def password(self) -> str | None:
        path = self.config.store_password_file
        if path is None:
            return None
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise MaterialError(f"cannot read store password file {path}: {exc.strerror}") \
                from exc

    # -- entry point ------------------------------------------------------------------------

    def handle(self) -> bool:
        """Act on the current generation if it is new. True when it is applied and verified.

        If a newer generation replaces it meanwhile (Kafka then loads the newer files from
        the same paths), the newer one is handled at once instead of waiting out the
        verification of the older.
        """
        for _ in range(10):
            self.heartbeat = time.monotonic()
            try:
                return self._handle_current()
            except Superseded as exc:
                self.log.info("generation_superseded", detail=str(exc))
        return False

    def _handle_current(self) -> bool:
        try:
            found = self.volume.read_current()
        except VolumeError as exc:
            self._fail("incomplete_generation", str(exc), None)
            return False
        if found is None:
            return False
        directory, manifest = found
        if manifest.generation == self.applied:
            return self.confirmed or self._confirm_applied(directory, manifest)
        if self.last_refused and self.last_refused[0] == manifest.generation:
            return False  # already explained; wait for the next generation
        started = time.monotonic()
        if self.pending_since is None:
            self.pending_since = started
        self.timings = {"start": started}
        self.log.info("generation_detected", generation=manifest.generation,
                      serial=manifest.serial, signer=manifest.signer, trust=list(manifest.trust))
        try:
            if self.config.mode == "broker":
                targets, verified_by = self._apply_broker(directory, manifest)
            else:
                targets, verified_by = self._apply_action(directory, manifest)
        except PredictedRefusal as exc:
            self.last_refused = (manifest.generation, exc.reason)
            self._fail("refused_predicted", str(exc), manifest, reason=exc.reason,
                       action="nothing sent to Kafka; the broker keeps its current material")
            return False
        except KafkaRefused as exc:  # may be transient (broker busy, restarting): retried
            self._fail("refused_by_kafka", str(exc), manifest, kafka_error_code=exc.code,
                       refusal=exc.kind,
                       action="the broker keeps its current material; retrying")
            return False
        except VerifyFailed as exc:
            self._fail("verify_failed", str(exc), manifest,
                       action="alerting; retrying on the next poll")
            return False
        except RestartDeferred as exc:
            self._fail("restart_deferred", str(exc), manifest,
                       action="not restarting while another broker is down; retrying")
            return False
        except RestartWaiting:
            self.metrics.restart_waiting(True)  # logged once per generation by the restarter
            return False
        except actions.ActionFailed as exc:
            self._fail("action_failed", str(exc), manifest)
            return False
        except (MaterialError, OSError) as exc:
            self._fail("error", str(exc), manifest)
            return False
        seconds = time.monotonic() - (self.pending_since or started)
        self.pending_since = None
        raft_pid, raft_roots = self.raft if self.raft else (None, None)
        write_ack(self.config.volume_dir, Acknowledgement(
            generation=manifest.generation, serial=manifest.serial,
            applied_at=self.now().isoformat(), verified_by=verified_by,
            targets=tuple(targets), raft_pid=raft_pid,
            raft_roots=tuple(sorted(raft_roots)) if raft_roots is not None else None))
        restart_handoff.remove_request(self.config.volume_dir)  # the lock may go
        self.metrics.restart_waiting(False)
        self.applied = manifest.generation
        self.confirmed = True
        self.metrics.reloads.labels(result="ok").inc()
        self.metrics.reload_latency.observe(seconds)
        self.metrics.mark_verified(manifest.generation)
        self._warm_admin()
        steps = self._step_seconds()
        self.log.info("reload_verified", generation=manifest.generation,
                      serial=manifest.serial, verified_by=verified_by, targets=targets,
                      seconds=round(seconds, 3), **steps)
        return True

    def _confirm_applied(self, directory: Path, manifest: Manifest) -> bool:
        """The acknowledged generation is current (the monitor restarted): set the gauges
        from what is served. Listeners are probed once per call, until they match; an app,
        with nothing to probe, counts as verified when its ack was written."""
        ack = self.volume.read_ack()
        acked_at = None
        if ack is not None and ack.generation == manifest.generation:
            acked_at = _unix_time(ack.applied_at)
        listeners = self.config.listener_addresses() if self.config.mode == "broker" else {}
        if not listeners:
            self.metrics.mark_verified(manifest.generation, acked_at)
            self.confirmed = True
            return True
        context = client_context(directory, self.config.admin_hostname_verification)
        mismatched, last = self._probe(listeners, context, manifest.serial)
        if not mismatched:
            self.metrics.mark_verified(manifest.generation)
            self.confirmed = True
            self.log.info("served_confirmed", generation=manifest.generation,
                          serial=manifest.serial)
            self._warm_admin()
            return True
        if acked_at is not None:
            self.metrics.mark_verified(manifest.generation, acked_at, served=False)
        else:
            self.metrics.served_matches.set(0)
        # The ack is not backed by what is served (the broker restarted on other stores, or
        # is not up yet): apply the generation again on the next pass, as a new one.
        self.applied = None
        self.sent.forget()
        self.log.warning("served_mismatch", generation=manifest.generation, error=last,
                         action="applying it again")
        return False

    def _warm_admin(self) -> None:
        """Connect the admin client the next alter will use (the applied generation's)."""
        applied = self._applied_dir()
        if self.config.mode == "broker" and applied is not None:
            self.admin.warm(applied)

    def _step_seconds(self) -> dict[str, float]:
        """Seconds spent checking, altering and verifying (broker mode), for the logs; the
        alter split into getting an admin client and the request (its answer)."""
        marks = self.timings
        out, previous = {}, marks.get("start")
        for step in ("check", "alter", "verify"):
            if step in marks and previous is not None:
                out[f"{step}_seconds"] = round(marks[step] - previous, 4)
                previous = marks[step]
        if {"check", "admin", "alter"} <= marks.keys():
            out["admin_seconds"] = round(marks["admin"] - marks["check"], 4)
            out["request_seconds"] = round(marks["alter"] - marks["admin"], 4)
        return out

    def _fail(self, result: str, message: str, manifest: Manifest | None, **fields: Any) -> None:
        if manifest is None or manifest.generation != self.applied:
            self.metrics.served_matches.set(0)  # the on-disk generation is not the served one
        self.metrics.reloads.labels(result=result).inc()
        self.log.error("reload_failed", result=result, error=message,
                       generation=manifest.generation if manifest else None, **fields)

    # -- brokers ----------------------------------------------------------------------------

    def _apply_broker(self, directory: Path, manifest: Manifest) -> tuple[list[str], str]:
        config = self.config
        password = self.password()
        new = load_stores(directory, config.keystore_type, password)
        check_material(new, self.now())
        context = client_context(directory, config.admin_hostname_verification)
        listeners = config.listener_addresses()
        wanted: dict[str, str] = {}
        known: dict[str, tuple[Path | None, int | None]] = {}  # served serial -> its stores
        for name, (host, port) in listeners.items():
            served = self._served(host, port, directory, context)
            serial = format_serial(served.serial_number)
            if serial == manifest.serial:
                continue  # already serving it (the monitor restarted after a reload)
            if serial not in known:
                found = find_generation_by_serial(config.volume_dir, serial)
                known[serial] = (found, self._served_entries(found, password))
            old_dir, old_entries = known[serial]
            check_compatible(new, served, allow_dn_changes=config.allow_dn_changes,
                             allow_san_changes=config.allow_san_changes,
                             old_key_entries=old_entries)
            if config.inter_broker_listener and name == config.inter_broker_listener.upper():
                if old_dir is None:
                    self.log.warning("handshake_prediction_skipped", listener=name,
                                     reason="the served generation is no longer on the volume")
                else:
                    check_handshakes(old_dir, directory)
            wanted.update(listener_settings(config, name, password))
        self.timings["check"] = time.monotonic()
        settings = self.sent.to_send(wanted)
        if settings:
            self._touch_stores(directory)
            admin_dir = self._admin_dir(directory)
            self.admin.client(admin_dir)
            self.timings["admin"] = time.monotonic()
            try:
                self.admin.alter(admin_dir, settings, self.stop)
            except BaseException:
                self.sent.forget()
                raise
            self.log.info("reload_requested", generation=manifest.generation,
                          listeners=sorted({k.split(".")[2] for k in settings}),
                          entries=len(settings),
                          settings=sorted({k.split(".", 3)[3] for k in settings}))
        self.timings["alter"] = time.monotonic()
        try:
            self._verify(listeners, context, manifest)
        except BaseException:
            self.sent.forget()  # answered, but not shown: send everything next time
            raise
        self.sent.applied(settings)
        self.timings["verify"] = time.monotonic()
        targets = sorted(listeners)
        self.raft = None
        if config.raft_restarts():
            def restart() -> str:
                done = self._run_action(directory, manifest)
                self._verify(listeners, context, manifest)  # back up, on these stores
                return done

            done, self.raft = self.restarter.apply(
                manifest, new.trusted, lambda: self.admin.alive_brokers(self._admin_dir(directory)),
                restart)
            targets.append(f"raft:{done}")
        return targets, "handshake"

    def _served_entries(self, served_dir: Path | None, password: str | None) -> int | None:
        """Entry count of the keystore being served; None (check skipped) if unreadable."""
        if served_dir is None:
            self.log.debug("entry_count_check_skipped",
                           reason="the served generation is no longer on the volume")
            return None
        try:
            return load_stores(served_dir, self.config.keystore_type, password).key_entries
        except MaterialError as exc:
            self.log.debug("entry_count_check_skipped", reason=str(exc))
            return None

    def _applied_dir(self) -> Path | None:
        """The generation the broker is known to accept (last verified), if still on disk."""
        if self.applied is None:
            return None
        path = layout.generation_dir(self.config.volume_dir, self.applied)
        return path if path.is_dir() else None

    def _admin_dir(self, directory: Path) -> Path:
        return self._applied_dir() or directory

    def _served(self, host: str, port: int, directory: Path,
                context: ssl.SSLContext) -> x509.Certificate:
        """The certificate a listener serves now, asked with the applied generation's
        material first (the broker accepts it), then with the new one."""
        applied = self._applied_dir()
        contexts = []
        if applied is not None and applied != directory:
            contexts.append(client_context(applied, self.config.admin_hostname_verification))
        contexts.append(context)
        for i, candidate in enumerate(contexts):
            try:
                return served_certificate(host, port, candidate)
            except (OSError, ValueError):
                if i == len(contexts) - 1:
                    raise
        raise AssertionError("unreachable")

    def _touch_stores(self, directory: Path) -> None:
        """Kafka reloads a same-path store only if its modification time changed."""
        stamp = time.time_ns()
        for name in STORE_FILES[self.config.keystore_type]:
            os.utime(directory / name, ns=(stamp, stamp))

    def _verify(self, listeners: dict[str, tuple[str, int]], context: ssl.SSLContext,
                manifest: Manifest) -> None:
        """Probe until every listener serves the manifest's serial. Kafka answers the alter
        before it applies it (100-300 ms later, plus its validation: about a second on a
        busy broker), so the probes come every 50 ms for the first FAST_VERIFY seconds, then
        back off; a listener already seen serving it is not probed again."""
        now = time.monotonic()
        deadline, fast_until = now + self.config.verify_timeout, now + FAST_VERIFY
        delay = 0.05
        pending = dict(listeners)
        while True:
            self.heartbeat = time.monotonic()
            mismatched, last = self._probe(pending, context, manifest.serial)
            if not mismatched:
                return
            pending = {name: pending[name] for name in mismatched}
            newest = self.volume.current_generation_dir()
            if newest is not None and newest.name.isdigit() \
                    and int(newest.name) > manifest.generation:
                raise Superseded(f"generation {newest.name} replaced {manifest.generation} "
                                 "while it was being verified")
            if time.monotonic() + delay > deadline:
                raise VerifyFailed(f"not serving generation {manifest.generation} after "
                                   f"{self.config.verify_timeout:.0f}s: {last}")
            if self.stop.wait(delay):
                raise Stopped("stopping: verification abandoned")
            if time.monotonic() >= fast_until:
                delay = min(delay * 2, 2.0)

    @staticmethod
    def _probe(listeners: dict[str, tuple[str, int]], context: ssl.SSLContext,
               serial: str) -> tuple[list[str], str]:
        """Listeners not serving ``serial`` (one connection each), and the last reason why."""
        mismatched, last = [], ""
        for name, (host, port) in listeners.items():
            try:
                served = format_serial(served_certificate(host, port, context).serial_number)
            except (OSError, ValueError) as exc:
                mismatched.append(name)
                last = f"{name}: {exc}"
                continue
            if served != serial:
                mismatched.append(name)
                last = f"{name} serves {served}, expected {serial}"
        return mismatched, last

    # -- clients and restart-only listeners -------------------------------------------------

    def _apply_action(self, directory: Path, manifest: Manifest) -> tuple[list[str], str]:
        check_material(load_stores(directory, "PEM", None), self.now())
        done = self._run_action(directory, manifest)
        return [done], f"action:{self.config.reload_action}"

    def _run_action(self, directory: Path, manifest: Manifest) -> str:
        config = self.config
        kind, timeout = config.reload_action, config.action_timeout
        if kind == "signal":
            assert config.reload_pid_file is not None
            return actions.send_signal(config.reload_pid_file, config.reload_signal)
        if kind == "restart":
            assert config.reload_pid_file is not None
            return actions.restart(config.reload_pid_file, timeout, stop=self.stop)
        if kind == "command":
            assert config.reload_command is not None
            return actions.run_command(config.reload_command, manifest,
                                       layout.current_link(config.volume_dir), timeout,
                                       self.stop)
        if kind == "http":
            assert config.reload_url is not None
            return actions.post_hook(config.reload_url, manifest, timeout)
        raise actions.ActionFailed("no reload action configured")
