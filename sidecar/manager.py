"""The auth manager's reconcile loop: keep the volume's material right for what is desired."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any, Protocol

from sidecar import layout
from sidecar.bundle import render_bundle
from sidecar.consul_store import ConsulError
from sidecar.issuer import Issuer
from sidecar.manifest import Acknowledgement, Manifest
from sidecar.material import MaterialError
from sidecar.metrics import AuthManagerMetrics
from sidecar.renewal import Desired, RetryPacer, renewal_reason, renewal_time
from sidecar.rotation import RotationInputError
from sidecar.vault import VaultError
from sidecar.volume import Volume, VolumeError

#: Failures a reconcile pass survives: logged, counted, retried with backoff.
RECOVERABLE = (VaultError, MaterialError, VolumeError, ConsulError, RotationInputError)


def is_permanent(exc: Exception) -> bool:
    """A refusal that retrying cannot fix: Vault's (a role, policy or mount to correct) or
    Consul's ACL 403 (CONSUL_HTTP_TOKEN missing, unknown, or its policy lacks the key).
    Consul unreachable, timing out or answering 5xx is transient."""
    if isinstance(exc, ConsulError):
        return exc.permanent
    return isinstance(exc, VaultError) and exc.permanent


def error_kind(exc: Exception) -> str:
    """The metric label of a failure: the Vault reason or ``consul_<reason>``
    (``permanent_`` in front for a permanent refusal), ``bad_material``, ``volume``,
    ``rotation_input``."""
    if isinstance(exc, MaterialError):
        return "bad_material"
    if isinstance(exc, VolumeError):
        return "volume"
    if isinstance(exc, RotationInputError):
        return "rotation_input"
    if isinstance(exc, ConsulError):
        kind = f"consul_{exc.reason}"
    else:
        kind = str(getattr(exc, "reason", None) or type(exc).__name__)
    return f"permanent_{kind}" if is_permanent(exc) else kind


class RetryHeld(Exception):
    """A pass woke before the back-off of the last failed attempt was over (the record, the
    acknowledgement or the session woke it): nothing was asked of Vault."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the last attempt failed: next attempt in {seconds:.2f} s")
        self.seconds = seconds


class DesiredSource(Protocol):
    """Says what material is wanted, wakes the loop when that may have changed, and hears
    what was installed and acknowledged."""

    def desired(self) -> Desired: ...

    def wait(self, timeout: float) -> None: ...

    def report(self, manifest: Manifest | None, ack: Acknowledgement | None) -> None: ...

    def close(self, destroy: bool = True) -> None: ...


class StaticSource:
    """No Consul: a fixed signer and trust set from the configuration."""

    def __init__(self, signer: str, trust: list[str], stop: threading.Event) -> None:
        self._desired = Desired(signer=signer, trust=tuple(trust or [signer]))
        self._stop = stop

    def desired(self) -> Desired:
        return self._desired

    def wait(self, timeout: float) -> None:
        self._stop.wait(timeout)

    def report(self, manifest: Manifest | None, ack: Acknowledgement | None) -> None:
        return None

    def close(self, destroy: bool = True) -> None:
        return None


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def read_password(path: Path) -> str:
    """The store password, from its file (never argv or logs)."""
    try:
        password = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise VolumeError(f"cannot read store password file {path}: {exc.strerror}") from exc
    if not password:
        raise VolumeError(f"store password file {path} is empty")
    return password


class AuthManager:
    """Reconciles the volume against a desired signer/trust set; renews before expiry."""

    def __init__(self, *, issuer: Issuer, volume: Volume, password_file: Path,
                 metrics: AuthManagerMetrics, log: Any, renew_fraction: float,
                 renew_jitter: float, backoff_initial: float, backoff_max: float,
                 published_dir: PurePath | None = None,
                 now: Callable[[], dt.datetime] = utc_now,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer
        self.volume = volume
        self.password_file = password_file
        self.metrics = metrics
        self.log = log
        self.renew_fraction = renew_fraction
        self.renew_jitter = renew_jitter
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.published_current = (published_dir or volume.root) / layout.CURRENT
        self.now = now
        self.clock = clock  # monotonic: the back-off's
        self.rng = rng or random.Random()
        self._jitter: dict[str, float] = {}  # serial -> random unit, stable per certificate
        self.pacer = RetryPacer(backoff_initial, backoff_max)
        self.last_error: str | None = None
        self.permanent_error: str | None = None  # the last failure, when retrying cannot help
        self.heartbeat = time.monotonic()

    # -- one pass ---------------------------------------------------------------------------

    def current_manifest(self) -> Manifest | None:
        """The verified current generation's manifest; None if missing or unreadable."""
        try:
            current = self.volume.read_current()
        except VolumeError as exc:
            self.log.warning("volume_unreadable", error=str(exc))
            self.metrics.errors.labels(kind="volume_unreadable").inc()
            return None
        return current[1] if current else None

    def renew_at(self, manifest: Manifest) -> dt.datetime:
        unit = self._jitter.setdefault(manifest.serial, self.rng.random())
        return renewal_time(dt.datetime.fromisoformat(manifest.not_before),
                            dt.datetime.fromisoformat(manifest.not_after),
                            self.renew_fraction, self.renew_jitter, unit)

    def reconcile(self, desired: Desired) -> Manifest:
        """Make the volume hold valid material for ``desired``; return its manifest.

        Raises VaultError, MaterialError or VolumeError; the previous generation then stays.
        Raises RetryHeld, asking Vault nothing, while the back-off of the last failed attempt
        holds ``desired`` back (see RetryPacer).
        """
        now = self.now()
        manifest = self.current_manifest()
        reason = renewal_reason(manifest, desired, self.issuer.identity, now,
                                self.renew_at(manifest) if manifest else None)
        held = self.pacer.hold(desired, self.clock())
        if held > 0 and reason is not None:
            raise RetryHeld(held)
        self.issuer.vault.keep_token_alive()
        if reason is None:
            assert manifest is not None
            self._record_installed(manifest)
            return manifest
        self.log.info("renewal_started", reason=reason, signer=desired.signer,
                      trust=list(desired.trust), rotation_id=desired.rotation_id,
                      phase=desired.phase)
        password = read_password(self.password_file)
        started = time.monotonic()
        material = self.issuer.obtain(desired, now)
        obtained = time.monotonic()
        bundle = render_bundle(material, password=password, current=self.published_current,
                               generation=self.volume.next_generation(), created_at=now,
                               rotation_id=desired.rotation_id, phase=desired.phase)
        directory = self.volume.write_generation(bundle)
        written = time.monotonic()
        new = bundle.manifest
        self.log.info("certificate_issued", serial=new.serial, issuer=new.issuer,
                      subject=new.subject, sans=list(new.sans), not_before=new.not_before,
                      not_after=new.not_after, signer=new.signer, trust=list(new.trust),
                      generation=new.generation, directory=str(directory), reason=reason,
                      rotation_id=new.rotation_id, phase=new.phase,
                      vault_seconds=round(obtained - started, 4),
                      write_seconds=round(written - obtained, 4))
        # Read from the certificate, not from Vault's warning: Vault 1.7 caps without one.
        capped = material.ttl_capped
        if capped is not None:
            self.log.warning("vault_ttl_capped", requested=capped.requested,
                             granted=capped.granted, serial=new.serial, signer=desired.signer)
        for warning in material.vault_warnings:
            self.log.warning("vault_warning", operation=f"sign with {desired.signer}",
                             warning=warning, serial=new.serial)
        self.metrics.renewals.labels(result="ok").inc()
        self.metrics.last_success.set(time.time())
        self._record_installed(new)
        return new

    def _record_installed(self, manifest: Manifest) -> None:
        self.metrics.generation.set(manifest.generation)
        self.metrics.not_after.set(dt.datetime.fromisoformat(manifest.not_after).timestamp())
        self.metrics.not_before.set(dt.datetime.fromisoformat(manifest.not_before).timestamp())

    def _expired(self, manifest: Manifest) -> bool:
        return dt.datetime.fromisoformat(manifest.not_after) <= self.now()

    def readiness(self) -> tuple[bool, str]:
        """Ready = a complete, verified, unexpired generation is on the volume."""
        try:
            current = self.volume.read_current()
        except VolumeError as exc:
            return False, str(exc)
        permanent = (f"; renewal failing permanently (not retried before backoff_max): "
                     f"{self.permanent_error}" if self.permanent_error else "")
        if current is None:
            return False, "no material on the volume yet" + permanent
        manifest = current[1]
        if self._expired(manifest):
            return False, f"certificate {manifest.serial} expired" + permanent
        return True, f"generation {manifest.generation} serial {manifest.serial}" + permanent

    # -- the loop ---------------------------------------------------------------------------

    def step(self, source: DesiredSource) -> float:
        """One reconcile attempt; returns how long to wait before the next one."""
        self.heartbeat = time.monotonic()
        attempted: Desired | None = None  # known once the source answered
        try:
            attempted = source.desired()
            manifest = self.reconcile(attempted)
        except RetryHeld as held:
            return self._held(held, source)
        except RECOVERABLE as exc:
            return self._failed(exc, source, attempted)
        self.pacer.succeeded()
        self.last_error = None
        self.permanent_error = None
        self.metrics.ready.set(1)
        source.report(manifest, self.volume.read_ack())
        seconds = (self.renew_at(manifest) - self.now()).total_seconds()
        token_left = self.issuer.vault.token_seconds_left()
        if token_left is not None:
            seconds = min(seconds, max(1.0, token_left / 3))
        return max(1.0, seconds)

    def _failed(self, exc: Exception, source: DesiredSource, attempted: Desired | None
                ) -> float:
        kind = error_kind(exc)
        permanent = is_permanent(exc)
        self.last_error = str(exc)
        self.permanent_error = str(exc) if permanent else None
        # A permanent refusal is retried only at the slowest pace (someone must fix the role,
        # policy or mount first); anything else backs off exponentially from backoff_initial.
        delay = self.pacer.failed(permanent, attempted, self.clock(), self.rng.random())
        self.metrics.renewals.labels(result=f"error_{kind}").inc()
        self.metrics.errors.labels(kind=kind).inc()
        kept = self.current_manifest()  # read once: for the log, the probe and the report
        self.log.error("renewal_failed", error=str(exc), kind=kind,
                       attempt=self.pacer.failures, permanent=permanent,
                       retry_in_seconds=round(delay, 2),
                       kept_generation=kept.generation if kept else None)
        self.metrics.ready.set(1 if kept and not self._expired(kept) else 0)
        source.report(kept, self.volume.read_ack())
        return delay

    def _held(self, held: RetryHeld, source: DesiredSource) -> float:
        """Woken inside the back-off: report what is kept, ask Vault nothing."""
        self.log.debug("renewal_held", retry_in_seconds=round(held.seconds, 2),
                       last_error=self.last_error)
        kept = self.current_manifest()
        self.metrics.ready.set(1 if kept and not self._expired(kept) else 0)
        source.report(kept, self.volume.read_ack())
        return held.seconds

    def run(self, source: DesiredSource, stop: threading.Event) -> None:
        """Reconcile until ``stop`` is set, waking early when the source changes."""
        while not stop.is_set():
            delay = self.step(source)
            if stop.is_set():
                break
            source.wait(delay)

