"""When to renew, and how long to wait after a failure. Pure: no I/O, no clock, no randomness."""

from __future__ import annotations

import dataclasses
import datetime as dt

from cryptography.x509.oid import NameOID

from sidecar.keys import parse_subject
from sidecar.manifest import Manifest


@dataclasses.dataclass(frozen=True)
class Desired:
    """What the volume should hold: who signs, whom to trust, and which rotation step it is."""

    signer: str
    trust: tuple[str, ...]
    rotation_id: str | None = None
    phase: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "trust", tuple(sorted(set(self.trust))))


@dataclasses.dataclass(frozen=True)
class Identity:
    """What the certificate must say about its holder."""

    subject: str
    dns_sans: tuple[str, ...]
    ip_sans: tuple[str, ...]
    key_type: str

    @property
    def common_name(self) -> str:
        attrs = parse_subject(self.subject).get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else ""

    @property
    def sans(self) -> tuple[str, ...]:
        return tuple(sorted(n.lower() for n in self.dns_sans)) + tuple(sorted(self.ip_sans))


def renewal_time(not_before: dt.datetime, not_after: dt.datetime, fraction: float,
                 jitter: float, random_unit: float) -> dt.datetime:
    """Renew at ``fraction`` of the lifetime plus up to ``jitter`` of it (``random_unit`` in [0,1)).

    The jitter keeps a fleet issued at the same moment from renewing at the same moment.
    """
    lifetime = not_after - not_before
    return not_before + lifetime * (fraction + jitter * random_unit)


def backoff_delay(attempt: int, initial: float, maximum: float, random_unit: float) -> float:
    """Exponential backoff with "equal jitter": between half and all of min(max, initial*2^n)."""
    ceiling = min(maximum, initial * 2.0 ** min(attempt, 32))
    return ceiling / 2 + ceiling / 2 * random_unit


@dataclasses.dataclass
class RetryPacer:
    """When the next attempt to obtain material may be made: the one owner of the back-off.

    Every failed pass is counted (``failed``) and gets its delay from here. A failed *attempt*
    (Vault was asked for ``attempted``) also holds further attempts back until that delay
    has passed (``hold``), however often the loop is woken before: by the rotation record,
    the monitor's acknowledgement or a new session. A pass that failed before it knew what to
    ask (Consul, a bad record) holds nothing back: the wake-up that fixes it (the record
    appearing) must be followed at once.

    A permanent refusal is Vault's verdict on one request (signer and trust set, for this
    identity and role), so it holds back that request only: a rotation phase that asks for
    another signer or trust set is tried at once. That costs at most one attempt per record
    change (a handful per rotation), and holding it would delay the whole fleet's rotation,
    whose barrier waits for every participant, by up to ``maximum`` per phase. A transient
    failure (Vault or the network) holds back every request.
    """

    initial: float
    maximum: float
    failures: int = 0
    _held: Desired | None = None
    _held_permanent: bool = False
    _held_until: float = float("-inf")

    def failed(self, permanent: bool, attempted: Desired | None, now: float,
               random_unit: float) -> float:
        """Count a failed pass at monotonic time ``now``; return the delay before the next.
        A permanent refusal waits ``maximum`` (with jitter) at once."""
        self.failures += 1
        attempt = 64 if permanent else self.failures - 1
        delay = backoff_delay(attempt, self.initial, self.maximum, random_unit)
        if attempted is not None:
            self._held, self._held_permanent = attempted, permanent
            self._held_until = now + delay
        return delay

    def succeeded(self) -> None:
        """An attempt succeeded: the next failure backs off from ``initial`` again."""
        self.failures = 0
        self._held, self._held_until = None, float("-inf")

    def hold(self, request: Desired, now: float) -> float:
        """Seconds before ``request`` may be attempted (0: now)."""
        left = self._held_until - now
        if left <= 0:
            return 0.0
        if self._held_permanent and self._held is not None and (
                (request.signer, request.trust) != (self._held.signer, self._held.trust)):
            return 0.0
        return left


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def renewal_reason(manifest: Manifest | None, desired: Desired, identity: Identity,
                   now: dt.datetime, renew_at: dt.datetime | None) -> str | None:
    """Why the current generation must be replaced now, or None if it is still right.

    ``renew_at`` is the scheduled renewal time of the current certificate (None to skip).
    """
    if manifest is None:
        return "no material on the volume"
    if _parse_time(manifest.not_after) <= now:
        return f"certificate {manifest.serial} expired at {manifest.not_after}"
    if manifest.subject != identity.subject:
        return f"subject changed: {manifest.subject!r} -> {identity.subject!r}"
    have = {s.lower() for s in manifest.sans}
    missing = set(identity.sans) - have
    extra = have - set(identity.sans) - {identity.common_name.lower()}  # Vault adds the CN
    if missing or extra:
        return f"SANs changed: {list(manifest.sans)} -> {list(identity.sans)}"
    if manifest.key_type != identity.key_type:
        return f"key type changed: {manifest.key_type} -> {identity.key_type}"
    if manifest.signer != desired.signer:
        return f"signer changed: {manifest.signer} -> {desired.signer}"
    if tuple(sorted(manifest.trust)) != desired.trust:
        return f"trust set changed: {sorted(manifest.trust)} -> {list(desired.trust)}"
    if renew_at is not None and now >= renew_at:
        return f"certificate {manifest.serial} reached its renewal time {renew_at.isoformat()}"
    return None

