"""The generation manifest and the monitor's acknowledgement: JSON documents on the volume."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any


class ManifestError(ValueError):
    """A manifest or acknowledgement that cannot be trusted."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Describes one complete generation; written last, after every file it lists."""

    generation: int
    created_at: str
    signer: str
    trust: tuple[str, ...]
    serial: str
    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: str
    not_after: str
    key_type: str
    files: Mapping[str, str]  # file name -> sha256 hex
    rotation_id: str | None = None
    phase: int | None = None

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        data["trust"] = list(self.trust)
        data["sans"] = list(self.sans)
        data["files"] = dict(self.files)
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = _load_object(raw, "manifest")
        try:
            return cls(
                generation=_int(data, "generation"),
                created_at=_str(data, "created_at"),
                signer=_str(data, "signer"),
                trust=tuple(_str_list(data, "trust")),
                serial=_str(data, "serial"),
                subject=_str(data, "subject"),
                issuer=_str(data, "issuer"),
                sans=tuple(_str_list(data, "sans")),
                not_before=_str(data, "not_before"),
                not_after=_str(data, "not_after"),
                key_type=_str(data, "key_type"),
                files=_files(data),
                rotation_id=data.get("rotation_id") if isinstance(data.get("rotation_id"), str)
                else None,
                phase=data.get("phase") if isinstance(data.get("phase"), int) else None,
            )
        except KeyError as exc:
            raise ManifestError(f"manifest lacks field {exc.args[0]}") from None


@dataclasses.dataclass(frozen=True)
class Acknowledgement:
    """The monitor's statement that it made the broker or app serve a generation."""

    generation: int
    serial: str
    applied_at: str
    verified_by: str  # e.g. "handshake" or "action:signal"
    targets: tuple[str, ...] = ()  # listeners or action names
    # KRaft: the broker process (pid) whose Raft client holds these roots (SHA-256 of each
    # trusted certificate), loaded when it started; None where no controller listener is set.
    raft_pid: str | None = None
    raft_roots: tuple[str, ...] | None = None

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        data["targets"] = list(self.targets)
        if self.raft_roots is None:
            del data["raft_roots"], data["raft_pid"]
        else:
            data["raft_roots"] = list(self.raft_roots)
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Acknowledgement:
        data = _load_object(raw, "acknowledgement")
        try:
            return cls(generation=_int(data, "generation"), serial=_str(data, "serial"),
                       applied_at=_str(data, "applied_at"),
                       verified_by=_str(data, "verified_by"),
                       targets=tuple(_str_list(data, "targets")) if "targets" in data else (),
                       raft_pid=data.get("raft_pid") if isinstance(data.get("raft_pid"), str)
                       else None,
                       raft_roots=tuple(_str_list(data, "raft_roots")) if "raft_roots" in data
                       else None)
        except KeyError as exc:
            raise ManifestError(f"acknowledgement lacks field {exc.args[0]}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return data


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ManifestError(f"field {key} must be a string")
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestError(f"field {key} must be an integer")
    return value


def _str_list(data: Mapping[str, Any], key: str) -> list[str]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"field {key} must be a list of strings")
    return value


def _files(data: Mapping[str, Any]) -> dict[str, str]:
    value = data["files"]
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ManifestError("field files must map names to sha256 digests")
    return dict(value)
