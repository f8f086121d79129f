"""The ``/v1/txn`` body: api.TxnOps decoded as encoding/json would for convertOps
(agent/txn_endpoint.go ``decodeBody``), with its 400 texts."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from tests.doubles.consul.wire import _Aborted, _Response, _text


@dataclass(frozen=True)
class _TxnKVOp:
    """api.KVTxnOp as convertOps passes it on (LockIndex, CreateIndex ... are not taken)."""

    verb: str
    key: str
    value: bytes | None
    flags: int
    index: int
    session: str


_GO_KINDS = {dict: "object", list: "array", str: "string", bool: "bool", int: "number",
             float: "number"}
_KV_FIELDS: dict[str, tuple[str, type]] = {
    "verb": ("Verb", str), "key": ("Key", str), "value": ("Value", bytes),
    "flags": ("Flags", int), "index": ("Index", int), "session": ("Session", str),
    "namespace": ("Namespace", str)}
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class _BadBody(Exception):
    """encoding/json refused the body: convertOps answers 400 ``Failed to parse body: ...``."""


def _go_quote(text: str) -> str:
    """Go's %q for the printable strings Consul quotes in its errors."""
    return json.dumps(text, ensure_ascii=False)


def _go_kind(value: Any) -> str:
    return _GO_KINDS.get(type(value), "null")


def _decode_txn_ops(body: bytes) -> list[_TxnKVOp | str | None] | _Response:
    """convertOps' ``decodeBody`` into api.TxnOps (encoding/json: field names match case
    insensitively, unknown fields are ignored, []byte is base64).  Per op: a _TxnKVOp, the
    name of another kind (Node, Service, Check), or None (no kind set: convertOps skips it).
    The 400 texts follow encoding/json's; syntax errors are worded by Python's json."""
    try:
        if not body.strip():
            raise _BadBody("EOF")
        try:
            raw = json.loads(body)
        except ValueError as exc:
            raise _BadBody(str(exc)) from exc
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise _BadBody(f"json: cannot unmarshal {_go_kind(raw)} into Go value of type "
                           "api.TxnOps")
        return [_decode_txn_op(item) for item in raw]
    except _BadBody as exc:
        return _text(400, f"Failed to parse body: {exc}")


def _decode_txn_op(item: Any) -> _TxnKVOp | str | None:
    if item is None:
        # A nil *TxnOp: convertOps dereferences it and panics; net/http drops the connection.
        raise _Aborted
    if not isinstance(item, dict):
        raise _BadBody(f"json: cannot unmarshal {_go_kind(item)} into Go value of type "
                       "api.TxnOp")
    fields = {k.lower(): v for k, v in item.items()}
    kv = fields.get("kv")
    if kv is None:
        for kind in ("node", "service", "check"):
            if fields.get(kind) is not None:
                return kind.capitalize()
        return None
    if not isinstance(kv, dict):
        raise _BadBody(f"json: cannot unmarshal {_go_kind(kv)} into Go struct field TxnOp.KV "
                       "of type api.KVTxnOp")
    out: dict[str, Any] = {"verb": "", "key": "", "value": None, "flags": 0, "index": 0,
                           "session": ""}
    for name, value in kv.items():
        known = _KV_FIELDS.get(name.lower())
        if known is None or value is None:
            continue  # unknown fields are ignored, null leaves the zero value
        field_name, ftype = known
        where = f"Go struct field KVTxnOp.KV.{field_name}"
        if ftype is str:
            if not isinstance(value, str):
                raise _BadBody(f"json: cannot unmarshal {_go_kind(value)} into {where} of "
                               "type string")
            if field_name != "Namespace":  # Enterprise only: the OSS agent ignores it
                out[name.lower()] = value
        elif ftype is int:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _BadBody(f"json: cannot unmarshal {_go_kind(value)} into {where} of "
                               "type uint64")
            if not isinstance(value, int) or not 0 <= value < 2**64:
                raise _BadBody(f"json: cannot unmarshal number {value} into {where} of "
                               "type uint64")
            out[name.lower()] = value
        else:
            if not isinstance(value, str):
                raise _BadBody(f"json: cannot unmarshal {_go_kind(value)} into {where} of "
                               "type []uint8")
            valid = _B64.match(value)
            if valid is None or valid.end() != len(value) or len(value) % 4:
                at = valid.end() if valid is not None else 0
                raise _BadBody(f"illegal base64 data at input byte {at}")
            # An empty value is stored as no value, like a KV PUT with an empty body.
            out["value"] = base64.b64decode(value) or None
    return _TxnKVOp(**out)
