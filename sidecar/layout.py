"""The shared volume's layout: the contract between the auth manager and the TLS monitor.

    <volume>/current -> generations/00000042     (symlink, swapped atomically)
    <volume>/generations/00000042/<files>        (complete generation, manifest written last)
    <volume>/monitor-ack.json                    (written by the monitor)
    <volume>/restart-request.json                (the monitor: its broker must restart)
    <volume>/restart-grant.json                  (the auth manager: it holds the restart lock)

Readers resolve ``current`` once and read every file from the resolved directory, so they
never mix two generations. Kafka is pointed at ``current/<file>``: a new generation is a new
file at that path with a new modification time, which is what Kafka needs to reload.
"""

from __future__ import annotations

from pathlib import Path

CURRENT = "current"
GENERATIONS = "generations"
ACK = "monitor-ack.json"
RESTART_REQUEST = "restart-request.json"
RESTART_GRANT = "restart-grant.json"

CERT_PEM = "cert.pem"
CHAIN_PEM = "chain.pem"
FULLCHAIN_PEM = "fullchain.pem"
KEY_PEM = "key.pem"
CA_BUNDLE_PEM = "ca-bundle.pem"
KEYSTORE_PEM = "keystore.pem"
KEYSTORE_P12 = "keystore.p12"
TRUSTSTORE_P12 = "truststore.p12"
KEYSTORE_JKS = "keystore.jks"
TRUSTSTORE_JKS = "truststore.jks"
BROKER_PROPERTIES = "broker.properties"
CLIENT_PROPERTIES = "client.properties"
CONNECT_PROPERTIES = "connect.properties"
LIBRDKAFKA_PROPERTIES = "librdkafka.properties"
MANIFEST = "manifest.json"

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def generation_dir_name(generation: int) -> str:
    return f"{generation:08d}"


def generation_dir(volume: Path, generation: int) -> Path:
    """Where generation ``generation`` lives on the volume."""
    return volume / GENERATIONS / generation_dir_name(generation)


def current_link(volume: Path) -> Path:
    return volume / CURRENT


def generations_dir(volume: Path) -> Path:
    return volume / GENERATIONS


def ack_path(volume: Path) -> Path:
    return volume / ACK


def restart_request_path(volume: Path) -> Path:
    return volume / RESTART_REQUEST


def restart_grant_path(volume: Path) -> Path:
    return volume / RESTART_GRANT
