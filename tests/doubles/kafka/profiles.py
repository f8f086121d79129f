"""Kafka versions the broker double plays: what differs between them, each rule with its source.

A profile is a Kafka version and a metadata mode. What it decides, read from apache/kafka:

* **Where a refusal's text comes from.** ZooKeeper mode (``AdminManager.alterBrokerConfigs``,
  2.4; ``ZkAdminManager`` later) wraps the ConfigException as ``Invalid config value for
  resource ConfigResource(type=BROKER, name='<id>'): <message>``; KRaft
  (``ConfigAdminManager`` on the broker, ``ControllerApis``/``ConfigurationControlManager``
  on the controller) answers with the message alone. Both answer INVALID_REQUEST (42).
* **The keystore comparison** (``SslFactory.CertificateEntries``). Before 3.7 the entries
  must be *equal* (DN and SAN set) and the refusal is one message, "Keystore
  DistinguishedName or SubjectAltNames do not match"; from 3.7 (KIP-978,
  ``ensureCompatibleDNs`` / ``ensureCompatibleSANs``) DN and SANs are checked apart, SANs
  may grow, each has its own message, and ``ssl.allow.dn.changes`` /
  ``ssl.allow.san.changes`` exist.
* **What the new keystore is compared with.** Before 2.6 ``SslFactory`` compared
  ``CertificateEntries.create(this.keystore.load())``: ``SecurityStore.load()`` reads the *old
  path* from disk again. With a stable path whose content was replaced (the product's
  ``current/`` symlink) that is the new keystore itself, so a DN change or a dropped SAN
  passes. From 2.6 (KIP-519, ``DefaultSslEngineFactory``) the loaded ``KeyStore`` is kept in
  memory and the comparison is with what the listener serves.
* **How a refused inter-broker signer switch reads.** ``SslEngineValidator`` (2.4:
  ``SSLConfigValidatorEngine``) runs old-server/new-client first. On the field's 2.4 broker
  (Java, TLS 1.2) the new client finds no certificate issued by a CA the old server names and
  sends none: ``javax.net.ssl.SSLHandshakeException: Empty client certificate chain``. Newer
  profiles keep the double's PKIX text (not checked against a real broker).
* **The apply delay**: ``timing.BrokerTiming`` for both modes; the mode decides when a
  same-path reload runs (ZooKeeper: in the request; KRaft: when the record is replayed).

What does *not* differ: DescribeConfigs marks listener-prefixed SSL settings read-only in 2.4
and in trunk alike (see ``configs.read_only``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from tests.doubles.kafka.timing import BrokerTiming

Mode = Literal["kraft", "zk"]


@dataclass(frozen=True)
class KafkaProfile:
    """One Kafka version in one metadata mode, and the rules of it the double follows."""

    version: tuple[int, int]
    mode: Mode
    timing: BrokerTiming = field(default_factory=BrokerTiming)

    def __post_init__(self) -> None:
        if self.mode == "zk" and self.version >= (4, 0):
            raise ValueError(f"Kafka {self.label} has no ZooKeeper mode")
        if self.mode == "kraft" and self.version < (2, 8):
            raise ValueError(f"Kafka {self.label} has no KRaft mode")

    @property
    def label(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def name(self) -> str:
        """``2.4-zk``, ``4.1-kraft``: a test id."""
        return f"{self.label}-{self.mode}"

    @property
    def combined_keystore_message(self) -> bool:
        """Before KIP-978 (3.7): DN and SANs must be equal, one message for both."""
        return self.version < (3, 7)

    @property
    def old_keystore_from_disk(self) -> bool:
        """Before DefaultSslEngineFactory (2.6): the old keystore is its path read again."""
        return self.version < (2, 6)

    @property
    def empty_client_chain(self) -> bool:
        """A refused signer switch reads "Empty client certificate chain" (seen on 2.4.1)."""
        return self.version < (2, 6)

    def wrap(self, resource: str, message: str) -> str:
        """The refusal text as the admin client receives it."""
        if self.mode == "zk":
            return (f"Invalid config value for resource ConfigResource(type=BROKER, "
                    f"name='{resource}'): {message}")
        return message

    def keystore_refusal(self, kind: Literal["dn", "san"]) -> str:
        """The part of a DN-change or dropped-SAN refusal a test can rely on."""
        if self.combined_keystore_message:
            return "Keystore DistinguishedName or SubjectAltNames do not match"
        return ("Keystore DistinguishedName does not match" if kind == "dn"
                else "Keystore SubjectAltNames do not match")

    def accepts_same_path_identity_change(self) -> bool:
        """A DN change or dropped SAN written over the served path is accepted."""
        return self.old_keystore_from_disk


#: The versions the project supports, oldest first; the last is the double's default.
PROFILES: dict[str, KafkaProfile] = {
    p.name: p
    for p in (
        KafkaProfile((2, 4), "zk"),  # the field broker (2.4.1)
        KafkaProfile((3, 9), "kraft"),  # the last 3.x
        KafkaProfile((4, 1), "kraft"),  # 4.x: KRaft only
    )
}
NEWEST = list(PROFILES.values())[-1]


def profile_for(version: tuple[int, int] | None = None, mode: Mode | None = None) -> KafkaProfile:
    """A profile for a version and/or mode; unset parts from the newest profile that fits
    (``mode="zk"`` alone: 3.9, the newest Kafka with ZooKeeper)."""
    if version is None:
        version = NEWEST.version if mode != "zk" else (3, 9)
    if mode is None:
        mode = "kraft" if version >= (3, 0) else "zk"
    return KafkaProfile(version, mode)


def profile_of_server(configs: Mapping[str, str | None]) -> KafkaProfile:
    """The profile matching a real broker, from its DescribeConfigs (every broker config,
    defaults included): ``process.roles`` set means KRaft; ``ssl.allow.dn.changes`` exists
    from 3.7 (KIP-978), ``ssl.engine.factory.class`` from 2.6 (KIP-519). The version is the
    oldest with the same rules (2.4, 3.6 or 3.9), which is all the double's rules depend on."""
    kraft = bool(configs.get("process.roles"))
    if "ssl.allow.dn.changes" in configs:
        version = (3, 9)
    elif "ssl.engine.factory.class" in configs:
        version = (3, 6)
    else:
        version = (2, 4)
    return KafkaProfile(version, "kraft" if kraft else "zk")
