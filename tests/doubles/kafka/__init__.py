"""A Kafka broker double: TLS listeners, the admin wire protocol, KIP-226 keystore reloads.

One module a job, like Kafka's own ``SslFactory`` / ``DefaultSslEngineFactory`` /
``CertificateEntries`` split:

* ``wire`` -- the codec: request bytes in, response frames out (ApiVersions, Metadata,
  DescribeConfigs, IncrementalAlterConfigs; classic and flexible encodings).
* ``broker`` -- what the broker decides: static and dynamic configs, DynamicBrokerConfig's
  validation, when an accepted change is applied, DescribeConfigs' view.
* ``ssl_factory`` -- SslFactory's acceptance rules: DefaultSslEngineFactory,
  CertificateEntries, SslEngineValidator, createNewSslEngineFactory.
* ``stores`` -- PKCS12 / JKS / PEM stores as Java loads them; ``pkcs12`` the PKCS#12 bag
  attributes Java reads (pyasn1-modules' structures).
* ``configs`` and ``errors`` -- Kafka's config names and Java's exception texts.
* ``profiles`` -- what differs between Kafka versions; ``timing`` -- what a reload costs and
  when it is applied.
* ``server`` -- ``KafkaBrokerDouble``: sockets and threads around a ``broker.Broker``.
* ``raft`` -- the KRaft Raft client: built at start, never reloaded (KAFKA-20025).
* ``cli`` -- standalone: ``python -m tests.doubles.kafka --broker-id 1 --config
  server.properties``.
"""

from tests.doubles.kafka.errors import JavaError
from tests.doubles.kafka.profiles import PROFILES, KafkaProfile, profile_for, profile_of_server
from tests.doubles.kafka.raft import RaftUnreachable
from tests.doubles.kafka.server import KafkaBrokerDouble
from tests.doubles.kafka.ssl_factory import tls_exchange
from tests.doubles.kafka.timing import INSTANT, BrokerTiming
from tests.doubles.kafka.wire import AlterOp

__all__ = [
    "INSTANT",
    "PROFILES",
    "AlterOp",
    "BrokerTiming",
    "JavaError",
    "KafkaBrokerDouble",
    "KafkaProfile",
    "RaftUnreachable",
    "profile_for",
    "profile_of_server",
    "tls_exchange",
]
