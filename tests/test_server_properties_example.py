"""``docker/server.properties.example`` stays true: its TLS block is the volume's
``broker.properties``, it loads in the broker double, it agrees with what the monitor alters,
and a rotation through it is served on both listeners."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from monitor.config import MonitorConfig
from monitor.listener_settings import listener_settings
from monitor.metrics import MonitorMetrics
from monitor.reloader import Reloader
from monitor.stores import STORE_FILES
from sidecar import layout
from sidecar.material import format_serial
from tests.doubles.kafka import KafkaBrokerDouble
from tests.doubles.kafka.cli import read_properties
from tests.manager_kit import PASSWORD, RecordingLog, make_config, make_manager
from tests.monitor_kit import PHASES
from tests.vault_setup import VaultTarget

EXAMPLE = Path(__file__).resolve().parent.parent / "docker" / "server.properties.example"
VOLUME = "/var/run/kafka-pki"  # where the example (and the compose file) mount the volume
PLACEHOLDER = "CHANGE-ME"

# SslPrincipalMapper's rule syntax (clients/.../security/ssl/SslPrincipalMapper.java):
# DEFAULT, or RULE:pattern/replacement/[LU], comma separated; the first rule whose pattern
# matches the whole DN wins, and its replacement is applied with Java's replaceAll.
_RULE = re.compile(r"\s*(DEFAULT|RULE:((?:\\.|[^\\/])*)/((?:\\.|[^\\/])*)/([LU]?))\s*(?:,|$)")


def principal(rules: str, dn: str) -> str | None:
    """The principal name Kafka maps ``dn`` (RFC 2253, as X500Principal.getName) to."""
    for m in _RULE.finditer(rules):
        if m.group(1) == "DEFAULT":
            return dn
        pattern, replacement, case = m.group(2), m.group(3), m.group(4)
        if re.fullmatch(pattern, dn):
            name = re.sub(pattern, re.sub(r"\$(\d)", r"\\\1", replacement), dn)
            return name.lower() if case == "L" else name.upper() if case == "U" else name
    return None


def example() -> dict[str, str]:
    return read_properties(str(EXAMPLE))


def ssl_listeners(props: dict[str, str]) -> list[str]:
    """The TLS listeners the monitor reloads: every one, the controller's included."""
    protocols = dict(item.split(":") for item in props["listener.security.protocol.map"]
                     .split(","))
    names = [item.split("://")[0] for item in props["listeners"].split(",")]
    return [name for name in names if protocols[name] in ("SSL", "SASL_SSL")]


def effective(props: dict[str, str], listener: str, key: str) -> str | None:
    """KafkaConfig.valuesWithPrefixOverride: the listener-prefixed value, else the plain one."""
    return props.get(f"listener.name.{listener.lower()}.{key}", props.get(key))


def monitor_for(props: dict[str, str], volume: Path, addresses: dict[str, str],
                kafka_volume_dir: Path) -> tuple[Reloader, RecordingLog]:
    secrets = volume.parent / "monitor-secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "store-password").write_text(PASSWORD + "\n")
    config = MonitorConfig(
        volume_dir=volume, mode="broker", keystore_type=props["ssl.keystore.type"],
        store_password_file=secrets / "store-password", kafka_volume_dir=kafka_volume_dir,
        bootstrap_servers=addresses.get("SSL"), broker_id=int(props["node.id"]),
        listeners=[f"{name}={addr}" for name, addr in addresses.items()],
        inter_broker_listener=props["inter.broker.listener.name"],
        admin_hostname_verification=False, verify_timeout=5.0, listen="")
    log = RecordingLog()
    return Reloader(config, MonitorMetrics(), log), log


def test_example_is_an_mtls_broker_with_an_internal_listener() -> None:
    props = example()
    listeners = ssl_listeners(props)
    assert listeners == ["SSL", "INTERNAL", "CONTROLLER"]
    assert props["inter.broker.listener.name"] == "INTERNAL"
    advertised = [item.split("://")[0] for item in props["advertised.listeners"].split(",")]
    assert {"SSL", "INTERNAL"} <= set(advertised)
    assert props["controller.listener.names"] == "CONTROLLER"
    for listener in ("SSL", "INTERNAL"):
        assert effective(props, listener, "ssl.client.auth") == "required", listener
    # The Raft client presents no certificate: SASL PLAIN as the super user controller.
    assert effective(props, "CONTROLLER", "ssl.client.auth") == "none"
    assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    jaas = props["listener.name.controller.plain.sasl.jaas.config"]
    assert 'username="controller"' in jaas and "user_controller=" in jaas
    assert props["password.encoder.secret"]
    assert props["process.roles"] == "broker,controller" and "zookeeper" in EXAMPLE.read_text()


def test_stores_are_the_volumes_stable_paths_the_monitor_alters(tmp_path: Path) -> None:
    props = example()
    store_type = props["ssl.keystore.type"]
    keystore, truststore = STORE_FILES[store_type]
    current = f"{VOLUME}/{layout.CURRENT}"
    addresses = {name: "127.0.0.1:1" for name in ssl_listeners(props)}
    reloader, _ = monitor_for(props, tmp_path, addresses, Path(VOLUME))
    for listener in addresses:
        assert effective(props, listener, "ssl.keystore.location") == f"{current}/{keystore}"
        assert effective(props, listener, "ssl.truststore.location") == f"{current}/{truststore}"
        altered = listener_settings(reloader.config, listener, reloader.password())
        prefix = f"listener.name.{listener.lower()}."
        assert altered, listener
        for key, value in altered.items():
            assert key.startswith(prefix), key
            assert effective(props, listener, key[len(prefix):]) == value, (
                f"the monitor sets {key}={value}; the example's static value differs")


def test_principal_mapping_makes_the_brokers_super_users() -> None:
    props = example()
    rules, supers = props["ssl.principal.mapping.rules"], props["super.users"].split(";")
    for n in (1, 2, 3):
        name = principal(rules, f"CN=kafka-{n}.kafka.test,OU=kafka,O=Example")
        assert f"User:{name}" in supers and name == f"kafka-{n}.kafka.test"
    assert principal(rules, "CN=app,O=Other") == "CN=app,O=Other", "DEFAULT keeps the DN"
    assert len(supers) == 4 and "User:controller" in supers and "User:ANONYMOUS" not in supers
    protocols = dict(item.split(":") for item in
                     props["listener.security.protocol.map"].split(","))
    assert set(protocols.values()) == {"SSL", "SASL_SSL"}, "no PLAINTEXT, so no ANONYMOUS"


def test_a_broker_configured_by_the_example_reloads_every_phase(vault: VaultTarget,
                                                                tmp_path: Path) -> None:
    volume, secrets = tmp_path / "volume", tmp_path / "secrets"
    secrets.mkdir()
    manager = make_manager(make_config(vault.url, vault.token, volume, secrets))[0]
    first = manager.reconcile(PHASES[0])
    props = {key: value.replace(VOLUME, str(volume)).replace(PLACEHOLDER, PASSWORD)
             for key, value in example().items()}
    snippet = read_properties(str(volume / layout.CURRENT / layout.BROKER_PROPERTIES))
    for key, value in snippet.items():
        assert props[key] == value, f"the example's {key} differs from the volume's snippet"
    listeners = ssl_listeners(props)
    broker = KafkaBrokerDouble(int(props["node.id"]), dict.fromkeys(listeners, 0), props,
                               props["inter.broker.listener.name"])
    with broker:
        subject = broker.served_certificate("SSL").subject.rfc4514_string()
        assert principal(props["ssl.principal.mapping.rules"], subject) == "broker-1.kafka.test"
        addresses = {name: broker.bootstrap(name) for name in listeners}
        reloader, log = monitor_for(props, volume, addresses, volume)
        assert reloader.handle(), log.events
        assert format_serial(broker.served_certificate("INTERNAL").serial_number) == first.serial
        for desired in PHASES[1:]:
            manifest = manager.reconcile(desired)
            assert reloader.handle(), log.events
            for name in listeners:
                served = format_serial(broker.served_certificate(name).serial_number)
                assert served == manifest.serial, name
        assert broker.listener_reload_count("INTERNAL") == 3
        assert broker.listener_reload_count("SSL") == 3


@pytest.mark.parametrize("key", ["ssl.keystore.password", "ssl.truststore.password"])
def test_the_placeholders_are_what_the_readme_says_to_replace(key: str) -> None:
    assert example()[key] == PLACEHOLDER
