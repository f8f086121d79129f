"""Broker config names and which of them are dynamic, read-only or sensitive (SslConfigs,
BrokerSecurityConfigs, DynamicBrokerConfig)."""

from __future__ import annotations

import re

KEYSTORE_TYPE = "ssl.keystore.type"
KEYSTORE_LOCATION = "ssl.keystore.location"
KEYSTORE_PASSWORD = "ssl.keystore.password"
KEY_PASSWORD = "ssl.key.password"
KEYSTORE_KEY = "ssl.keystore.key"
KEYSTORE_CHAIN = "ssl.keystore.certificate.chain"
TRUSTSTORE_TYPE = "ssl.truststore.type"
TRUSTSTORE_LOCATION = "ssl.truststore.location"
TRUSTSTORE_PASSWORD = "ssl.truststore.password"
TRUSTSTORE_CERTIFICATES = "ssl.truststore.certificates"
ALLOW_DN_CHANGES = "ssl.allow.dn.changes"
ALLOW_SAN_CHANGES = "ssl.allow.san.changes"

#: SslConfigs.RECONFIGURABLE_CONFIGS (Kafka 3.x/4.x, KIP-651 PEM configs included).
RECONFIGURABLE = frozenset(
    {
        KEYSTORE_TYPE,
        KEYSTORE_LOCATION,
        KEYSTORE_PASSWORD,
        KEY_PASSWORD,
        KEYSTORE_KEY,
        KEYSTORE_CHAIN,
        TRUSTSTORE_TYPE,
        TRUSTSTORE_LOCATION,
        TRUSTSTORE_PASSWORD,
        TRUSTSTORE_CERTIFICATES,
    }
)
#: Listener SSL settings the factory reads; a change to one outside RECONFIGURABLE is refused.
LISTENER_SSL = RECONFIGURABLE | {
    ALLOW_DN_CHANGES,
    ALLOW_SAN_CHANGES,
    "ssl.client.auth",
    "ssl.protocol",
    "ssl.enabled.protocols",
    "ssl.cipher.suites",
    "ssl.endpoint.identification.algorithm",
}
PASSWORDS = frozenset(
    {
        KEYSTORE_PASSWORD,
        KEY_PASSWORD,
        TRUSTSTORE_PASSWORD,
        KEYSTORE_KEY,
        KEYSTORE_CHAIN,
        TRUSTSTORE_CERTIFICATES,
        "password.encoder.secret",
        "password.encoder.old.secret",
    }
)
_LISTENER_KEY = re.compile(r"listener\.name\.([^.]*)\.(.*)")
#: DynamicBrokerConfig.AllDynamicConfigs, narrowed to the names this double reports: the
#: SSL ones (DynamicSecurityConfigs) and DynamicListenerConfig.ReconfigurableConfigs.
ALL_DYNAMIC = RECONFIGURABLE | {"listeners", "advertised.listeners",
                                "listener.security.protocol.map"}


def read_only(name: str) -> bool:
    """DescribeConfigs' read-only flag of a broker config: ``!AllDynamicConfigs.contains(name)``
    (``AdminManager.createBrokerConfigEntry`` in 2.4, ``ConfigHelper`` later), the full name
    looked up. A listener-prefixed SSL setting is therefore reported read-only although it is
    the only form that may be altered (seen on 2.4.1 and trunk alike)."""
    return name not in ALL_DYNAMIC


def _base_name(name: str) -> str:
    m = _LISTENER_KEY.fullmatch(name)
    return m.group(2) if m else name


def _scala_set(names: list[str]) -> str:
    return ("Set(" if len(names) <= 4 else "HashSet(") + ", ".join(sorted(names)) + ")"
