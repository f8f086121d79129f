"""When a broker may restart for a listener Kafka cannot reload (the KRaft controller's).

A restart takes a broker, and in combined mode a controller voter, away for a while. If every
broker restarted the moment a rotation phase reached it, the quorum would go with them. So a
broker restarts only while the cluster shows every broker alive, and brokers take turns in
id order: the n-th (from 0) waits n * stagger first, then looks again. A broker that is down
leaves Kafka's Metadata at once (a controlled shutdown fences it), so the next in line sees it
missing and waits for it to come back.
"""

from __future__ import annotations

from collections.abc import Collection


def cluster_whole(alive: Collection[int], cluster_size: int) -> bool:
    """Every broker of the cluster is alive: one more may go down for a restart."""
    return len(set(alive)) >= cluster_size


def place_in_line(broker_id: int, alive: Collection[int]) -> int:
    """This broker's turn (0 first) among the alive brokers, ordered by id."""
    return sorted(set(alive) | {broker_id}).index(broker_id)


def describe_missing(alive: Collection[int], cluster_size: int) -> str:
    """One line for the logs: how many brokers the cluster shows, which ones."""
    ids = ", ".join(str(i) for i in sorted(set(alive))) or "none"
    return f"the cluster shows {len(set(alive))} of {cluster_size} brokers alive ({ids})"
