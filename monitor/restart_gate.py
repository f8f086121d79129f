"""When a KRaft broker must restart for its Raft client, and when it may.

The controller listener's inbound side reloads like any listener. Its outbound side, the Raft
client each node uses to reach the voters, is built once at start and never reloads
(KafkaRaftManager.buildNetworkClient; KAFKA-20025, fixed on Kafka's trunk by PR 23288). With
the controller listener on SASL_SSL and ``ssl.client.auth=none`` the Raft client presents no
certificate, so all it needs is to trust what the voters serve: a restart is needed only when
the truststore gains a root the running process did not load. That is once per broker per
root rotation (phase 1, before any peer presents the new root: the rotation barrier waits for
the broker's acknowledgement), and never for a renewal.

A restart takes a voter away for a while, so restarts of one cluster never overlap: the
monitor restarts only while its auth manager holds the cluster's restart lock (first in a
Consul queue of session-bound entries, ``sidecar.restart_lock``), and only while Kafka's
Metadata shows every broker alive (a broker that crashed on its own is not restarted beside).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

#: raft_restart values: restart when the trust set gains a root, or never (a Kafka release
#: whose Raft client reloads, one with KAFKA-20025 fixed).
RAFT_RESTART = ("new-roots", "never")


def root_fingerprints(trusted: Iterable[x509.Certificate]) -> frozenset[str]:
    """SHA-256 (hex) of each trusted certificate: what a truststore makes a client trust."""
    return frozenset(hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()
                     for c in trusted)


def raft_restart_needed(loaded: frozenset[str] | None, wanted: frozenset[str]) -> bool:
    """The Raft client must be restarted to trust every root in ``wanted``. ``loaded`` is what
    the running process trusts, None if not known (then a restart is the safe answer)."""
    return loaded is None or not wanted <= loaded


def cluster_whole(alive: Collection[int], cluster_size: int) -> bool:
    """Every broker of the cluster is alive: one more may go down for a restart."""
    return len(set(alive)) >= cluster_size


def describe_missing(alive: Collection[int], cluster_size: int) -> str:
    """One line for the logs: how many brokers the cluster shows, which ones."""
    ids = ", ".join(str(i) for i in sorted(set(alive))) or "none"
    return f"the cluster shows {len(set(alive))} of {cluster_size} brokers alive ({ids})"
