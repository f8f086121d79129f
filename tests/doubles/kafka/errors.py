"""Java exceptions as Kafka renders them (``Throwable.toString``: ``<class>: <message>``)."""

from __future__ import annotations

CONFIG_EXCEPTION = "org.apache.kafka.common.config.ConfigException"
KAFKA_EXCEPTION = "org.apache.kafka.common.KafkaException"
INVALID_CONFIGURATION = "org.apache.kafka.common.errors.InvalidConfigurationException"
SSL_HANDSHAKE_EXCEPTION = "javax.net.ssl.SSLHandshakeException"
PKIX_FAILURE = (
    "PKIX path building failed: sun.security.provider.certpath.SunCertPathBuilderException: "
    "unable to find valid certification path to requested target"
)


class JavaError(Exception):
    """An exception as Kafka would print it: ``<java class>: <message>``."""

    def __init__(self, java_class: str, message: str) -> None:
        super().__init__(f"{java_class}: {message}")
        self.java_class = java_class
        self.message = message

