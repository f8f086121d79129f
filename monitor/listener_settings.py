"""What the monitor asks a broker to SET for a listener, and which of it needs sending again.

An IncrementalAlterConfigs SET changes only the named settings: the broker keeps every other
dynamic setting it holds (ZooKeeper's per-broker znode, KRaft's config records), and
``DynamicBrokerConfig`` builds each listener's SSL configs from the static ones overridden by
all of them. So a SET of only ``listener.name.<l>.ssl.keystore.location`` leaves that
listener's passwords, store types and truststore as they were; ``SslFactory`` copies the new
values over its old configs (``createNewSslEngineFactory``) and rebuilds from the files.

The store locations are sent on every reload even though they never change (they point at
``current/``): a request that names a listener's store files is what makes Kafka re-read
them (``reloadUpdatedFilesWithoutConfigChange``, when their modification time changed). Types
and passwords are sent the first time, and again only when their value changes or when the
broker's view is no longer known (an alter that failed, a reload that did not show).
"""

from __future__ import annotations

from pathlib import Path

from monitor.config import MonitorConfig
from monitor.stores import STORE_FILES
from sidecar import layout

#: Sent on every reload: naming the store files is what makes Kafka reload them.
ALWAYS = ("ssl.keystore.location", "ssl.truststore.location")
PASSWORDS = ("ssl.keystore.password", "ssl.key.password", "ssl.truststore.password")


def listener_settings(config: MonitorConfig, listener: str,
                      password: str | None) -> dict[str, str]:
    """Every setting the monitor wants a listener to hold, listener-prefixed."""
    kafka_current = (config.kafka_volume_dir or config.volume_dir) / layout.CURRENT
    keystore, truststore = STORE_FILES[config.keystore_type]
    prefix = f"listener.name.{listener.lower()}."
    out = {prefix + "ssl.keystore.type": config.keystore_type,
           prefix + "ssl.keystore.location": str(Path(kafka_current) / keystore),
           prefix + "ssl.truststore.type": config.keystore_type,
           prefix + "ssl.truststore.location": str(Path(kafka_current) / truststore)}
    if config.alter_passwords and config.keystore_type != "PEM" and password:
        for name in PASSWORDS:
            out[prefix + name] = password
    return out


class SentSettings:
    """The dynamic settings this monitor has seen the broker accept and apply."""

    def __init__(self) -> None:
        self._held: dict[str, str] = {}

    def to_send(self, wanted: dict[str, str]) -> dict[str, str]:
        """The store locations, and whatever the broker is not known to hold already."""
        return {name: value for name, value in wanted.items()
                if name.endswith(ALWAYS) or self._held.get(name) != value}

    def applied(self, sent: dict[str, str]) -> None:
        """The broker serves what ``sent`` asked for (verified by handshake)."""
        self._held.update(sent)

    def forget(self) -> None:
        """The broker's view is unknown again (a failed alter or verification): send all."""
        self._held.clear()
