"""The Kafka broker double, driven by confluent-kafka's AdminClient over real mutual TLS.

Runs unchanged against a real broker when ``KAFKA_BOOTSTRAP_SERVERS`` is set (see
``tests/kafka_setup.py``); tests that need the double's controls then skip. Tests whose
expectations depend on the Kafka version take the ``profiled`` fixture: one run per profile of
the double (``tests/doubles/kafka/profiles.py``), or one run against the real broker with the
profile read from its DescribeConfigs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.doubles.kafka import (
    PROFILES,
    AlterOp,
    BrokerTiming,
    KafkaBrokerDouble,
    KafkaProfile,
    profile_of_server,
    tls_exchange,
)
from tests.kafka_setup import (
    API_VERSIONS_V0,
    BROKER_DN,
    BROKER_SANS,
    CLIENT_DN,
    BrokerUnderTest,
    ClientFiles,
    broker_with_stores,
    fetch_served_certificate,
    listener_prefixed,
    make_ca,
    make_leaf,
    write_client_files,
    write_keystore,
    write_truststore,
)
from tests.kafka_setup import kafka_broker as kafka_broker  # the fixture

INVALID_REQUEST = 42
Result = tuple[int, str] | None
ZK_PREFIX = "Invalid config value for resource ConfigResource(type=BROKER, name='1'): "


def admin(broker: BrokerUnderTest) -> AdminClient:
    """An AdminClient on the broker's client listener, short timeouts."""
    config = broker.client.admin_config(broker.bootstrap(broker.external))
    # librdkafka's own stderr lines (reconnects after a double stopped) go to logging instead
    return AdminClient({**config, "logger": logging.getLogger("tests.librdkafka")})


def alter(
    broker: BrokerUnderTest,
    listener: str,
    settings: dict[str, str],
    validate_only: bool = False,
    client: AdminClient | None = None,
) -> Result:
    """SET listener-prefixed settings on the broker; None on success, else (code, message)."""
    resource = ConfigResource(
        ResourceType.BROKER,
        str(broker.broker_id),
        incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
            for k, v in listener_prefixed(listener, settings).items()
        ],
    )
    client = client if client is not None else admin(broker)  # (AdminClient has __len__)
    future = client.incremental_alter_configs(
        [resource], request_timeout=10, validate_only=validate_only
    )[resource]
    try:
        future.result(timeout=15)
    except KafkaException as e:
        return e.args[0].code(), e.args[0].str()
    return None


def served_serial(broker: BrokerUnderTest, listener: str | None = None) -> int:
    """The serial a fresh client connection is served (handshake plus a read)."""
    address = broker.bootstrap(listener or broker.external)
    return fetch_served_certificate(address, broker.client.ssl_context()).serial_number


def served_serial_when(
    broker: BrokerUnderTest,
    wanted: Callable[[int], bool],
    listener: str | None = None,
    timeout: float = 10.0,
) -> int:
    """The served serial once ``wanted`` holds (or the last one seen after ``timeout``): Kafka
    answers an alter before it applies it, so a test waits for the served certificate."""
    deadline = time.monotonic() + timeout
    while True:
        serial = served_serial(broker, listener)
        if wanted(serial) or time.monotonic() > deadline:
            return serial
        time.sleep(0.02)


def settle(broker: BrokerUnderTest) -> None:
    """Wait until the last accepted alter is applied, where no served serial shows it (a
    truststore-only change). A real broker gives no signal for that: give it a second."""
    if broker.double is not None:
        assert broker.double.wait_applied()
    else:
        time.sleep(1.0)


def describe(broker: BrokerUnderTest, client: AdminClient | None = None) -> dict[str, Any]:
    """DescribeConfigs of the broker: name -> confluent-kafka ConfigEntry."""
    client = client if client is not None else admin(broker)
    resource = ConfigResource(ResourceType.BROKER, str(broker.broker_id))
    configs: dict[str, Any] = client.describe_configs([resource], request_timeout=10)[
        resource
    ].result(timeout=15)
    return configs


def unchanged_passwords(settings: dict[str, str]) -> dict[str, str]:
    """The settings without the (unchanged) passwords: a ZooKeeper-mode broker takes
    passwords only with ``password.encoder.secret`` set, and the profile tests need none."""
    return {k: v for k, v in settings.items() if not k.endswith("password")}


def server_profile(broker: BrokerUnderTest) -> KafkaProfile:
    """The profile whose rules the broker follows, read from the broker itself."""
    return profile_of_server({k: e.value for k, e in describe(broker).items()})


@pytest.fixture(params=list(PROFILES), ids=list(PROFILES))
def profiled(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[
    tuple[BrokerUnderTest, KafkaProfile]
]:
    """A broker and the profile to expect of it: each profile of the double in turn, or the
    real broker once, with the profile read from the server."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        if request.param != next(iter(PROFILES)):
            pytest.skip("the real broker runs once, as the version it is")
        broker: BrokerUnderTest = request.getfixturevalue("kafka_broker")
        yield broker, server_profile(broker)
        return
    profile = PROFILES[request.param]
    with broker_with_stores(tmp_path, "PKCS12", profile=profile) as b:
        yield b, profile


def new_keystore(broker: BrokerUnderTest, name: str, **leaf: object) -> dict[str, str]:
    """A new broker keystore of the broker's store type, signed by root A unless ``ca``."""
    ca = leaf.pop("ca", broker.root_a)
    ext = {"PKCS12": "p12", "JKS": "jks", "PEM": "pem"}[broker.store_type]
    return write_keystore(
        broker.pki_dir / f"{name}.{ext}",
        make_leaf(ca, **leaf),  # type: ignore[arg-type]
        broker.store_type,
    )


def test_describe_configs_reports_static_and_dynamic_listener_settings(
    kafka_broker: BrokerUnderTest,
) -> None:
    client = admin(kafka_broker)
    resource = ConfigResource(ResourceType.BROKER, str(kafka_broker.broker_id))
    configs = client.describe_configs([resource], request_timeout=10)[resource].result(timeout=15)
    prefix = f"listener.name.{kafka_broker.external.lower()}."
    location = configs[prefix + "ssl.keystore.location"]
    password = configs[prefix + "ssl.keystore.password"]
    assert password.value is None and password.is_sensitive
    assert location.is_read_only  # though alterable: see test_listener_ssl_settings_...
    if kafka_broker.double is None:
        return
    assert location.value == kafka_broker.stores["SSL"]["ssl.keystore.location"]
    assert location.source == 4  # STATIC_BROKER_CONFIG

    settings = new_keystore(kafka_broker, "described")
    assert alter(kafka_broker, "SSL", settings, client=client) is None
    configs = client.describe_configs([resource], request_timeout=10)[resource].result(timeout=15)
    assert (
        configs["listener.name.ssl.ssl.keystore.location"].value
        == settings["ssl.keystore.location"]
    )
    assert configs["listener.name.ssl.ssl.keystore.location"].source == 2  # DYNAMIC_BROKER
    assert configs["listener.name.ssl.ssl.keystore.password"].value is None
    assert {key for key, _ in kafka_broker.double.requests} >= {18, 3, 32, 44}


@pytest.mark.parametrize("store_type", ["PKCS12", "JKS", "PEM"])
def test_reload_serves_the_new_keystore(tmp_path: Path, store_type: str) -> None:
    with broker_with_stores(tmp_path, store_type) as broker:
        before = served_serial(broker)
        settings = new_keystore(broker, f"reload-{time.monotonic_ns()}")
        assert alter(broker, broker.external, settings) is None
        after = served_serial_when(broker, lambda serial: serial != before)
        assert after != before
        if broker.double is not None:
            assert after == broker.double.served_certificate("SSL").serial_number
            assert broker.double.listener_reload_count("SSL") == 1


def test_switching_store_type_pkcs12_to_jks(kafka_broker: BrokerUnderTest) -> None:
    ident = make_leaf(kafka_broker.root_a)
    settings = write_keystore(kafka_broker.pki_dir / "switch.jks", ident, "JKS")
    assert alter(kafka_broker, kafka_broker.external, settings) is None
    assert served_serial_when(kafka_broker, lambda s: s == ident.serial) == ident.serial


@pytest.mark.parametrize(
    ("leaf", "expected"),
    [
        (
            {"dn": "CN=other-broker.kafka.test,OU=kafka,O=Example"},
            "Keystore DistinguishedName does not match",
        ),
        ({"sans": ("localhost", "broker-1.kafka.test")}, "Keystore SubjectAltNames do not match"),
    ],
    ids=["dn-changed", "san-dropped"],
)
def test_incompatible_keystore_is_refused(
    kafka_broker: BrokerUnderTest, leaf: dict[str, object], expected: str
) -> None:
    before = served_serial(kafka_broker)
    result = alter(kafka_broker, kafka_broker.external, new_keystore(kafka_broker, "bad", **leaf))
    assert result is not None
    code, message = result
    assert code == INVALID_REQUEST
    assert "Validation of dynamic config update of SSLFactory failed" in message
    assert expected in message
    assert served_serial(kafka_broker) == before


def test_inter_broker_signer_switched_without_trust_is_refused(
    kafka_broker: BrokerUnderTest,
) -> None:
    internal = kafka_broker.internal
    # A known start: keystore from root A, truststore trusting only root A.
    start = new_keystore(kafka_broker, "ib-a") | write_truststore(
        kafka_broker.pki_dir / "ib-trust-a.p12", [kafka_broker.root_a]
    )
    assert alter(kafka_broker, internal, start) is None
    settle(kafka_broker)  # validation compares with what is applied, not with what is stored
    double = kafka_broker.double
    before = double.served_certificate(internal).serial_number if double else None

    result = alter(
        kafka_broker, internal, new_keystore(kafka_broker, "ib-b", ca=kafka_broker.root_b)
    )
    assert result is not None
    code, message = result
    assert code == INVALID_REQUEST
    assert message.startswith(
        "Invalid value org.apache.kafka.common.config.ConfigException: "
        "Validation of dynamic config update of SSLFactory failed: "
        "javax.net.ssl.SSLHandshakeException"
    )
    if double is not None:
        assert double.served_certificate(internal).serial_number == before


def test_three_phase_rotation_and_rollback_on_inter_broker_listener(
    kafka_broker: BrokerUnderTest,
) -> None:
    b, internal = kafka_broker, kafka_broker.internal
    a_cert = new_keystore(b, "rot-a-key")
    a_trust = write_truststore(b.pki_dir / "rot-a.p12", [b.root_a])
    assert alter(b, internal, a_cert | a_trust) is None  # phase 0: {A}, A
    settle(b)  # each step is validated against the applied one: wait for it
    both = write_truststore(b.pki_dir / "rot-ab.p12", [b.root_a, b.root_b])
    b_cert = new_keystore(b, "rot-b-key", ca=b.root_b)
    b_trust = write_truststore(b.pki_dir / "rot-b.p12", [b.root_b])
    # Skipping phase 1 is what Kafka refuses: trust {A} -> {B} at once.
    assert alter(b, internal, b_trust) is not None
    for step in (both, b_cert, b_trust, both, a_cert, a_trust):  # A->B, then rolled back
        assert alter(b, internal, step) is None
        settle(b)
    if b.double is not None:
        assert b.double.served_certificate(internal).issuer == b.root_a.cert.subject


def test_truststore_without_java_trust_marks_is_refused(kafka_broker: BrokerUnderTest) -> None:
    """A PKCS12 truststore written without Java's trusted-cert attribute has 0 entries in Java."""
    b = kafka_broker
    path = b.pki_dir / "no-trust-marks.p12"
    path.parent.mkdir(parents=True, exist_ok=True)  # a real broker's run-* directory is new
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            None, None, None, [b.root_a.cert], serialization.BestAvailableEncryption(b"changeit")
        )
    )
    result = alter(
        b,
        b.internal,
        {
            "ssl.truststore.type": "PKCS12",
            "ssl.truststore.location": str(path),
            "ssl.truststore.password": "changeit",
        },
    )
    assert result is not None and result[0] == INVALID_REQUEST


def test_same_path_reloads_only_when_mtime_changes(kafka_broker: BrokerUnderTest) -> None:
    b = kafka_broker
    before = served_serial(b)
    settings = new_keystore(b, "same-path")
    assert alter(b, b.external, settings) is None
    first = served_serial_when(b, lambda serial: serial != before)
    settle(b)
    reloads = b.double.reload_count if b.double else 0

    assert alter(b, b.external, settings) is None  # same path, file untouched
    settle(b)
    assert served_serial(b) == first
    if b.double is not None:
        assert b.double.reload_count == reloads

    path = Path(settings["ssl.keystore.location"])
    stat = path.stat()
    replacement = make_leaf(b.root_a)
    write_keystore(path, replacement, b.store_type)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert alter(b, b.external, settings) is None  # same path, new mtime
    assert served_serial_when(b, lambda s: s == replacement.serial) == replacement.serial


@pytest.mark.parametrize("mode", ["kraft", "zk"])
def test_same_path_incompatible_rewrite(tmp_path: Path, mode: str) -> None:
    """KRaft applies same-path reloads after answering (failure only logged); ZK answers it."""
    with broker_with_stores(tmp_path, "PKCS12", mode=mode) as b:
        double = b.require_double()
        settings = b.stores["SSL"]
        before = served_serial(b)
        path = Path(settings["ssl.keystore.location"])
        write_keystore(path, make_leaf(b.root_a, "CN=imposter,OU=kafka,O=Example"))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
        result = alter(b, "SSL", {"ssl.keystore.location": settings["ssl.keystore.location"]})
        settle(b)  # KRaft: refused after the answer, in the config publisher
        assert served_serial(b) == before
        assert any("Keystore DistinguishedName does not match" in line for line in double.log)
        if mode == "kraft":
            assert result is None
        else:
            assert result is not None
            assert result[1].startswith(
                "Invalid config value for resource ConfigResource(type=BROKER, name='1'): "
                "Validation of dynamic config update of SSLFactory failed: "
            )


@pytest.mark.parametrize("name", list(PROFILES))
def test_alter_is_answered_before_it_is_applied(tmp_path: Path, name: str) -> None:
    """Kafka applies a changed config when it processes the config notification (ZooKeeper)
    or replays the record (KRaft), after the answer: on every version."""
    timing = BrokerTiming(apply_delay=(0.3, 0.3))
    profile = PROFILES[name]
    with broker_with_stores(tmp_path, "PKCS12", profile=profile, timing=timing) as b:
        double = b.require_double()
        before = served_serial(b)
        ident = make_leaf(b.root_a)
        location = write_keystore(b.pki_dir / "later.p12", ident)["ssl.keystore.location"]
        assert alter(b, "SSL", {"ssl.keystore.location": location}) is None  # same password
        answered = time.time()
        assert served_serial(b) == before  # answered, not applied
        assert served_serial_when(b, lambda s: s == ident.serial) == ident.serial
        (at, listener, serial), = double.swaps
        assert (listener, serial) == ("SSL", ident.serial)
        assert at - answered >= 0.25


def test_validation_takes_the_time_of_kafkas_factory_builds(tmp_path: Path) -> None:
    """Each network processor validates its own SslFactory; the inter-broker listener's also
    runs two validator handshakes (lower bounds only: the machine may be slower)."""
    timing = BrokerTiming(network_threads=3, factory_build=0.01, validator_handshake=0.05,
                          apply_delay=(0.0, 0.0))
    with broker_with_stores(tmp_path, "PKCS12", timing=timing) as b:
        for listener, least in (("SSL", 3 * 0.01), ("INTERNAL", 3 * (0.01 + 2 * 0.05))):
            settings = new_keystore(b, f"cost-{listener}")
            started = time.monotonic()
            assert alter(b, listener, settings, validate_only=True) is None
            assert time.monotonic() - started >= least


def test_zookeeper_reloads_same_path_files_of_every_listener_in_the_request(
    tmp_path: Path,
) -> None:
    """reloadUpdatedFilesWithoutConfigChange runs in ZkAdminManager's request: a same-value SET
    naming one listener reloads every listener whose store files changed, before answering."""
    with broker_with_stores(tmp_path, "PKCS12", mode="zk") as b:
        double = b.require_double()
        idents = {}
        for listener in ("SSL", "INTERNAL"):
            path = Path(b.stores[listener]["ssl.keystore.location"])
            idents[listener] = make_leaf(b.root_a)
            write_keystore(path, idents[listener])
            os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
        location = b.stores["SSL"]["ssl.keystore.location"]
        assert alter(b, "SSL", {"ssl.keystore.location": location}) is None
        for listener, ident in idents.items():  # no wait: applied before the answer
            assert double.served_certificate(listener).serial_number == ident.serial


def test_validate_only_checks_without_reloading(kafka_broker: BrokerUnderTest) -> None:
    b = kafka_broker
    before = served_serial(b)
    assert alter(b, b.external, new_keystore(b, "vo-good"), validate_only=True) is None
    bad = new_keystore(b, "vo-bad", dn="CN=x,OU=kafka,O=Example")
    result = alter(b, b.external, bad, validate_only=True)
    assert result is not None and result[0] == INVALID_REQUEST
    assert served_serial(b) == before


def test_non_listener_configs_are_refused(kafka_broker: BrokerUnderTest) -> None:
    b = kafka_broker
    resource = ConfigResource(
        ResourceType.BROKER,
        str(b.broker_id),
        incremental_configs=[
            ConfigEntry(
                "ssl.keystore.location", "/tmp/x.p12", incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    client = admin(b)
    future = client.incremental_alter_configs([resource], request_timeout=10)[resource]
    with pytest.raises(KafkaException) as err:
        future.result(timeout=15)
    assert err.value.args[0].code() == INVALID_REQUEST
    assert "only per-listener using the listener prefix" in err.value.args[0].str()


def _open_tls(address: str, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    host, port = address.rsplit(":", 1)
    return ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=5))


def _api_versions_roundtrip(sock: ssl.SSLSocket) -> int:
    sock.sendall(struct.pack(">i", len(API_VERSIONS_V0)) + API_VERSIONS_V0)
    (size,) = struct.unpack(">i", sock.recv(4))
    body = b""
    while len(body) < size:
        body += sock.recv(size - len(body))
    (correlation_id,) = struct.unpack(">i", body[:4])
    return correlation_id


def test_established_connection_survives_reload(kafka_broker: BrokerUnderTest) -> None:
    b = kafka_broker
    replacement = make_leaf(b.root_a)
    settings = write_keystore(b.pki_dir / "survive.p12", replacement)
    with _open_tls(b.bootstrap(b.external), b.client.ssl_context()) as sock:
        old = sock.getpeercert(binary_form=True)
        assert _api_versions_roundtrip(sock) == 7
        assert alter(b, b.external, settings) is None
        # new connections: new certificate (once applied)
        assert served_serial_when(b, lambda s: s == replacement.serial) == replacement.serial
        assert _api_versions_roundtrip(sock) == 7  # the old connection still works
        assert sock.getpeercert(binary_form=True) == old


def test_accept_but_keep_old_fault(kafka_broker: BrokerUnderTest) -> None:
    double = kafka_broker.require_double()
    before = served_serial(kafka_broker)
    double.accept_but_keep_old(True)
    settings = new_keystore(kafka_broker, "ignored")
    assert alter(kafka_broker, "SSL", settings) is None
    settle(kafka_broker)
    assert served_serial(kafka_broker) == before  # only a handshake tells the truth
    assert (
        double.dynamic_config["listener.name.ssl.ssl.keystore.location"]
        == settings["ssl.keystore.location"]
    )
    assert double.reload_count == 0


def test_refuse_next_reload_control(kafka_broker: BrokerUnderTest) -> None:
    double = kafka_broker.require_double()
    double.refuse_next_reload("broker says no")
    settings = new_keystore(kafka_broker, "refused")
    assert alter(kafka_broker, "SSL", settings) == (INVALID_REQUEST, "broker says no")
    assert alter(kafka_broker, "SSL", settings) is None  # one-shot
    settle(kafka_broker)
    assert double.reload_count == 1


def test_validator_reads_so_tls13_client_certificate_refusal_is_seen() -> None:
    """Over TLS 1.3 the client's handshake completes before the server refuses its cert."""
    root_a, root_b = make_ca("A"), make_ca("B")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    for ctx, ident, trust in (
        (server, make_leaf(root_a), root_a),
        (client, make_leaf(root_b, CLIENT_DN, ()), root_a),
    ):
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(
            cadata=trust.cert.public_bytes(serialization.Encoding.PEM).decode()
        )
        key = ident.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pem = Path(os.environ.get("TMPDIR", "/tmp")) / f"tls13-{os.getpid()}-{id(ctx)}.pem"
        pem.write_bytes(key + ident.cert.public_bytes(serialization.Encoding.PEM))
        pem.chmod(0o600)
        try:
            ctx.load_cert_chain(pem)
        finally:
            pem.unlink()
    with pytest.raises(Exception, match="PKIX path building failed"):
        tls_exchange(server, client)


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[tuple[dict[str, object], ClientFiles]]:
    root = make_ca("A")
    client = write_client_files(tmp_path / "client", make_leaf(root, CLIENT_DN, ()), [root])
    props = [
        "listeners=SSL://127.0.0.1:0,INTERNAL://127.0.0.1:0",
        "inter.broker.listener.name=INTERNAL",
    ]
    for k, v in (
        write_keystore(tmp_path / "ks.p12", make_leaf(root))
        | write_truststore(tmp_path / "ts.p12", [root])
    ).items():
        props.append(f"{k}={v}")
    (tmp_path / "server.properties").write_text("\n".join(props) + "\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.doubles.kafka_broker",
            "--broker-id",
            "3",
            "--config",
            str(tmp_path / "server.properties"),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline()), client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_standalone_prints_ports_and_serves(
    standalone: tuple[dict[str, object], ClientFiles],
) -> None:
    info, client = standalone
    assert info["broker_id"] == 3
    ports = info["ports"]
    assert isinstance(ports, dict) and set(ports) == {"SSL", "INTERNAL"}
    cert = fetch_served_certificate(f"127.0.0.1:{ports['SSL']}", client.ssl_context())
    assert cert.subject.rfc4514_string() == "CN=broker-1.kafka.test,OU=kafka,O=Example"
    resource = ConfigResource(ResourceType.BROKER, "3")
    admin_client = AdminClient(
        {
            **client.admin_config(f"127.0.0.1:{ports['SSL']}"),
            "logger": logging.getLogger("tests.librdkafka"),
        }
    )
    configs = admin_client.describe_configs([resource], request_timeout=10)[resource].result(15)
    assert configs["broker.id"].value == "3"


SANS = ("localhost", "127.0.0.1", "broker-1.kafka.test")


@pytest.mark.parametrize(
    ("version", "flags", "leaf", "refusal"),
    [
        ((3, 9), {}, {"sans": (*SANS, "extra.kafka.test")}, None),  # KIP-978: SANs may grow
        ((3, 6), {}, {"sans": (*SANS, "extra.kafka.test")}, "or SubjectAltNames do not match"),
        ((3, 9), {}, {"sans": SANS[:2]}, "SubjectAltNames do not match"),
        ((3, 9), {"ssl.allow.san.changes": "true"}, {"sans": SANS[:2]}, None),
        ((3, 9), {}, {"dn": "CN=b2,OU=kafka,O=Example"}, "DistinguishedName does not match"),
        ((3, 9), {"ssl.allow.dn.changes": "true"}, {"dn": "CN=b2,OU=kafka,O=Example"}, None),
        ((3, 9), {}, {"dn": "CN=Broker-1.Kafka.Test,OU=kafka,O=Example"}, None),  # canonical
    ],
)
def test_keystore_compatibility_rules(
    tmp_path: Path,
    version: tuple[int, int],
    flags: dict[str, str],
    leaf: dict[str, object],
    refusal: str | None,
) -> None:
    """SslFactory's DN/SAN rules by Kafka version, with the (static) allow flags."""
    root = make_ca("A")
    settings = write_keystore(tmp_path / "ks0.p12", make_leaf(root))
    settings |= write_truststore(tmp_path / "ts.p12", [root])
    config = listener_prefixed("SSL", settings | flags)
    with KafkaBrokerDouble(1, {"SSL": 0}, config, kafka_version=version) as double:
        new = write_keystore(tmp_path / "ks1.p12", make_leaf(root, **leaf))  # type: ignore[arg-type]
        ops = [AlterOp(f"listener.name.ssl.{k}", 0, v) for k, v in new.items()]
        code, message = double.alter_broker_configs("1", ops, validate_only=False)
        assert double.wait_applied()
        if refusal is None:
            assert (code, message) == (0, None)
            assert double.reload_count == 1
        else:
            assert code == INVALID_REQUEST and message is not None and refusal in message
            assert double.reload_count == 0


def test_api_versions_answers_unsupported_version_with_v0_and_its_range(
    kafka_broker: BrokerUnderTest,
) -> None:
    """KIP-511: an ApiVersions request newer than the broker's gets a v0 UNSUPPORTED_VERSION."""
    kafka_broker.require_double()
    request = struct.pack(">hhih", 18, 99, 5, 4) + b"test" + b"\x00"
    with _open_tls(kafka_broker.bootstrap("SSL"), kafka_broker.client.ssl_context()) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", sock.recv(4))
        body = b""
        while len(body) < size:
            body += sock.recv(size - len(body))
    correlation_id, error, count = struct.unpack(">ihi", body[:10])
    assert (correlation_id, error) == (5, 35)
    ranges = {
        struct.unpack(">hhh", body[10 + 6 * i : 16 + 6 * i])[0]: struct.unpack(
            ">hhh", body[10 + 6 * i : 16 + 6 * i]
        )[1:]
        for i in range(count)
    }
    assert ranges[18] == (0, 4)


# --------------------------------------------------------------------------------------------
# What differs by Kafka version (tests/doubles/kafka/profiles.py)
# --------------------------------------------------------------------------------------------


def test_the_profile_is_read_from_the_server(
    profiled: tuple[BrokerUnderTest, KafkaProfile],
) -> None:
    """DescribeConfigs tells the mode and the version's rules apart (the double lists the
    same marker configs a real broker does)."""
    broker, profile = profiled
    read = server_profile(broker)
    assert read.mode == profile.mode
    assert read.combined_keystore_message == profile.combined_keystore_message
    assert read.old_keystore_from_disk == profile.old_keystore_from_disk


def test_listener_ssl_settings_are_read_only_yet_alterable(
    profiled: tuple[BrokerUnderTest, KafkaProfile],
) -> None:
    """DescribeConfigs looks the read-only flag up by the full name among the unprefixed
    dynamic configs: ``listener.name.ssl.ssl.keystore.location`` is reported read-only on 2.4
    and trunk alike, and a SET of it is accepted all the same."""
    broker, _ = profiled
    configs = describe(broker)
    prefix = f"listener.name.{broker.external.lower()}."
    for name in ("ssl.keystore.location", "ssl.truststore.location", "ssl.keystore.password"):
        assert configs[prefix + name].is_read_only, name
    settings = unchanged_passwords(new_keystore(broker, "read-only-yet"))
    assert alter(broker, broker.external, settings) is None


@pytest.mark.parametrize(
    ("kind", "leaf"),
    [("dn", {"dn": "CN=broker-9.kafka.test,OU=kafka,O=Example"}),
     ("san", {"sans": BROKER_SANS[:1]})],
    ids=["dn-changed", "san-dropped"],
)
def test_identity_change_refusal_reads_as_the_version_writes_it(
    profiled: tuple[BrokerUnderTest, KafkaProfile], kind: str, leaf: dict[str, object]
) -> None:
    """A new path (validated against what is served on every version): ZooKeeper mode prefixes
    the resource; before 3.7 one message covers DN and SANs, later each has its own."""
    broker, profile = profiled
    before = served_serial(broker)
    settings = unchanged_passwords(new_keystore(broker, f"bad-{kind}", **leaf))
    result = alter(broker, broker.external, settings)
    assert result is not None
    code, message = result
    assert code == INVALID_REQUEST
    assert profile.keystore_refusal("dn" if kind == "dn" else "san") in message
    assert message.startswith(ZK_PREFIX) == (profile.mode == "zk"), message
    if not profile.combined_keystore_message:
        assert "DistinguishedName or SubjectAltNames" not in message
    assert served_serial(broker) == before


@pytest.mark.parametrize("same_path", [False, True], ids=["new-path", "same-path"])
def test_inter_broker_signer_switch_refusal_reads_as_the_version_writes_it(
    profiled: tuple[BrokerUnderTest, KafkaProfile], same_path: bool
) -> None:
    """SslEngineValidator's old-server/new-client handshake fails; on 2.4 the old server
    received no client certificate at all ("Empty client certificate chain"). A changed path
    is wrapped by DynamicBrokerConfig.processReconfiguration ("Invalid value ... for
    configuration Invalid dynamic configuration"); the product's same-path reload
    (reloadUpdatedFilesWithoutConfigChange) is not, so in ZooKeeper mode the answer ends in
    the Java exception. KRaft answers a same-path reload first and only logs the failure."""
    broker, profile = profiled
    internal = broker.internal
    start = new_keystore(broker, "ibv-a") | write_truststore(
        broker.pki_dir / "ibv-trust-a.p12", [broker.root_a]
    )
    assert alter(broker, internal, unchanged_passwords(start)) is None
    settle(broker)
    before = served_serial(broker, internal) if internal in broker.addresses else None
    expected = "javax.net.ssl.SSLHandshakeException: " + (
        "Empty client certificate chain" if profile.empty_client_chain else ""
    )
    if same_path:
        path = Path(start["ssl.keystore.location"])
        write_keystore(path, make_leaf(broker.root_b), broker.store_type)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
        result = alter(broker, internal, {"ssl.keystore.location": str(path)})
        settle(broker)
        if profile.mode == "kraft":
            assert result is None
            if broker.double is not None:
                assert any(expected in line for line in broker.double.log)
        else:
            assert result is not None and result[0] == INVALID_REQUEST
            assert result[1].startswith(ZK_PREFIX + "Validation of dynamic config update")
            if profile.empty_client_chain:
                assert result[1].endswith(expected), result[1]
    else:
        switched = unchanged_passwords(new_keystore(broker, "ibv-b", ca=broker.root_b))
        result = alter(broker, internal, switched)
        assert result is not None
        code, message = result
        assert code == INVALID_REQUEST
        assert message.startswith(ZK_PREFIX) == (profile.mode == "zk"), message
        assert "Validation of dynamic config update of SSLFactory failed: " + expected in message
        if not profile.empty_client_chain:
            assert "Empty client certificate chain" not in message
    if before is not None:
        assert served_serial(broker, internal) == before


@pytest.mark.parametrize(
    "leaf",
    [{"dn": "CN=imposter,OU=kafka,O=Example"}, {"sans": BROKER_SANS[:1]}],
    ids=["dn-changed", "san-dropped"],
)
def test_same_path_identity_change_is_caught_only_from_2_6(
    profiled: tuple[BrokerUnderTest, KafkaProfile], leaf: dict[str, object]
) -> None:
    """The product's stable ``current/`` path: new content under the path the listener
    already uses. Before 2.6 SslFactory compares with that path read again (the new keystore
    itself) and accepts; DefaultSslEngineFactory (2.6+) compares with the keystore in memory
    and refuses (ZooKeeper: in the answer; KRaft: after it, only logged)."""
    broker, profile = profiled
    settings = unchanged_passwords(new_keystore(broker, "stable"))
    original = served_serial(broker)
    assert alter(broker, broker.external, settings) is None
    first = served_serial_when(broker, lambda s: s != original)
    settle(broker)
    path = Path(settings["ssl.keystore.location"])
    changed = make_leaf(broker.root_a, **leaf)  # type: ignore[arg-type]
    write_keystore(path, changed, broker.store_type)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
    result = alter(broker, broker.external, {"ssl.keystore.location": str(path)})
    if profile.accepts_same_path_identity_change():
        assert result is None
        assert served_serial_when(broker, lambda s: s == changed.serial) == changed.serial
        # put the broker's own identity back (accepted the same way)
        write_keystore(path, make_leaf(broker.root_a, BROKER_DN, BROKER_SANS), broker.store_type)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 4_000_000_000))
        assert alter(broker, broker.external, {"ssl.keystore.location": str(path)}) is None
        return
    settle(broker)
    assert served_serial(broker) == first
    if profile.mode == "zk":
        assert result is not None and result[0] == INVALID_REQUEST
    else:
        assert result is None  # answered first; the replayed record's reload fails
        if broker.double is not None:
            assert any(profile.keystore_refusal("dn" if "dn" in leaf else "san") in line
                       for line in broker.double.log)
