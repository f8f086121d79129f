"""What the broker double decides: its configs, and KIP-226 listener SSL reloads.

One ``Broker`` is one broker id: static and dynamic configs, each listener's current SSL
material (an ``ssl_factory.SslEngineFactory``), and the answers to DescribeConfigs and
IncrementalAlterConfigs. No sockets and no bytes here: ``server.KafkaBrokerDouble`` serves it
over TLS, ``wire`` encodes it.

Dynamic keystore/truststore updates follow Kafka's own code, read from apache/kafka:

* ``DynamicBrokerConfig.scala`` -- only ``listener.name.<listener>.ssl.*`` reconfigurable SSL
  configs may change; base security configs and non-dynamic configs are refused with Kafka's
  messages; a change is validated before it is applied, and a same-value update re-reads the
  store files only if their modification time changed (``reloadUpdatedFilesWithoutConfigChange``).
* ``SslFactory.java`` -- ``createNewSslEngineFactory``: no rebuild if the configs are equal and
  no store file's mtime (ms) changed (``DefaultSslEngineFactory.shouldBeRebuilt``,
  ``FileBasedStore.modified``); otherwise load the stores, refuse a keystore whose certificate
  DN changed (unless ``ssl.allow.dn.changes``) or whose SANs drop an old one (unless
  ``ssl.allow.san.changes``) or whose entry count changed (``CertificateEntries``); on the
  inter-broker listener run the ``SslEngineValidator`` handshakes old-server/new-client and
  new-server/old-client. Failures become ``Validation of dynamic config update of SSLFactory
  failed: <exception>``.
* ``ConfigAdminManager.scala`` (KRaft) -- the refusal is answered with INVALID_REQUEST (42) and
  the ConfigException message; ``ZkAdminManager.scala`` (ZooKeeper mode) prefixes
  ``Invalid config value for resource ConfigResource(type=BROKER, name='<id>'): ``.
* What differs between Kafka versions (the refusal texts, what a new keystore is compared
  with, the mode) is a ``profiles.KafkaProfile`` (``profile=``; default the newest).
* KRaft applies an accepted change asynchronously in ``DynamicConfigPublisher``: a same-path
  reload that fails there is only logged, the client has already been told "success".
* What that costs and when it is applied is ``timing.BrokerTiming`` (``timing=``): every
  listener validation and reload takes the time of Kafka's factory builds and validator
  handshakes, and a changed config is applied 100-300 ms *after* the answer (in ZooKeeper mode
  too: the config-change notification). A test must wait for the served certificate, never
  take the answer for the reload; ``timing=INSTANT`` applies before answering, at no cost.

Limits: Java exception texts other than Kafka's own messages are approximations (for instance
the PKIX message for an untrusted certificate); only one private key per keystore; the broker
serves no topics. Standalone: see ``cli``.
"""


from __future__ import annotations

import random
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from tests.doubles.kafka.configs import (
    _LISTENER_KEY,
    ALLOW_DN_CHANGES,
    ALLOW_SAN_CHANGES,
    LISTENER_SSL,
    PASSWORDS,
    RECONFIGURABLE,
    _base_name,
    _scala_set,
    read_only,
)
from tests.doubles.kafka.errors import CONFIG_EXCEPTION, JavaError
from tests.doubles.kafka.profiles import KafkaProfile, Mode, profile_for
from tests.doubles.kafka.ssl_factory import (
    SslEngineFactory,
    create_new_factory,
    validate_handshakes,
)
from tests.doubles.kafka.timing import BrokerTiming
from tests.doubles.kafka.wire import (
    INVALID_CONFIG,
    INVALID_REQUEST,
    NONE,
    OP_APPEND,
    OP_DELETE,
    OP_SET,
    OP_SUBTRACT,
    RESOURCE_BROKER,
    SOURCE_DEFAULT,
    SOURCE_DYNAMIC_BROKER,
    SOURCE_STATIC_BROKER,
    TYPE_BOOLEAN,
    TYPE_INT,
    TYPE_PASSWORD,
    TYPE_STRING,
    AlterOp,
    DescribeResult,
)


@dataclass
class _Listener:
    name: str
    port: int
    factory: SslEngineFactory
    reloads: int = 0


class Broker:
    """One Kafka broker's configs and listener SSL material, without the network.

    ``listeners`` maps listener names to ports (0 = any free port; bound by the server).
    ``config`` holds the static broker properties as in server.properties: ``ssl.*`` and
    ``listener.name.<lower-case listener>.ssl.*`` (store type/location/passwords,
    ``ssl.allow.dn.changes`` ...). ``profile`` is the Kafka version and metadata mode played
    (``profiles``; default the newest). ``mode`` ("kraft" or "zk") and ``kafka_version``
    instead pick the profile with ``profiles.profile_for``.
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
        timing: BrokerTiming | None = None,
        seed: int | None = None,
    ) -> None:
        self.broker_id = broker_id
        self.host = host
        self.cluster_id = cluster_id
        self.profile = profile or profile_for(kafka_version, mode)
        self._static = dict(config or {})
        self._listener_ports = dict(listeners or {"SSL": 0})
        self.inter_broker_listener = inter_broker_listener or self._static.get(
            "inter.broker.listener.name"
        )
        self.timing = timing or self.profile.timing
        self._rng = random.Random(seed)
        self._dynamic: dict[str, str] = {}  # stored (ZooKeeper / the metadata log)
        self._applied: dict[str, str] = {}  # what the listeners were last reconfigured with
        self._lock = threading.RLock()  # listener state, read by every new connection
        self._alter_lock = threading.RLock()  # one config change at a time (DynamicBrokerConfig)
        self._pending: list[threading.Timer] = []
        self._listeners: dict[str, _Listener] = {}
        self._stopping = threading.Event()
        self._refuse: tuple[int, str] | None = None
        self._keep_old = False
        self._tmpdir = ""
        self.log: list[str] = []
        self.reload_count = 0
        self.swaps: list[tuple[float, str, int]] = []  # (unix time, listener, serial) per reload

    @property
    def mode(self) -> Mode:
        """"zk" or "kraft", the profile's."""
        return self.profile.mode

    @property
    def kafka_version(self) -> tuple[int, int]:
        return self.profile.version


    def _initial_factory(self, name: str) -> SslEngineFactory:
        """A listener's SSL factory from its static config; the inter-broker listener must
        be able to talk to itself (SslEngineValidator at startup)."""
        factory = SslEngineFactory(self._effective_ssl(name, self._dynamic), self._tmpdir)
        if name == self.inter_broker_listener:
            try:
                validate_handshakes(factory, factory)
            except JavaError as e:
                raise JavaError(
                    CONFIG_EXCEPTION,
                    "A client SSLEngine created with the "
                    "provided settings can't connect to a server SSLEngine "
                    "created with those settings.",
                ) from e
        return factory

    def _cancel_pending(self) -> None:
        """Stop: no pending config notification is applied any more."""
        self._stopping.set()
        with self._lock:
            pending, self._pending = self._pending, []
        for timer in pending:
            timer.cancel()

    # --- test controls ---------------------------------------------------------------------

    @property
    def dynamic_config(self) -> dict[str, str]:
        """The per-broker dynamic configs currently stored (as DescribeConfigs would see them)."""
        with self._lock:
            return dict(self._dynamic)

    def served_certificate(self, listener: str) -> x509.Certificate:
        """The leaf certificate a new connection to ``listener`` is served."""
        with self._lock:
            return self._listeners[listener].factory.certificate

    def listener_reload_count(self, listener: str) -> int:
        """How many times this listener's SSL material was replaced."""
        with self._lock:
            return self._listeners[listener].reloads

    def wait_applied(self, timeout: float = 10.0) -> bool:
        """Wait until every accepted change has been applied (no config notification pending)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not any(t.is_alive() for t in self._pending):
                    return True
            time.sleep(0.01)
        return False

    def refuse_next_reload(self, message: str, error_code: int = INVALID_REQUEST) -> None:
        """Answer the next (non validate-only) IncrementalAlterConfigs with this error."""
        with self._lock:
            self._refuse = (error_code, message)

    def accept_but_keep_old(self, enabled: bool = True) -> None:
        """Fault: answer alters with success and store them, but keep serving the old material."""
        with self._lock:
            self._keep_old = enabled

    # --- config model ----------------------------------------------------------------------

    def _effective_ssl(self, listener: str, dynamic: Mapping[str, str]) -> dict[str, str]:
        """KafkaConfig.valuesWithPrefixOverride for the listener's SSL settings."""
        prefix = f"listener.name.{listener.lower()}."
        out: dict[str, str] = {}
        for key in LISTENER_SSL:
            for source in (
                dynamic.get(prefix + key),
                self._static.get(prefix + key),
                self._static.get(key),
            ):
                if source is not None:
                    out[key] = source
                    break
        return out

    def _static_view(self) -> dict[str, str]:
        listeners = ",".join(f"{n}://{self.host}:{lst.port}" for n, lst in self._listeners.items())
        view = {
            "broker.id": str(self.broker_id),
            "node.id": str(self.broker_id),
            "listeners": listeners,
            "advertised.listeners": listeners,
            "listener.security.protocol.map": ",".join(f"{n}:SSL" for n in self._listeners),
            "ssl.client.auth": "required",
        }
        if self.inter_broker_listener:
            view["inter.broker.listener.name"] = self.inter_broker_listener
        if self.mode == "kraft":
            view["process.roles"] = "broker,controller"
        else:
            view["zookeeper.connect"] = "127.0.0.1:2181"
        view.update(self._static)
        return view

    def _defaults(self) -> dict[str, str | None]:
        """The defaults DescribeConfigs lists that tell a version apart (a real broker lists
        every config it knows): ``ssl.engine.factory.class`` from 2.6 (KIP-519), the allow
        flags from 3.7 (KIP-978), ``process.roles`` (empty in ZooKeeper mode) from 2.8."""
        out: dict[str, str | None] = {}
        if self.kafka_version >= (2, 6):
            out["ssl.engine.factory.class"] = None
        if self.kafka_version >= (2, 8):
            out["process.roles"] = ""
        if self.kafka_version >= (3, 7):
            out[ALLOW_DN_CHANGES] = out[ALLOW_SAN_CHANGES] = "false"
        return out

    # --- IncrementalAlterConfigs -----------------------------------------------------------

    def _wrap(self, resource: str, message: str) -> str:
        return self.profile.wrap(resource, message)

    def alter_broker_configs(
        self, resource: str, ops: list[AlterOp], validate_only: bool
    ) -> tuple[int, str | None]:
        """The broker side of IncrementalAlterConfigs for resource BROKER: (error, message).

        Takes the time Kafka's validation takes; a success is answered before it is applied
        (see ``timing``), unless ``timing`` has no apply delay."""
        with self._alter_lock:
            started = time.monotonic()
            try:
                broker = int(resource)
            except ValueError:
                return INVALID_REQUEST, f"Node id must be an integer, but it is: {resource}"
            if broker != self.broker_id:
                return INVALID_REQUEST, (
                    f"Unexpected broker id, expected {self.broker_id}, but received {resource}"
                )
            names = [o.name for o in ops]
            if len(set(names)) != len(names):
                return INVALID_REQUEST, "Error due to duplicate config keys"
            nulls = [o.name for o in ops if o.op != OP_DELETE and o.value is None]
            if nulls:
                return INVALID_REQUEST, "Null value not supported for : " + ", ".join(nulls)
            new_dynamic = dict(self._dynamic)
            for o in ops:
                if o.op == OP_SET:
                    new_dynamic[o.name] = o.value or ""
                elif o.op == OP_DELETE:
                    new_dynamic.pop(o.name, None)
                elif o.op in (OP_APPEND, OP_SUBTRACT):
                    verb = "append" if o.op == OP_APPEND else "subtract"
                    return (
                        INVALID_CONFIG,
                        f"Config value {verb} is not allowed for config key: {o.name}",
                    )
                else:
                    return INVALID_REQUEST, f"Unknown operations type {o.op}"
            try:
                self._validate_configs(new_dynamic)
                changed = self._process_reconfiguration(new_dynamic, started)
            except JavaError as e:
                return INVALID_REQUEST, self._wrap(resource, e.message)
            if validate_only:
                return NONE, None
            if self._refuse is not None:
                (code, message), self._refuse = self._refuse, None
                self.log.append(f"refused by test control: {message}")
                return code, message
            if (
                self.mode == "zk"
                and any(_base_name(k) in PASSWORDS for k in new_dynamic)
                and "password.encoder.secret" not in self._static
            ):
                return INVALID_REQUEST, self._wrap(
                    resource, "Password encoder secret not configured"
                )
            if self._keep_old:
                with self._lock:
                    self._dynamic = new_dynamic
                self.log.append("accept_but_keep_old: stored the configs, kept the old material")
                return NONE, None
            if self.mode == "zk":  # ZkAdminManager.alterBrokerConfigs: in the request thread
                error = self._reload_modified_files(new_dynamic, exclude=changed)
                if error is not None:
                    return INVALID_REQUEST, self._wrap(resource, error.message)
            with self._lock:
                self._dynamic = new_dynamic
            if changed or self.mode == "kraft":
                self._schedule_apply()
            return NONE, None

    def _validate_configs(self, props: Mapping[str, str]) -> None:
        """DynamicBrokerConfig.validateConfigs, narrowed to what this double can reconfigure."""
        base_security = [k for k in props if k in LISTENER_SSL]
        non_dynamic = [
            k
            for k in props
            if k not in base_security
            and not (_LISTENER_KEY.fullmatch(k) and _base_name(k) in LISTENER_SSL)
        ]
        if non_dynamic:
            raise JavaError(
                CONFIG_EXCEPTION,
                f"Cannot update these configs dynamically: {_scala_set(non_dynamic)}",
            )
        if base_security:
            raise JavaError(
                CONFIG_EXCEPTION,
                "These security configs can be dynamically updated "
                f"only per-listener using the listener prefix: {_scala_set(base_security)}",
            )

    def _process_reconfiguration(
        self, new_dynamic: Mapping[str, str], started: float
    ) -> set[str]:
        """processReconfiguration(validateOnly=true): the listeners whose configs changed
        (against what is applied), each validated once per network processor."""
        out: set[str] = set()
        cost = 0.0
        try:
            for name, lst in self._listeners.items():
                old_cfg = self._effective_ssl(name, self._applied)
                new_cfg = self._effective_ssl(name, new_dynamic)
                if old_cfg == new_cfg:
                    continue
                changed = {
                    k for k in old_cfg.keys() | new_cfg.keys() if old_cfg.get(k) != new_cfg.get(k)
                }
                if changed - RECONFIGURABLE:
                    raise JavaError(
                        CONFIG_EXCEPTION,
                        "Configs cannot be updated dynamically for "
                        f"existing listener ListenerName({name}), restart broker or "
                        "create a new listener for update",
                    )
                cost += self.timing.validate(name == self.inter_broker_listener)
                self._new_factory(name, lst.factory, new_cfg)
                out.add(name)
        except JavaError as e:
            raise JavaError(
                CONFIG_EXCEPTION,
                f"Invalid value {e} for configuration Invalid dynamic configuration",
            ) from e
        finally:
            self._spend(started, cost)
        return out

    def _new_factory(
        self, name: str, old: SslEngineFactory, configs: Mapping[str, str]
    ) -> SslEngineFactory:
        return create_new_factory(
            old,
            configs,
            self._tmpdir,
            name == self.inter_broker_listener,
            self.profile,
        )

    def _spend(self, started: float, seconds: float) -> None:
        """Take ``seconds`` since ``started`` in all (the double's own work counts)."""
        left = seconds - (time.monotonic() - started)
        if left > 0:
            self._stopping.wait(left)

    def _schedule_apply(self) -> None:
        """The config notification (ZooKeeper) or the replayed record (KRaft), later."""
        delay = self.timing.delay(self._rng)
        if delay <= 0:
            self._apply_stored()
            return
        timer = threading.Timer(delay, self._apply_stored)
        timer.daemon = True
        with self._lock:
            self._pending = [t for t in self._pending if t.is_alive()] + [timer]
        timer.start()

    def _apply_stored(self) -> None:
        """DynamicBrokerConfig.updateBrokerConfig with the stored configs: rebuild (validate,
        then reconfigure) every listener whose configs changed, reading the store files as
        they are now. A failure is only logged: the client was told "success" long ago.
        KRaft's DynamicConfigPublisher then reloads unchanged listeners' modified files."""
        with self._alter_lock:
            if self._stopping.is_set():
                return
            started = time.monotonic()
            target = dict(self._dynamic)
            built: dict[str, SslEngineFactory] = {}
            cost = 0.0
            try:
                for name, lst in self._listeners.items():
                    new_cfg = self._effective_ssl(name, target)
                    if self._effective_ssl(name, self._applied) == new_cfg:
                        continue
                    cost += self.timing.apply(name == self.inter_broker_listener)
                    built[name] = self._new_factory(name, lst.factory, new_cfg)
            except JavaError as e:
                self._spend(started, cost)
                self.log.append(f"Per-broker configs of {self.broker_id} could not be applied: {e}")
                return
            self._spend(started, cost)
            self._applied = target
            for name, factory in built.items():
                self._swap(name, factory)
            if self.mode == "kraft":
                self._reload_modified_files(target, exclude=built)

    def _reload_modified_files(
        self, dynamic: Mapping[str, str], exclude: Collection[str]
    ) -> JavaError | None:
        """reloadUpdatedFilesWithoutConfigChange: rebuild listeners whose store files changed."""
        for name, lst in self._listeners.items():
            if name in exclude:
                continue
            configs = self._effective_ssl(name, dynamic)
            if not lst.factory.should_be_rebuilt(configs):
                continue
            started = time.monotonic()
            try:
                factory = self._new_factory(name, lst.factory, configs)
            except JavaError as e:
                self.log.append(f"listener {name}: {e}")
                return e
            finally:
                self._spend(started, self.timing.apply(name == self.inter_broker_listener))
            self._swap(name, factory)
        return None

    def _swap(self, name: str, factory: SslEngineFactory) -> None:
        with self._lock:
            lst = self._listeners[name]
            if factory is lst.factory:
                return
            lst.factory = factory
            lst.reloads += 1
            self.reload_count += 1
            self.swaps.append((time.time(), name, factory.certificate.serial_number))
        self.log.append(
            f"listener {name}: new SSL material, serial {factory.certificate.serial_number:x}"
        )


    # --- DescribeConfigs and IncrementalAlterConfigs --------------------------------------

    def describe_configs(
        self, resources: Sequence[tuple[int, str, list[str] | None]], synonyms: bool
    ) -> list[DescribeResult]:
        """DescribeConfigs: one result per (resource type, name, keys) asked for."""
        return [
            DescribeResult(rtype, name, *self._describe(rtype, name, keys, synonyms))
            for rtype, name, keys in resources
        ]

    def incremental_alter_configs(
        self, resources: Sequence[tuple[int, str, list[AlterOp]]], validate_only: bool
    ) -> list[tuple[int, str | None, int, str]]:
        """IncrementalAlterConfigs: (error, message, resource type, name) per resource, in
        order (each BROKER resource is altered before the next is looked at)."""
        seen = [(t, n) for t, n, _ in resources]
        out: list[tuple[int, str | None, int, str]] = []
        for rtype, name, ops in resources:
            error: int = INVALID_REQUEST
            message: str | None
            if seen.count((rtype, name)) > 1:
                message = "Each resource must appear at most once."
            elif rtype != RESOURCE_BROKER:
                message = f"Unsupported resource type {rtype} (broker double)"
            elif name == "":
                message = "Cluster-wide defaults are not supported by the double"
            else:
                error, message = self.alter_broker_configs(name, ops, validate_only)
            out.append((error, message, rtype, name))
        return out

    def _describe(
        self, rtype: int, name: str, keys: list[str] | None, synonyms: bool
    ) -> tuple[int, str | None, list[dict[str, Any]]]:
        if rtype != RESOURCE_BROKER:
            return INVALID_REQUEST, f"Unsupported resource type {rtype} (broker double)", []
        if name == "":
            return NONE, None, []
        if name != str(self.broker_id):
            return (
                INVALID_REQUEST,
                (
                    f"Unexpected broker id, expected {self.broker_id} or empty "
                    f"string, but received {name}"
                ),
                [],
            )
        with self._lock:
            static, dynamic = self._static_view(), dict(self._dynamic)
        defaults = self._defaults()
        entries = []
        for key in sorted(static.keys() | dynamic.keys() | defaults.keys()):
            if keys is not None and key not in keys:
                continue
            base = _base_name(key)
            sensitive = base in PASSWORDS
            in_dynamic = key in dynamic
            source = (SOURCE_DYNAMIC_BROKER if in_dynamic
                      else SOURCE_STATIC_BROKER if key in static else SOURCE_DEFAULT)
            value = dynamic[key] if in_dynamic else static[key] if key in static else defaults[key]
            syn: list[tuple[str, str | None, int]] = []
            if synonyms:
                if in_dynamic:
                    syn.append((key, None if sensitive else dynamic[key], SOURCE_DYNAMIC_BROKER))
                if key in static:
                    syn.append((key, None if sensitive else static[key], SOURCE_STATIC_BROKER))
                if base != key and base in static:
                    syn.append((base, None if sensitive else static[base], SOURCE_STATIC_BROKER))
            entries.append(
                {
                    "name": key,
                    "value": None if sensitive else value,
                    "read_only": read_only(key),
                    "source": source,
                    "sensitive": sensitive,
                    "synonyms": syn,
                    "type": TYPE_PASSWORD
                    if sensitive
                    else TYPE_BOOLEAN
                    if base in (ALLOW_DN_CHANGES, ALLOW_SAN_CHANGES)
                    else TYPE_INT
                    if key in ("broker.id", "node.id")
                    else TYPE_STRING,
                }
            )
        return NONE, None, entries
