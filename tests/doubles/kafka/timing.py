"""What a Kafka broker spends on a dynamic SSL update, and when it applies it (broker double).

The structure is Kafka's own, read from apache/kafka:

* ``SocketServer.scala`` (``Processor.createSelector``): every network processor builds its own
  ``SslChannelBuilder`` and registers it with ``DynamicBrokerConfig.addReconfigurable``, so a
  listener holds ``num.network.threads`` (default 3) ``SslFactory`` instances, and each one
  validates and reconfigures on its own ("Reconfiguring ... SslChannelBuilder" once per
  processor in server.log).
* ``SslFactory.validateReconfiguration`` and ``SslFactory.reconfigure`` each call
  ``createNewSslEngineFactory``: a new ``DefaultSslEngineFactory`` (keystore and truststore
  loaded from disk, key and trust managers built), ``CertificateEntries.ensureCompatible``, and
  on the inter-broker listener ``SslEngineValidator.validate``: two handshakes (old server with
  new client, new server with old client).
* ``DynamicBrokerConfig.processReconfigurable`` runs ``validateReconfiguration`` then
  ``reconfigure``: applying a change builds every factory twice. The request
  (``ZkAdminManager.alterBrokerConfigs`` or ``ConfigAdminManager``, then
  ``DynamicBrokerConfig.validate``) validates the listeners whose configs changed, once per
  processor. In ZooKeeper mode it then runs ``reloadUpdatedFilesWithoutConfigChange``, which
  *applies* (two builds per processor) every listener whose configs did not change but whose
  store files did, whatever listener the request named.
* Changed configs are applied after the answer: in ZooKeeper mode when the broker processes the
  config-change notification (``DynamicConfigManager``, then
  ``DynamicBrokerConfig.updateBrokerConfig``), under KRaft when the broker replays the config
  record (``DynamicConfigPublisher``, which also reloads modified files then).

The durations are fitted to a real Kafka 2.4.1 broker (ZooKeeper mode, idle, SSL and INTERNAL
listeners; figures in docs/benchmarks.md): a SET of one ordinary listener's keystore location
answered in 16-25 ms with a warm AdminClient (3 to 6 factory builds: ~3 ms each); the monitor's
two-listener alter took 0.55-0.60 s, which leaves ~40 ms for each of the 12 validator
handshakes of the inter-broker listener's 6 builds; the change showed 100-300 ms after the
answer (FIELD-NOTES, second round).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BrokerTiming:
    """Costs and delays of one broker double; ``INSTANT`` turns them all off."""

    network_threads: int = 3  # num.network.threads: SslFactory instances per listener
    factory_build: float = 0.003  # one DefaultSslEngineFactory: both stores loaded
    validator_handshake: float = 0.040  # one SslEngineValidator handshake (two per build)
    apply_delay: tuple[float, float] = (0.1, 0.3)  # answer -> config notification processed

    def build(self, inter_broker: bool) -> float:
        """One ``createNewSslEngineFactory`` on one SslFactory."""
        return self.factory_build + (2 * self.validator_handshake if inter_broker else 0.0)

    def validate(self, inter_broker: bool) -> float:
        """``validateReconfiguration`` of one listener (every processor's factory)."""
        return self.network_threads * self.build(inter_broker)

    def apply(self, inter_broker: bool) -> float:
        """``processReconfigurable`` of one listener: validate, then reconfigure."""
        return 2 * self.validate(inter_broker)

    def delay(self, rng: random.Random) -> float:
        """Seconds from a successful answer to the broker applying the change."""
        low, high = self.apply_delay
        return rng.uniform(low, high) if high > 0 else 0.0


#: No costs, applied before the answer (the double's behaviour before this model existed).
INSTANT = BrokerTiming(network_threads=1, factory_build=0.0, validator_handshake=0.0,
                       apply_delay=(0.0, 0.0))
