"""The TLS monitor against a broker: reload, verify by handshake, acknowledge; refusals
predicted locally and refused by the broker alike. Tests taking ``profile`` run once per Kafka
profile of the double (``tests/doubles/kafka/profiles.py``), or once against a real broker
with the profile read from its DescribeConfigs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import os
from pathlib import Path

import jks
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from monitor.kafka import KafkaRefused, admin_config, alter_broker_configs
from monitor.reloader import write_ack
from sidecar import layout
from sidecar.manifest import Acknowledgement, Manifest, sha256_hex
from sidecar.material import format_serial
from sidecar.renewal import Desired
from sidecar.volume import Volume
from tests.doubles.kafka import PROFILES, KafkaBrokerDouble, KafkaProfile, profile_of_server
from tests.manager_kit import PASSWORD, metric
from tests.monitor_kit import PHASES, Rig, broker_rig
from tests.vault_setup import VaultTarget


@pytest.fixture(params=list(PROFILES), ids=list(PROFILES))
def profile(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> KafkaProfile:
    """The Kafka profile the rig's broker double plays (the real broker: once, as it is)."""
    chosen = PROFILES[request.param]
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        if request.param != next(iter(PROFILES)):
            pytest.skip("the real broker runs once, as the version it is")
        return chosen  # replaced by rig_profile() once the rig is up
    monkeypatch.setattr("tests.monitor_kit.KafkaBrokerDouble",
                        functools.partial(KafkaBrokerDouble, profile=chosen))
    return chosen


def rig_profile(rig: Rig, profile: KafkaProfile) -> KafkaProfile:
    """The double's profile, or the real broker's, read from its DescribeConfigs."""
    if rig.broker is not None:
        assert rig.broker.profile == profile
        return profile
    # Asked with material the broker accepts: the acknowledged generation, or, on a volume
    # reset for this test (no acknowledgement yet), the generation the broker started on.
    volume = Volume(rig.volume)
    ack = volume.read_ack()
    accepted = (rig.volume / "generations" / f"{ack.generation:08d}" if ack is not None
                else volume.current_generation_dir())
    assert accepted is not None
    client = AdminClient(admin_config(rig.addresses["SSL"], accepted, False, 10))
    resource = ConfigResource(ResourceType.BROKER, os.environ.get("KAFKA_BROKER_ID", "1"))
    configs = client.describe_configs([resource], request_timeout=10)[resource].result(15)
    return profile_of_server({k: e.value for k, e in configs.items()})


def served_serial(rig: Rig, listener: str) -> str:
    from monitor.checks import client_context
    from monitor.kafka import served_certificate
    from sidecar.material import format_serial

    ack = Volume(rig.volume).read_ack()  # ask with the material the broker accepts
    assert ack is not None
    directory = rig.volume / "generations" / f"{ack.generation:08d}"
    host, port = rig.addresses[listener].rsplit(":", 1)
    return format_serial(served_certificate(host, int(port),
                                            client_context(directory)).serial_number)


# A real broker serves the store type it was started on: only that variant applies to it.
STORE_TYPES = ([os.environ.get("KAFKA_STORE_TYPE", "PKCS12")]
               if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else ["PKCS12", "JKS", "PEM"])


@pytest.mark.parametrize("store_type", STORE_TYPES)
def test_reload_through_all_phases(vault: VaultTarget, tmp_path: Path, store_type: str) -> None:
    with broker_rig(vault, tmp_path, store_type) as rig:
        reloader, metrics, log = rig.monitor()
        assert reloader.handle(), log.events  # already served: verified without a reload
        assert not log.named("reload_requested")
        for desired in PHASES[1:]:
            manifest = rig.install(desired)
            assert reloader.handle(), log.events
            for listener in rig.addresses:
                assert served_serial(rig, listener) == manifest.serial
            ack = Volume(rig.volume).read_ack()
            assert ack is not None and ack.generation == manifest.generation
            assert ack.serial == manifest.serial and ack.verified_by == "handshake"
        assert len(log.named("reload_requested")) == 3
        assert metric(metrics, "tls_monitor_reloads_total", result="ok") == 4
        assert metric(metrics, "tls_monitor_served_matches_disk") == 1
        if rig.broker is not None:
            assert rig.broker.listener_reload_count("INTERNAL") == 3


def refuse_case(vault: VaultTarget, tmp_path: Path, change: dict[str, object],
                desired: Desired, reason: str, profile: KafkaProfile) -> None:
    with broker_rig(vault, tmp_path) as rig:
        profile = rig_profile(rig, profile)
        reloader, metrics, log = rig.monitor()
        assert reloader.handle()
        before = {n: served_serial(rig, n) for n in rig.addresses}
        rig.manager.issuer.identity = dataclasses.replace(rig.manager.issuer.identity,
                                                          **change)
        refused = rig.install(desired)
        alters_before = rig.broker.requests.count((44, 1)) if rig.broker else 0
        assert not reloader.handle()
        failed = log.named("reload_failed")
        assert failed and failed[-1]["result"] == "refused_predicted"
        assert failed[-1]["reason"] == reason, failed[-1]
        assert metric(metrics, "tls_monitor_reloads_total", result="refused_predicted") == 1
        assert metric(metrics, "tls_monitor_served_matches_disk") == 0, "disk is not served"
        if rig.broker is not None:
            assert rig.broker.requests.count((44, 1)) == alters_before, "nothing was sent"
        assert {n: served_serial(rig, n) for n in rig.addresses} == before
        ack = Volume(rig.volume).read_ack()
        assert ack is not None and ack.generation == 1, "the refused generation is not acked"
        # And the broker itself, asked anyway (a new path, so that KRaft validates before
        # answering rather than after, see the double's notes): 2.6+ refuses, whatever its
        # words; before 2.6 SslFactory compares the new keystore with the old *path* read
        # again, which is current/, the refused generation itself: it accepts a DN change or
        # a dropped SAN, and the monitor's prediction is the only guard.
        directory = Volume(rig.volume).current_generation_dir()
        assert directory is not None
        listener = "internal" if reason == "handshake" else "ssl"
        accepted = rig.volume / "generations" / f"{ack.generation:08d}"
        settings = {f"listener.name.{listener}.ssl.keystore.location":
                    str(directory / layout.KEYSTORE_P12)}
        config = admin_config(rig.addresses["SSL"], accepted, False, 10)
        if reason != "handshake" and profile.accepts_same_path_identity_change():
            if rig.broker is not None:  # (a real broker is not left serving the bad identity)
                alter_broker_configs(config, 1, settings, 10)
                assert rig.broker.wait_applied()
                served = rig.broker.served_certificate("SSL").serial_number
                assert format_serial(served) == refused.serial, "2.4 took it"
            return
        with pytest.raises(KafkaRefused) as info:
            alter_broker_configs(config, 1, settings, 10)
        assert info.value.code == 42
        assert info.value.kind == "config_refused"


def test_dn_change_is_predicted_and_refused(vault: VaultTarget, tmp_path: Path,
                                            profile: KafkaProfile) -> None:
    """On every version; on 2.4 the broker would have accepted it (see refuse_case)."""
    refuse_case(vault, tmp_path, {"subject": "CN=broker-9.kafka.test,OU=kafka,O=Example"},
                PHASES[0], "dn_changed", profile)


def test_dropped_san_is_predicted_and_refused(vault: VaultTarget, tmp_path: Path,
                                              profile: KafkaProfile) -> None:
    """On every version; on 2.4 the broker would have accepted it (see refuse_case)."""
    refuse_case(vault, tmp_path, {"dns_sans": ("broker-1.kafka.test",)}, PHASES[0],
                "san_dropped", profile)


def test_signer_switch_without_trust_is_predicted_and_refused(
        vault: VaultTarget, tmp_path: Path, profile: KafkaProfile) -> None:
    # phase 0 -> phase 2: signed by B while the served truststore trusts only A
    refuse_case(vault, tmp_path, {}, PHASES[2], "handshake", profile)


def test_rotation_holds_on_every_version(vault: VaultTarget, tmp_path: Path,
                                         profile: KafkaProfile) -> None:
    """A→B through the four phases, each reloaded and verified, on each profile."""
    with broker_rig(vault, tmp_path) as rig:
        rig_profile(rig, profile)
        reloader, _, log = rig.monitor()
        assert reloader.handle(), log.events
        for desired in PHASES[1:]:
            manifest = rig.install(desired)
            assert reloader.handle(), log.events
            for listener in rig.addresses:
                assert served_serial(rig, listener) == manifest.serial
        assert not log.named("reload_failed"), log.named("reload_failed")


def test_verification_catches_a_broker_that_keeps_the_old_certificate(
        vault: VaultTarget, tmp_path: Path) -> None:
    with broker_rig(vault, tmp_path) as rig:
        broker = rig.require_double()
        # long enough for the double's apply delay and inter-broker validation (~0.8 s)
        reloader, metrics, log = rig.monitor(verify_timeout=3.0)
        assert reloader.handle()
        broker.accept_but_keep_old(True)
        rig.install(PHASES[1])
        assert not reloader.handle()
        failed = log.named("reload_failed")[-1]
        assert failed["result"] == "verify_failed" and "expected" in failed["error"]
        assert metric(metrics, "tls_monitor_served_matches_disk") == 0
        assert Volume(rig.volume).read_ack().generation == 1
        broker.accept_but_keep_old(False)
        assert reloader.handle(), "retried: reloads and verifies once the broker behaves"
        assert Volume(rig.volume).read_ack().generation == 2


def test_kafka_refusal_is_reported_with_its_code(vault: VaultTarget, tmp_path: Path,
                                                 profile: KafkaProfile) -> None:
    """Each version words a refusal its own way; the monitor classifies it by code alone."""
    with broker_rig(vault, tmp_path) as rig:
        broker = rig.require_double()
        reloader, metrics, log = rig.monitor()
        assert reloader.handle()
        words = ("Validation of dynamic config update of SSLFactory failed: "
                 f"org.apache.kafka.common.config.ConfigException: "
                 f"{profile.keystore_refusal('dn')}")
        broker.refuse_next_reload(profile.wrap("1", words))
        rig.install(PHASES[1])
        assert not reloader.handle()
        failed = log.named("reload_failed")[-1]
        assert failed["result"] == "refused_by_kafka" and failed["kafka_error_code"] == 42
        assert failed["refusal"] == "config_refused"
        assert words in failed["error"]
        assert metric(metrics, "tls_monitor_reloads_total", result="refused_by_kafka") == 1
        assert metric(metrics, "tls_monitor_served_matches_disk") == 0
        assert reloader.handle(), "a Kafka refusal is retried (it may be transient)"
        assert metric(metrics, "tls_monitor_served_matches_disk") == 1
        assert Volume(rig.volume).read_ack().generation == 2


def test_partial_generation_is_never_applied(vault: VaultTarget, tmp_path: Path) -> None:
    with broker_rig(vault, tmp_path) as rig:
        reloader, metrics, log = rig.monitor()
        assert reloader.handle()
        good = Volume(rig.volume).current_generation_dir()
        assert good is not None
        partial = rig.volume / "generations" / "00000099"
        partial.mkdir()
        for name in (layout.KEYSTORE_P12, layout.CERT_PEM):  # no manifest: half written
            (partial / name).write_bytes((good / name).read_bytes())
        link = rig.volume / "current"
        link.unlink()
        link.symlink_to("generations/00000099")
        assert not reloader.handle()
        assert log.named("reload_failed")[-1]["result"] == "incomplete_generation"
        assert metric(metrics, "tls_monitor_reloads_total", result="incomplete_generation") == 1
        assert Volume(rig.volume).read_ack().generation == 1


def test_restarted_monitor_sets_the_gauges_from_what_is_served(vault: VaultTarget,
                                                                tmp_path: Path) -> None:
    with broker_rig(vault, tmp_path) as rig:
        first, _, _ = rig.monitor()
        assert first.handle()
        rig.install(PHASES[1])
        assert first.handle()
        reloader, metrics, log = rig.monitor()  # a restart: the ack is up to date
        assert reloader.handle(), log.events
        assert not log.named("reload_requested")
        assert metric(metrics, "tls_monitor_served_matches_disk") == 1
        assert metric(metrics, "tls_monitor_applied_generation") == 2
        assert not math.isnan(metric(metrics, "tls_monitor_seconds_since_last_verified"))
        # An ack the broker does not back (it still serves generation 2)
        manifest = rig.install(PHASES[2])
        write_ack(rig.volume, Acknowledgement(generation=manifest.generation,
                                              serial=manifest.serial,
                                              applied_at="2020-01-01T00:00:00+00:00",
                                              verified_by="handshake"))
        stale, metrics, log = rig.monitor()
        assert not stale.handle()
        assert log.named("served_mismatch")
        assert metric(metrics, "tls_monitor_served_matches_disk") == 0
        assert metric(metrics, "tls_monitor_last_verified_timestamp_seconds") == \
            dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp()
        assert stale.handle(), log.events  # the next pass applies it again
        assert log.named("reload_verified")[-1]["generation"] == manifest.generation
        assert metric(metrics, "tls_monitor_served_matches_disk") == 1


def test_entry_count_is_compared_with_the_served_keystore(vault: VaultTarget,
                                                          tmp_path: Path) -> None:
    with broker_rig(vault, tmp_path, "JKS") as rig:
        if rig.store_type != "JKS":
            pytest.skip("needs a broker on JKS stores")
        reloader, _, log = rig.monitor()
        assert reloader.handle()
        served = Volume(rig.volume).current_generation_dir()
        assert served is not None
        add_key_entry(served)  # what the broker loaded: two entries; the next has one
        rig.install(PHASES[1])
        assert not reloader.handle()
        failed = log.named("reload_failed")[-1]
        assert failed["result"] == "refused_predicted", failed
        assert failed["reason"] == "entry_count" and "(2 -> 1)" in failed["error"]


def add_key_entry(directory: Path) -> None:
    """Give a generation's JKS keystore a second private key entry (manifest updated)."""
    path = directory / layout.KEYSTORE_JKS
    store = jks.KeyStore.loads(path.read_bytes(), PASSWORD)
    entry = next(iter(store.private_keys.values()))
    twin = jks.PrivateKeyEntry.new("twin", [der for _, der in entry.cert_chain],
                                   entry.pkey_pkcs8, "pkcs8")
    for item in (entry, twin):
        item.encrypt(PASSWORD)
    path.write_bytes(bytes(jks.KeyStore.new("jks", [entry, twin]).saves(PASSWORD)))
    manifest = Manifest.from_json((directory / layout.MANIFEST).read_bytes())
    files = {**manifest.files, layout.KEYSTORE_JKS: sha256_hex(path.read_bytes())}
    (directory / layout.MANIFEST).write_bytes(dataclasses.replace(manifest, files=files).to_json())


def test_types_and_passwords_are_sent_once_locations_every_time(vault: VaultTarget,
                                                                tmp_path: Path) -> None:
    """A SET leaves the listener's other settings as the broker holds them: after the first
    alter only the store locations (what makes Kafka re-read the files) are sent, until an
    alter fails and the broker's view is unknown again."""
    with broker_rig(vault, tmp_path) as rig:
        broker = rig.require_double()
        reloader, _, log = rig.monitor(alter_passwords=True)
        assert reloader.handle()
        location = {"ssl.keystore.location", "ssl.truststore.location"}
        everything = location | {"ssl.keystore.type", "ssl.truststore.type",
                                 "ssl.keystore.password", "ssl.key.password",
                                 "ssl.truststore.password"}
        sent = []
        for desired in PHASES[1:3]:
            rig.install(desired)
            assert reloader.handle(), log.events
            sent.append(log.named("reload_requested")[-1])
        assert [set(e["settings"]) for e in sent] == [everything, location]
        assert [e["entries"] for e in sent] == [14, 4]
        assert broker.dynamic_config["listener.name.internal.ssl.key.password"] == PASSWORD
        broker.refuse_next_reload("Simulated refusal")
        rig.install(PHASES[3])
        assert not reloader.handle()
        assert reloader.handle()
        assert set(log.named("reload_requested")[-1]["settings"]) == everything


def test_admin_client_is_kept_until_a_transport_error(vault: VaultTarget,
                                                      tmp_path: Path) -> None:
    from monitor.kafka import BrokerAdmin

    with broker_rig(vault, tmp_path) as rig:
        broker = rig.require_double()
        gens = sorted((rig.volume / "generations").glob("[0-9]*"))
        admin = BrokerAdmin(rig.addresses["SSL"], 1, False, 2.0)
        client = admin.client(gens[-1])
        assert admin.client(gens[-1]) is client, "kept for the same material"
        keystore = str(rig.volume / layout.CURRENT / layout.KEYSTORE_P12)
        settings = {"listener.name.ssl.ssl.keystore.location": keystore}
        broker.refuse_next_reload("Simulated refusal")
        with pytest.raises(KafkaRefused):
            admin.alter(gens[-1], settings)
        assert admin.client(gens[-1]) is client, "the broker's answer: the client is fine"
        admin.alter(gens[-1], settings)
        broker.stop()
        with pytest.raises(KafkaRefused) as info:
            admin.alter(gens[-1], settings)
        assert info.value.code is None or info.value.code < 0
        assert admin.client(gens[-1]) is not client, "a transport failure: reconnect"
