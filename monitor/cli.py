"""``tls-monitor``: the entry point. Watches the volume and applies each new generation."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence

from monitor.config import MonitorConfig, check_startup, load_config
from monitor.metrics import MonitorMetrics
from monitor.reloader import Reloader
from monitor.watch import VolumeWatcher
from sidecar.health import HealthServer, check_heartbeat, serve_health
from sidecar.lifecycle import Stopped, install_stop_handlers, run_until_stopped
from sidecar.logs import configure
from sidecar.settings import ConfigError


def run(config: MonitorConfig, reloader: Reloader, stop: threading.Event) -> None:
    """Apply the current generation, then again on every volume event or poll, until
    ``stop`` (which also ends a pass at its next wait)."""
    watcher = VolumeWatcher(config.volume_dir).start()
    try:
        ok = reloader.handle()
        while not stop.is_set():
            timeout = config.poll_interval if ok else min(config.poll_interval,
                                                          config.retry_interval)
            watcher.wait(timeout, config.debounce, stop)
            if stop.is_set():
                break
            ok = reloader.handle()
    except Stopped:
        pass
    finally:
        watcher.stop()


def loop_health(reloader: Reloader, config: MonitorConfig) -> tuple[bool, str]:
    """Healthy while the watch loop beats: it does at least every poll_interval, plus what
    one pass may take (admin, verify and action timeouts)."""
    limit = 3 * (config.poll_interval + config.admin_timeout + config.verify_timeout
                 + config.action_timeout)
    return check_heartbeat(reloader.heartbeat, limit, "watch loop")


def start_health(config: MonitorConfig, reloader: Reloader, metrics: MonitorMetrics
                 ) -> HealthServer | None:
    """/metrics, /healthz (the loop beats) and /readyz (a generation verified) on ``listen``.
    ConfigError if it cannot listen there."""

    metrics.ready.set_function(lambda: 0.0 if reloader.applied is None else 1.0)

    def ready() -> tuple[bool, str]:
        applied = reloader.applied
        return (applied is not None,
                f"generation {applied} verified" if applied else "nothing verified yet")

    return serve_health(config.listen, metrics.registry,
                        healthy=lambda: loop_health(reloader, config), ready=ready)


def main(argv: Sequence[str] | None = None) -> int:
    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        config = load_config(argv, os.environ)
        check_startup(config)
        log = configure(config.log_level, component="tls-monitor")
        metrics = MonitorMetrics()
        reloader = Reloader(config, metrics, log, stop=stop)
        health = start_health(config, reloader, metrics)
    except ConfigError as exc:
        print(f"tls-monitor: configuration error: {exc}", file=sys.stderr)
        return 2
    if health is not None:
        log.info("listening", address=f"{health.host}:{health.port}")
    log.info("started", volume=str(config.volume_dir), mode=config.mode)
    try:
        finished, _ = run_until_stopped(lambda: run(config, reloader, stop), stop)
    finally:
        if health is not None:
            health.stop()
    log.info("stopped", **({} if finished else {"abandoned": "a blocking call of the pass"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
