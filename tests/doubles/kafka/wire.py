"""The Kafka wire codec of the broker double: request bytes in, response frames out.

Primitives in the classic and the flexible (compact, tagged-field) encodings, and the four
APIs confluent-kafka's AdminClient needs for ``describe_configs`` and
``incremental_alter_configs``: ApiVersions, Metadata, DescribeConfigs and
IncrementalAlterConfigs (layouts from clients/src/main/resources/common/message/*.json). No
decisions here: what the broker answers is ``broker.Broker``'s.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NONE = 0
UNSUPPORTED_VERSION = 35
INVALID_CONFIG = 40
INVALID_REQUEST = 42

RESOURCE_BROKER = 4
OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3
SOURCE_DYNAMIC_BROKER, SOURCE_STATIC_BROKER, SOURCE_DEFAULT = 2, 4, 5
TYPE_BOOLEAN, TYPE_STRING, TYPE_INT, TYPE_PASSWORD = 1, 2, 3, 9



class Reader:
    """Reads Kafka protocol primitives from a request body."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("request truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int8(self) -> int:
        return int(struct.unpack(">b", self._take(1))[0])

    def int16(self) -> int:
        return int(struct.unpack(">h", self._take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self._take(4))[0])

    def boolean(self) -> bool:
        return self._take(1) != b"\x00"

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self._take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def string(self, flexible: bool) -> str | None:
        n = self.uvarint() - 1 if flexible else self.int16()
        return None if n < 0 else self._take(n).decode()

    def array(self, flexible: bool, item: Callable[[], Any]) -> list[Any] | None:
        n = self.uvarint() - 1 if flexible else self.int32()
        return None if n < 0 else [item() for _ in range(n)]

    def uuid(self) -> bytes:
        return self._take(16)

    def tags(self, flexible: bool) -> None:
        if flexible:
            for _ in range(self.uvarint()):
                self.uvarint()
                self._take(self.uvarint())


class Writer:
    """Writes Kafka protocol primitives into a response body."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def bytes(self) -> bytes:
        return b"".join(self.parts)

    def int8(self, v: int) -> None:
        self.parts.append(struct.pack(">b", v))

    def int16(self, v: int) -> None:
        self.parts.append(struct.pack(">h", v))

    def int32(self, v: int) -> None:
        self.parts.append(struct.pack(">i", v))

    def boolean(self, v: bool) -> None:
        self.parts.append(b"\x01" if v else b"\x00")

    def uvarint(self, v: int) -> None:
        out = bytearray()
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
        self.parts.append(bytes(out))

    def string(self, v: str | None, flexible: bool) -> None:
        raw = v.encode() if v is not None else b""
        if flexible:
            self.uvarint(0 if v is None else len(raw) + 1)
        else:
            self.int16(-1 if v is None else len(raw))
        self.parts.append(raw)

    def array_len(self, n: int | None, flexible: bool) -> None:
        if flexible:
            self.uvarint(0 if n is None else n + 1)
        else:
            self.int32(-1 if n is None else n)

    def tags(self, flexible: bool) -> None:
        if flexible:
            self.uvarint(0)


API_VERSIONS, METADATA, DESCRIBE_CONFIGS, INCREMENTAL_ALTER_CONFIGS = 18, 3, 32, 44
#: api key -> (min, max, first flexible version). Only what is implemented is advertised.
SUPPORTED: dict[int, tuple[int, int, int]] = {
    API_VERSIONS: (0, 4, 3),
    METADATA: (0, 12, 9),
    DESCRIBE_CONFIGS: (0, 4, 4),
    INCREMENTAL_ALTER_CONFIGS: (0, 1, 1),
}


@dataclass
class AlterOp:
    """One AlterableConfig of an IncrementalAlterConfigs request."""

    name: str
    op: int
    value: str | None



@dataclass(frozen=True)
class RequestHeader:
    """Request header v1/v2; ``body`` is positioned at the request's tagged fields (flexible
    versions) or its first field."""

    api_key: int
    version: int
    correlation_id: int
    body: Reader


def decode_request_header(frame: bytes) -> RequestHeader:
    """The header of one request frame (without its size prefix)."""
    r = Reader(frame)
    api_key, version, correlation_id = r.int16(), r.int16(), r.int32()
    r.string(False)  # client id (never compact)
    return RequestHeader(api_key, version, correlation_id, r)


def response_header(correlation_id: int, flexible: bool) -> bytes:
    """Response header v0, or v1 (an empty tagged-field section) for flexible versions."""
    return struct.pack(">i", correlation_id) + (b"\x00" if flexible else b"")


def encode_frame(response: bytes) -> bytes:
    """A response with its size prefix."""
    return struct.pack(">i", len(response)) + response


# --- ApiVersions -------------------------------------------------------------------------------


def encode_api_versions(version: int, error: int) -> bytes:
    """ApiVersionsResponse advertising ``SUPPORTED``."""
    flexible = version >= 3
    w = Writer()
    w.int16(error)
    w.array_len(len(SUPPORTED), flexible)
    for key, (low, high, _) in sorted(SUPPORTED.items()):
        w.int16(key)
        w.int16(low)
        w.int16(high)
        w.tags(flexible)
    if version >= 1:
        w.int32(0)
    w.tags(flexible)
    return w.bytes()


# --- Metadata ----------------------------------------------------------------------------------


def decode_metadata(r: Reader, version: int, flexible: bool) -> list[str | None] | None:
    """MetadataRequest: the topic names asked for (None: all topics)."""

    def topic() -> str | None:
        if version >= 10:
            r.uuid()
        name = r.string(flexible)
        r.tags(flexible)
        return name

    return r.array(flexible, topic)


def encode_metadata(
    version: int,
    flexible: bool,
    *,
    broker_id: int,
    host: str,
    port: int,
    cluster_id: str,
    unknown_topics: Sequence[str],
    peers: Mapping[int, tuple[str, int]] | None = None,
) -> bytes:
    """MetadataResponse: this broker (also the controller) and the alive ``peers`` (id ->
    host, port), every named topic unknown."""
    w = Writer()
    if version >= 3:
        w.int32(0)
    brokers = {broker_id: (host, port), **(peers or {})}
    w.array_len(len(brokers), flexible)
    for node, (node_host, node_port) in sorted(brokers.items()):
        w.int32(node)
        w.string(node_host, flexible)
        w.int32(node_port)
        if version >= 1:
            w.string(None, flexible)
        w.tags(flexible)
    if version >= 2:
        w.string(cluster_id, flexible)
    if version >= 1:
        w.int32(broker_id)
    w.array_len(len(unknown_topics), flexible)
    for name in unknown_topics:
        w.int16(3)  # UNKNOWN_TOPIC_OR_PARTITION
        w.string(name, flexible)
        if version >= 10:
            w.parts.append(b"\x00" * 16)
        if version >= 1:
            w.boolean(False)
        w.array_len(0, flexible)
        if version >= 8:
            w.int32(-(2**31))
        w.tags(flexible)
    if 8 <= version <= 10:
        w.int32(-(2**31))
    w.tags(flexible)
    return w.bytes()


# --- DescribeConfigs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DescribeResult:
    """One resource of a DescribeConfigsResponse. ``entries``: dicts with ``name``,
    ``value``, ``read_only``, ``source``, ``sensitive``, ``synonyms`` ((name, value, source)
    triples) and ``type``."""

    resource_type: int
    resource_name: str
    error: int
    message: str | None
    entries: list[dict[str, Any]]


def decode_describe_configs(
    r: Reader, version: int, flexible: bool
) -> tuple[list[tuple[int, str, list[str] | None]], bool]:
    """DescribeConfigsRequest: (resource type, name, keys or None) each, and include_synonyms."""

    def resource() -> tuple[int, str, list[str] | None]:
        rtype, name = r.int8(), r.string(flexible) or ""
        keys = r.array(flexible, lambda: r.string(flexible))
        r.tags(flexible)
        return rtype, name, keys

    resources = r.array(flexible, resource) or []
    synonyms = r.boolean() if version >= 1 else False
    return resources, synonyms


def encode_describe_configs(
    version: int, flexible: bool, results: Sequence[DescribeResult]
) -> bytes:
    """DescribeConfigsResponse."""
    w = Writer()
    w.int32(0)
    w.array_len(len(results), flexible)
    for res in results:
        w.int16(res.error)
        w.string(res.message, flexible)
        w.int8(res.resource_type)
        w.string(res.resource_name, flexible)
        w.array_len(len(res.entries), flexible)
        for e in res.entries:
            w.string(e["name"], flexible)
            w.string(e["value"], flexible)
            w.boolean(e["read_only"])
            if version == 0:
                w.boolean(False)
            else:
                w.int8(e["source"])
            w.boolean(e["sensitive"])
            if version >= 1:
                w.array_len(len(e["synonyms"]), flexible)
                for s_name, s_value, s_source in e["synonyms"]:
                    w.string(s_name, flexible)
                    w.string(s_value, flexible)
                    w.int8(s_source)
                    w.tags(flexible)
            if version >= 3:
                w.int8(e["type"])
                w.string(None, flexible)
            w.tags(flexible)
        w.tags(flexible)
    w.tags(flexible)
    return w.bytes()


# --- IncrementalAlterConfigs -------------------------------------------------------------------


def decode_incremental_alter_configs(
    r: Reader, flexible: bool
) -> tuple[list[tuple[int, str, list[AlterOp]]], bool]:
    """IncrementalAlterConfigsRequest: (resource type, name, ops) each, and validate_only."""

    def config() -> AlterOp:
        name, op, value = r.string(flexible) or "", r.int8(), r.string(flexible)
        r.tags(flexible)
        return AlterOp(name, op, value)

    def resource() -> tuple[int, str, list[AlterOp]]:
        rtype, name = r.int8(), r.string(flexible) or ""
        ops = r.array(flexible, config) or []
        r.tags(flexible)
        return rtype, name, ops

    resources = r.array(flexible, resource) or []
    return resources, r.boolean()


def encode_incremental_alter_configs(
    flexible: bool, results: Sequence[tuple[int, str | None, int, str]]
) -> bytes:
    """IncrementalAlterConfigsResponse from (error, message, resource type, name) each."""
    w = Writer()
    w.int32(0)
    w.array_len(len(results), flexible)
    for error, message, rtype, name in results:
        w.int16(error)
        w.string(message, flexible)
        w.int8(rtype)
        w.string(name, flexible)
        w.tags(flexible)
    w.tags(flexible)
    return w.bytes()
