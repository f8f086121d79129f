"""The broker double on the network: TLS listener sockets, one thread per connection.

Every listener is a TLS server socket that requires a client certificate and serves the
listener's *current* SSL material to each new connection; a reload never drops established
connections. Requests are decoded and answers encoded by ``wire``; what is answered is
``broker.Broker``'s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import struct
import tempfile
import threading
from collections.abc import Callable, Mapping

from tests.doubles.kafka.broker import Broker, _Listener
from tests.doubles.kafka.profiles import KafkaProfile, Mode
from tests.doubles.kafka.raft import RaftClient
from tests.doubles.kafka.ssl_factory import SslEngineFactory
from tests.doubles.kafka.timing import BrokerTiming
from tests.doubles.kafka.wire import (
    API_VERSIONS,
    DESCRIBE_CONFIGS,
    METADATA,
    NONE,
    SUPPORTED,
    UNSUPPORTED_VERSION,
    decode_describe_configs,
    decode_incremental_alter_configs,
    decode_metadata,
    decode_request_header,
    encode_api_versions,
    encode_describe_configs,
    encode_frame,
    encode_incremental_alter_configs,
    encode_metadata,
    response_header,
)


class KafkaBrokerDouble(Broker):
    """One Kafka broker: TLS listeners, admin protocol, KIP-226 listener SSL reloads.

    ``listeners`` maps listener names to ports (0 = any free port). ``config`` holds the static
    broker properties as in server.properties: ``ssl.*`` and ``listener.name.<lower-case
    listener>.ssl.*`` (store type/location/passwords, ``ssl.allow.dn.changes`` ...).
    ``profile`` is the Kafka version and metadata mode played (``profiles``; default the
    newest). ``mode`` ("kraft" or "zk") and ``kafka_version`` instead pick the profile with
    ``profiles.profile_for``. ``on_request(api_key, version)`` is called for every request.
    ``peers`` (broker id -> host, port) are the other brokers the cluster shows alive: Kafka's
    Metadata lists every alive broker (KRaft: registered and unfenced), so a test removes one
    to play a broker that is restarting.
    """

    def __init__(
        self,
        broker_id: int = 1,
        listeners: Mapping[str, int] | None = None,
        config: Mapping[str, str] | None = None,
        inter_broker_listener: str | None = None,
        *,
        host: str = "127.0.0.1",
        cluster_id: str = "kafka-pki-double",
        mode: Mode | None = None,
        kafka_version: tuple[int, int] | None = None,
        profile: KafkaProfile | None = None,
        on_request: Callable[[int, int], None] | None = None,
        timing: BrokerTiming | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            broker_id,
            listeners,
            config,
            inter_broker_listener,
            host=host,
            cluster_id=cluster_id,
            mode=mode,
            kafka_version=kafka_version,
            profile=profile,
            timing=timing,
            seed=seed,
        )
        self.on_request = on_request
        self._socks: dict[str, socket.socket] = {}
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.requests: list[tuple[int, int]] = []
        self.peers: dict[int, tuple[str, int]] = {}
        #: KRaft: the controller listener (controller.listener.names) and its Raft client,
        #: built at start and at each restart_process() only, unless ``raft_fixed`` (a release
        #: with KAFKA-20025 fixed, whose Raft client follows the listener's reloads).
        names = self._static.get("controller.listener.names", "")
        self.controller_listener: str | None = names.split(",")[0].strip().upper() or None
        self.raft_fixed = False
        self.raft: RaftClient | None = None
        self.process_starts = 0

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> KafkaBrokerDouble:
        """Build every listener's SSL context from its static config and start serving."""
        self._tmpdir = tempfile.mkdtemp(prefix="kafka-double-")
        os.chmod(self._tmpdir, 0o700)
        try:
            for name, port in self._listener_ports.items():
                factory = self._initial_factory(name)
                sock = socket.create_server((self.host, port))
                sock.settimeout(0.5)  # here, not in the thread: a quick stop() may close it first
                self._socks[name] = sock
                self._listeners[name] = _Listener(name, sock.getsockname()[1], factory)
        except BaseException:
            self.stop()
            raise
        self._start_raft()
        for lst in self._listeners.values():
            t = threading.Thread(
                target=self._accept_loop,
                args=(lst, self._socks[lst.name]),
                daemon=True,
                name=f"kafka-double-{self.broker_id}-{lst.name}",
            )
            t.start()
            self._threads.append(t)
        return self

    def _start_raft(self) -> None:
        self.process_starts += 1
        if self.controller_listener is not None:
            self.raft = RaftClient(self._effective_ssl(self.controller_listener, {}))

    def restart_process(self) -> None:
        """The broker's JVM started again: every listener loads its stores from the files as
        configured (static, then the stored dynamic configs), and so does the Raft client
        (from the static config: it is built before the metadata log is replayed)."""
        with self._lock:
            for name, lst in self._listeners.items():
                lst.factory = SslEngineFactory(self._effective_ssl(name, self._dynamic),
                                               self._tmpdir)
            self._applied = dict(self._dynamic)
        self._start_raft()

    def raft_handshake(self, host: str, port: int) -> None:
        """A new connection from this node's Raft client to a voter's controller listener
        (a leader change, a reconnect); RaftUnreachable if it fails."""
        if self.controller_listener is None:
            raise RuntimeError("this double has no controller listener")
        if self.raft_fixed:
            with self._lock:
                configs = self._effective_ssl(self.controller_listener, self._applied)
            RaftClient(configs).handshake(host, port)
            return
        assert self.raft is not None
        self.raft.handshake(host, port)

    def stop(self) -> None:
        """Close the listeners and every open connection."""
        self._cancel_pending()
        for sock in self._socks.values():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
            with contextlib.suppress(OSError):
                sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(c, socket.SHUT_RDWR)  # the TCP socket, not the TLS layer
            with contextlib.suppress(OSError):
                c.close()
        for t in self._threads:
            t.join(timeout=2)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> KafkaBrokerDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test controls ---------------------------------------------------------------------

    @property
    def ports(self) -> dict[str, int]:
        """Listener name -> bound port."""
        return {n: lst.port for n, lst in self._listeners.items()}

    def bootstrap(self, listener: str) -> str:
        """``host:port`` of a listener, for ``bootstrap.servers``."""
        return f"{self.host}:{self._listeners[listener].port}"

    # --- network ---------------------------------------------------------------------------

    def _accept_loop(self, lst: _Listener, sock: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            t = threading.Thread(target=self._serve, args=(lst, conn), daemon=True)
            t.start()

    def _serve(self, lst: _Listener, conn: socket.socket) -> None:
        with self._lock:
            ctx = lst.factory.server_context  # the current material, captured per connection
            self._conns.add(conn)
        tls: ssl.SSLSocket | None = None
        try:
            conn.settimeout(15)
            tls = ctx.wrap_socket(conn, server_side=True)
            with self._lock:
                self._conns.discard(conn)
                self._conns.add(tls)
            tls.settimeout(None)
            while not self._stopping.is_set():
                head = _recv_exact(tls, 4)
                if head is None:
                    return
                frame = _recv_exact(tls, struct.unpack(">i", head)[0])
                if frame is None:
                    return
                response = self._handle(lst, frame)
                if response is None:
                    return
                tls.sendall(encode_frame(response))
        except ssl.SSLError as e:
            if tls is None:
                self.log.append(f"listener {lst.name}: TLS handshake failed: {e.reason or e}")
        except (OSError, ValueError):
            return
        except Exception as e:  # a bug in the double: keep it visible to the test
            self.log.append(f"listener {lst.name}: connection error {e!r}")
        finally:
            with self._lock:
                self._conns.discard(conn)
                if tls is not None:
                    self._conns.discard(tls)
            with contextlib.suppress(OSError):
                (tls or conn).close()

    def _handle(self, lst: _Listener, frame: bytes) -> bytes | None:
        """One request frame -> its response (without the size prefix), or None to close."""
        req = decode_request_header(frame)
        api_key, version, r = req.api_key, req.version, req.body
        self.requests.append((api_key, version))
        if self.on_request is not None:
            self.on_request(api_key, version)
        if api_key not in SUPPORTED:
            self.log.append(f"unsupported api key {api_key} v{version}: closing the connection")
            return None
        low, high, flex_from = SUPPORTED[api_key]
        if api_key == API_VERSIONS:
            if version > high:  # KIP-511: answer v0 with UNSUPPORTED_VERSION and our versions
                body = encode_api_versions(0, UNSUPPORTED_VERSION)
            else:
                r.tags(version >= flex_from)
                body = encode_api_versions(version, NONE)
            return response_header(req.correlation_id, False) + body  # header v0, always
        if not low <= version <= high:
            self.log.append(f"unsupported version {version} of api {api_key}: closing")
            return None
        flexible = version >= flex_from
        r.tags(flexible)
        if api_key == METADATA:
            topics = decode_metadata(r, version, flexible)
            body = encode_metadata(
                version,
                flexible,
                broker_id=self.broker_id,
                host=self.host,
                port=lst.port,  # the listener this request came in on
                cluster_id=self.cluster_id,
                unknown_topics=[t for t in topics or [] if t],  # the double holds no topics
                peers=dict(self.peers),
            )
        elif api_key == DESCRIBE_CONFIGS:
            resources, synonyms = decode_describe_configs(r, version, flexible)
            body = encode_describe_configs(
                version, flexible, self.describe_configs(resources, synonyms)
            )
        else:
            alters, validate_only = decode_incremental_alter_configs(r, flexible)
            body = encode_incremental_alter_configs(
                flexible, self.incremental_alter_configs(alters, validate_only)
            )
        return response_header(req.correlation_id, flexible) + body


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
