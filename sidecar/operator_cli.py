"""``kafka-pki``: the operator's view of a cluster's rotation, and the one key to flip.

    kafka-pki init --root pki_root_a [--pki-role kafka-broker --name broker-1.kafka.test ...]
    kafka-pki status [--json]
    kafka-pki rotate --to pki_root_b
    kafka-pki rotate --abort

The global options (``--cluster``, ``--consul-prefix``, ``--consul-addr``, ``--vault-addr``)
go before or after the command, as with kubectl or consul.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sidecar.consul_access import AccessRefused, check_read_access, token_source
from sidecar.consul_store import OPERATOR_POLICY, ConsulError, ConsulStore, Snapshot
from sidecar.domain import parse_datacenters
from sidecar.domain_status import datacenters_status, render_datacenters
from sidecar.init_check import (
    INIT_DIFFERENT,
    INIT_REFUSED,
    INIT_SET,
    INIT_UNAVAILABLE,
    InitRefused,
    check_ca,
    check_names,
    check_roles,
    is_ip,
    kind,
)
from sidecar.keeper import ACTIVE_ROOT, KEEPER, ROTATION, keeper_holder, registered_nodes
from sidecar.keys import KEY_TYPES
from sidecar.rotation import (
    Policy,
    RotationInputError,
    RotationRecord,
    barrier,
    parse_record,
    parse_root_name,
)
from sidecar.vault import TokenAuth, VaultError, VaultPKI
from sidecar.watch import Output, TimedOut, follow
from sidecar.watch_progress import summary

#: Environment variables read, with what for (secrets come from here only, never argv).
ENVIRONMENT = {
    "CONSUL_HTTP_ADDR": "Consul address (default http://127.0.0.1:8500)",
    "CONSUL_HTTP_TOKEN": "Consul ACL token",
    "CONSUL_HTTP_TOKEN_FILE": "file holding the Consul ACL token (used when CONSUL_HTTP_TOKEN "
                              "is unset, as by the consul CLI)",
    "VAULT_ADDR": "Vault address, for `init` and `rotate --to` to check the root's PKI mount",
    "VAULT_TOKEN": "Vault token allowed to read the root's CA (`init`, `rotate --to`) and the "
                   "roles (`init`); a participant's, to sign with its role (`init --name`)",
    "VAULT_CACERT": "CA bundle to verify Vault's TLS certificate",
    "PKI_CLUSTER": "default for `--cluster`",
    "PKI_CONSUL_PREFIX": "default for `--consul-prefix`",
    "PKI_DATACENTERS": "default for `status --datacenters`",
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
    token = _consul_token()
    source = token_source(bool(os.environ.get("CONSUL_HTTP_TOKEN")),
                          os.environ.get("CONSUL_HTTP_TOKEN_FILE"))
    return ConsulStore(addr, prefix, token, policy=OPERATOR_POLICY, token_source=source)


def _consul_token() -> str | None:
    """CONSUL_HTTP_TOKEN, else the content of CONSUL_HTTP_TOKEN_FILE (the consul CLI's order)."""
    token = os.environ.get("CONSUL_HTTP_TOKEN")
    path = os.environ.get("CONSUL_HTTP_TOKEN_FILE")
    if token or not path:
        return token or None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise SystemExit(f"kafka-pki: cannot read CONSUL_HTTP_TOKEN_FILE {path}: "
                         f"{exc.strerror}") from None


def _vault(args: argparse.Namespace, purpose: str) -> VaultPKI:
    """The Vault of ``--vault-addr``/``VAULT_ADDR``; SystemExit (one line) if neither is set."""
    addr = args.vault_addr or os.environ.get("VAULT_ADDR")
    if not addr:
        raise SystemExit(f"kafka-pki: set VAULT_ADDR (and VAULT_TOKEN) so the root can be "
                         f"checked before {purpose}")
    return VaultPKI(addr, TokenAuth(token=os.environ.get("VAULT_TOKEN")),
                    verify=os.environ.get("VAULT_CACERT") or True)


def _root_exists(root: str, args: argparse.Namespace) -> None:
    vault = _vault(args, "rotating")
    try:
        vault.login()
        vault.ca_certificates(root)
    except VaultError as exc:
        raise SystemExit(f"kafka-pki: {root} is not a usable Vault PKI {kind(root)}: "
                         f"{exc}") from None


def cmd_init(args: argparse.Namespace) -> int:
    names = [n.strip() for item in args.name for n in item.split(",") if n.strip()]
    try:
        root = parse_root_name(args.root)
    except RotationInputError as exc:
        print(f"kafka-pki: --root: {exc}", file=sys.stderr)
        return INIT_REFUSED
    if names and all(is_ip(n) for n in names):
        print("kafka-pki: --name: give the common name (a DNS name) first; IP addresses are "
              "only SANs", file=sys.stderr)
        return INIT_REFUSED
    if names and len(args.pki_role) != 1:
        print("kafka-pki: --name: give the one --pki-role whose names to check (a "
              "participant's, e.g. kafka-broker, with that participant's token)",
              file=sys.stderr)
        return INIT_REFUSED
    try:
        vault = _vault(args, "writing it")
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return INIT_REFUSED
    try:
        check_ca(vault, root)
        checked = (check_names(vault, root, args.pki_role[0], names, args.key_type) if names
                   else check_roles(vault, root, args.pki_role, args.key_type))
    except InitRefused as exc:
        print(f"kafka-pki: {exc}", file=sys.stderr)
        return exc.code
    print(f"Vault: {checked}")
    store = _store(args)
    key = f"{store.prefix}{ACTIVE_ROOT}"
    try:
        for _ in range(3):  # create-only; a key deleted between our write and read: again
            if store.put(ACTIVE_ROOT, root.encode(), cas=0):
                print(f"active-root = {root} ({key}): set")
                return INIT_SET
            entry = store.get(ACTIVE_ROOT).entry
            if entry is not None:
                break
    except ConsulError as exc:
        print(f"kafka-pki: {exc}", file=sys.stderr)
        return INIT_REFUSED if exc.reason == "forbidden" else INIT_UNAVAILABLE
    if entry is None:
        print(f"kafka-pki: {key} keeps appearing and disappearing; try again", file=sys.stderr)
        return INIT_UNAVAILABLE
    held = (entry.value or b"").decode("utf-8", "replace")
    if held == root:
        print(f"active-root = {root} ({key}): already set; unchanged")
        return INIT_SET
    print(f"kafka-pki: {key} already holds {held!r}, not {root!r}; unchanged (to change it: "
          f"kafka-pki rotate --to {root})", file=sys.stderr)
    return INIT_DIFFERENT


#: ``kafka-pki status`` exit codes (docs/configuration.md): shown; Consul could not be asked;
#: the token may not read the prefix (Consul would show it an empty cluster).
STATUS_SHOWN, STATUS_UNAVAILABLE, STATUS_REFUSED = 0, 1, 2


def cmd_status(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        names = parse_datacenters(args.datacenters or os.environ.get("PKI_DATACENTERS") or "")
    except ValueError as exc:
        print(f"kafka-pki: --datacenters: {exc}", file=sys.stderr)
        return 2  # a usage error, as argparse answers one
    try:
        check_read_access(store)
        if args.watch:
            return _watch(store, args.json, None, None)
        data = status_data(store.read(), time.time())
        if names:
            data["datacenters"] = datacenters_status(store, names, time.time(), status_data)
    except (AccessRefused, ConsulError) as exc:
        refused = isinstance(exc, AccessRefused) or exc.reason == "forbidden"
        print(f"kafka-pki: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(exc), "reason": "forbidden" if refused else
                              getattr(exc, "reason", "error")}))
        return STATUS_REFUSED if refused else STATUS_UNAVAILABLE
    text = render_status(data)
    if names:
        text = f"{text}\n\n{render_datacenters(data['datacenters'])}"
    print(json.dumps(data, indent=2) if args.json else text)
    return STATUS_SHOWN


def cmd_rotate(args: argparse.Namespace) -> int:
    if (args.timeout is not None or args.json) and not args.wait:
        print("kafka-pki: --timeout and --json go with --wait", file=sys.stderr)
        return ROTATE_FAILED
    store = _store(args)
    if args.abort:
        # One key, read directly: a token denied it gets a 403, not an empty prefix.
        entry = store.get(ROTATION).entry
        record = parse_record(entry.value) if entry is not None and entry.value else None
        if record is None or record.stable or record.from_root == record.to_root:
            print("kafka-pki: no rotation in progress; nothing to abort", file=sys.stderr)
            return 1
        target = record.from_root
    else:
        target = parse_root_name(args.to)
        _root_exists(target, args)
    store.put(ACTIVE_ROOT, target.encode())
    print(f"active-root = {target} ({store.prefix}{ACTIVE_ROOT}); watch: kafka-pki status "
          "--watch", file=sys.stderr if args.json else sys.stdout)
    if not args.wait:
        return ROTATE_DONE
    return _watch(store, args.json, target, args.timeout)


#: ``kafka-pki rotate`` exit codes (docs/configuration.md): flipped (with ``--wait``: and the
#: rotation completed); refused or failed; ``--timeout`` passed; interrupted (Ctrl-C).
ROTATE_DONE, ROTATE_FAILED, ROTATE_TIMED_OUT, INTERRUPTED = 0, 1, 2, 130


def _watch(store: ConsulStore, json_lines: bool, target: str | None,
           timeout: float | None) -> int:
    """Redraw the rotation until it completes (0), ``timeout`` passes (2, one line), or
    Ctrl-C (130)."""
    try:
        with Output(as_json_lines=json_lines) as output:
            follow(store, output, target=target, timeout=timeout)
    except TimedOut as exc:
        print(f"kafka-pki: --timeout {timeout:g}s passed before the rotation to {target} "
              f"completed: {summary(exc.last)}", file=sys.stderr)
        return ROTATE_TIMED_OUT
    except KeyboardInterrupt:
        print("kafka-pki: interrupted; the rotation goes on (kafka-pki status --watch)",
              file=sys.stderr)
        return INTERRUPTED
    return ROTATE_DONE


#: Options every command takes, before or after its name: (flag, help).
GLOBAL_OPTIONS = (
    ("--cluster", "cluster name in the Consul key prefix (default: PKI_CLUSTER, else default)"),
    ("--consul-prefix", "Consul KV prefix (default: PKI_CONSUL_PREFIX, else kafka-pki)"),
    ("--consul-addr", "Consul address (default: CONSUL_HTTP_ADDR)"),
    ("--vault-addr", "Vault address (default: VAULT_ADDR)"),
)


def _add_global_options(parser: argparse.ArgumentParser, *, command: bool) -> None:
    """The global options; on a command's parser their default is SUPPRESS, so a value given
    before the command is not overwritten by the command's unset one."""
    group = parser.add_argument_group("global options (before or after the command)")
    for flag, help_text in GLOBAL_OPTIONS:
        group.add_argument(flag, help=help_text,
                           default=argparse.SUPPRESS if command else None)


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kafka-pki", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    _add_global_options(parser, command=False)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub_parser = sub.add_parser(name, help=help_text, allow_abbrev=False)
        _add_global_options(sub_parser, command=True)
        return sub_parser

    init = command("init", "set active-root if it is absent (checked against Vault first)")
    init.add_argument("--root", required=True, metavar="ROOT",
                      help="the first root: a PKI mount, or mount:issuer (Vault 1.11+)")
    init.add_argument("--pki-role", action="append", default=[], metavar="ROLE",
                      help="a PKI role the sidecars sign with (repeat; default: "
                           "kafka-broker and kafka-client, else kafka, as docker/vault-init.sh "
                           "makes them)")
    init.add_argument("--name", action="append", default=[], metavar="NAME",
                      help="a name the role must sign for (repeat; the first DNS name is the "
                           "common name, IP addresses are IP SANs); signs a test CSR, so it "
                           "needs one --pki-role and a participant's token")
    init.add_argument("--key-type", default="ec-p256", choices=KEY_TYPES, metavar="TYPE",
                      help=f"key type of the test CSR, the sidecars' key_type: "
                           f"{', '.join(KEY_TYPES)} (default: ec-p256)")
    init.set_defaults(func=cmd_init)
    status = command("status", "desired root, rotation phase, participants")
    status.add_argument("--json", action="store_true", help="machine-readable output (with "
                        "--watch: one JSON object per update)")
    status.add_argument("--watch", action="store_true",
                        help="redraw the rotation until it completes (or Ctrl-C)")
    status.add_argument("--datacenters", metavar="DC,DC",
                        help="progress in each datacenter of the rotation domain, the primary "
                             "first (default: PKI_DATACENTERS)")
    status.set_defaults(func=cmd_status)
    rotate = command("rotate", "flip active-root (checked against Vault)")
    group = rotate.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", metavar="ROOT", help="the new root: a PKI mount, or mount:issuer")
    group.add_argument("--abort", action="store_true", help="roll back to the rotation's origin")
    rotate.add_argument("--wait", action="store_true",
                        help="after the flip, show the rotation until it completes (as status "
                             "--watch)")
    rotate.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="with --wait: give up (exit 2) after this many seconds")
    rotate.add_argument("--json", action="store_true",
                        help="with --wait: one JSON object per update")
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
