"""``kafka-pki``: the operator's view of a cluster's rotation, and the one key to flip.

    kafka-pki status [--json]
    kafka-pki rotate --to pki_root_b
    kafka-pki rotate --abort
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sidecar.consul_store import ConsulError, ConsulStore, Snapshot
from sidecar.keeper import ACTIVE_ROOT, KEEPER, ROTATION, keeper_holder, registered_nodes
from sidecar.rotation import (
    Policy,
    RotationInputError,
    RotationRecord,
    barrier,
    parse_record,
    parse_root_name,
)
from sidecar.vault import TokenAuth, VaultError, VaultPKI

#: Environment variables read, with what for (secrets come from here only, never argv).
ENVIRONMENT = {
    "CONSUL_HTTP_ADDR": "Consul address (default http://127.0.0.1:8500)",
    "CONSUL_HTTP_TOKEN": "Consul ACL token",
    "VAULT_ADDR": "Vault address, for `rotate --to` to check the root's PKI mount",
    "VAULT_TOKEN": "Vault token allowed to read the root's CA (`rotate --to`)",
    "VAULT_CACERT": "CA bundle to verify Vault's TLS certificate",
    "PKI_CLUSTER": "default for `--cluster`",
    "PKI_CONSUL_PREFIX": "default for `--consul-prefix`",
}


def status_data(snapshot: Snapshot, now: float) -> dict[str, Any]:
    """Everything ``status`` shows, as plain data (also the ``--json`` output)."""
    raw_root = snapshot.value(ACTIVE_ROOT)
    try:
        desired: str | None = parse_root_name(raw_root)
        desired_error = None
    except RotationInputError as exc:
        desired, desired_error = None, str(exc)
    record: RotationRecord | None = None
    record_error = None
    if snapshot.value(ROTATION) is not None:
        try:
            record = parse_record(snapshot.value(ROTATION) or b"")
        except RotationInputError as exc:
            record_error = str(exc)
    nodes = registered_nodes(snapshot, lambda message: None)
    waiting: set[str] = set()
    if record is not None:
        waiting = set(barrier(record, nodes, now, Policy()).waiting_on)
    participants = []
    for node_id in sorted(nodes):
        node = nodes[node_id]
        phase = record.phase_of(node.trust, node.signer) if record else None
        participants.append({
            "node_id": node_id, "role": node.role, "phase": phase, "signer": node.signer,
            "trust": sorted(node.trust), "serial": node.serial, "issuer": node.issuer,
            "not_after": node.not_after, "waited_on": node_id in waiting})
    rotation = None
    if record is not None:
        rotation = {"id": record.id, "from": record.from_root, "to": record.to_root,
                    "phase": record.phase, "stable": record.stable,
                    "seconds_in_phase": round(now - record.phase_since, 1),
                    "started_at": record.started_at, "completed_at": record.completed_at}
    return {"active_root": desired, "active_root_error": desired_error,
            "rotation": rotation, "rotation_error": record_error,
            "keeper": keeper_holder(snapshot.entries.get(KEEPER)),
            "participants": participants}


def render_status(data: Mapping[str, Any]) -> str:
    """Human-readable status: the desired root, the rotation, and a participant table."""
    desired = data["active_root"] or f"INVALID: {data['active_root_error']}"
    lines = [f"desired root : {desired}"]
    rotation = data["rotation"]
    if data["rotation_error"]:
        lines.append(f"rotation     : MALFORMED: {data['rotation_error']}")
    elif rotation is None:
        lines.append("rotation     : none yet")
    else:
        state = "stable" if rotation["stable"] else "in progress"
        lines.append(f"rotation     : {rotation['id']} {rotation['from']} -> {rotation['to']} "
                     f"phase {rotation['phase']} ({state}, {rotation['seconds_in_phase']}s "
                     "in phase)")
    keeper = data["keeper"]
    if keeper is None:
        lines.append("keeper       : none (the barrier is not evaluated until a participant "
                     "takes the lock)")
    else:
        since = "" if keeper["since"] is None else time.strftime(
            " since %Y-%m-%dT%H:%M:%SZ", time.gmtime(keeper["since"]))
        lines.append(f"keeper       : {keeper['node_id'] or '?'} ({keeper['role'] or '?'})"
                     f"{since}")
    header = ("", "participant", "role", "phase", "serial", "issuer", "not after")
    rows = [header]
    for p in data["participants"]:
        rows.append(("*" if p["waited_on"] else "", p["node_id"], p["role"],
                     "-" if p["phase"] is None else str(p["phase"]), p["serial"] or "-",
                     p["issuer"] or "-", p["not_after"] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines.append("")
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
              for row in rows]
    if any(p["waited_on"] for p in data["participants"]):
        lines.append("\n* the rotation waits on this participant")
    return "\n".join(lines)


def _store(args: argparse.Namespace) -> ConsulStore:
    addr = args.consul_addr or os.environ.get("CONSUL_HTTP_ADDR") or "http://127.0.0.1:8500"
    cluster = args.cluster or os.environ.get("PKI_CLUSTER") or "default"
    consul_prefix = args.consul_prefix or os.environ.get("PKI_CONSUL_PREFIX") or "kafka-pki"
    prefix = f"{consul_prefix.strip('/')}/{cluster}/"
    return ConsulStore(addr, prefix, os.environ.get("CONSUL_HTTP_TOKEN"))


def _root_exists(root: str, args: argparse.Namespace) -> None:
    addr = args.vault_addr or os.environ.get("VAULT_ADDR")
    if not addr:
        raise SystemExit("kafka-pki: set VAULT_ADDR (and VAULT_TOKEN) so the root can be "
                         "checked before rotating")
    vault = VaultPKI(addr, TokenAuth(token=os.environ.get("VAULT_TOKEN")),
                     verify=os.environ.get("VAULT_CACERT") or True)
    try:
        vault.login()
        vault.ca_certificates(root)
    except VaultError as exc:
        raise SystemExit(f"kafka-pki: {root} is not a usable Vault PKI mount: {exc}") from None


def cmd_status(args: argparse.Namespace) -> int:
    data = status_data(_store(args).read(), time.time())
    print(json.dumps(data, indent=2) if args.json else render_status(data))
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.abort:
        raw = store.read().value(ROTATION)
        record = parse_record(raw) if raw else None
        if record is None or record.stable or record.from_root == record.to_root:
            print("kafka-pki: no rotation in progress; nothing to abort", file=sys.stderr)
            return 1
        target = record.from_root
    else:
        target = parse_root_name(args.to)
        _root_exists(target, args)
    store.put(ACTIVE_ROOT, target.encode())
    print(f"active-root = {target} ({store.prefix}{ACTIVE_ROOT}); watch: kafka-pki status")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kafka-pki", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--cluster", help="cluster name in the Consul key prefix "
                        "(default: PKI_CLUSTER, else default)")
    parser.add_argument("--consul-prefix", help="Consul KV prefix (default: PKI_CONSUL_PREFIX, "
                        "else kafka-pki)")
    parser.add_argument("--consul-addr", help="Consul address (default: CONSUL_HTTP_ADDR)")
    parser.add_argument("--vault-addr", help="Vault address (default: VAULT_ADDR)")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="desired root, rotation phase, participants")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    rotate = sub.add_parser("rotate", help="flip active-root (checked against Vault)")
    group = rotate.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", metavar="ROOT", help="PKI mount of the new root")
    group.add_argument("--abort", action="store_true", help="roll back to the rotation's origin")
    rotate.set_defaults(func=cmd_rotate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except (ConsulError, RotationInputError) as exc:
        print(f"kafka-pki: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
