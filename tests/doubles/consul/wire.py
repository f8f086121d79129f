"""The double's HTTP vocabulary: a logged request, an answer (status, body, headers), the
helpers that build answers and read query strings, and the two ways an answer is cut short:
a dropped connection (:class:`_Aborted`) and an RPC error Consul's HTTP layer turns into a
500 (:class:`_RpcError`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class RequestRecord(NamedTuple):
    """One request seen by the double; status is None when the connection was dropped."""

    method: str
    path: str
    query: dict[str, str]
    status: int | None


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class _Aborted(Exception):
    """The connection was dropped on purpose: answer nothing."""


class _RpcError(Exception):
    """An error Consul's HTTP layer turns into a 500 with the message as body."""


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    return _Response(status, json.dumps(obj).encode(), hdrs)


def _text(status: int, text: str) -> _Response:
    return _Response(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8"})


def _first(query: dict[str, list[str]], name: str) -> str:
    values = query.get(name)
    return values[0] if values else ""


def _parse_uint(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**64:
        raise _RpcError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    return int(text)
