#!/usr/bin/env bash
# Root-CA rotation demo against the compose stack (needs a Docker engine with Compose v2).
#
#   docker/rotate-demo.sh [TARGET_ROOT]        (default pki_root_b)
#
# Brings the stack up (docker compose up -d --build), waits until the producer and consumer
# are flowing and every participant serves the current root, flips active-root with
# `kafka-pki rotate --to TARGET_ROOT`, waits (with a deadline) until `kafka-pki status --json`
# shows the rotation stable on the target with every participant on it, and then checks the
# producer's and consumer's logs: no DEMO_ERROR line since the rotation started, and both
# kept making progress. Exits 0 only if all of that holds.
#
# Environment: ROTATE_DEADLINE (seconds for the rotation, default 600), READY_DEADLINE
# (seconds for the stack to come up, default 600), PARTICIPANTS (default 5).
set -euo pipefail

TARGET_ROOT="${1:-pki_root_b}"
ROTATE_DEADLINE="${ROTATE_DEADLINE:-600}"
READY_DEADLINE="${READY_DEADLINE:-600}"
PARTICIPANTS="${PARTICIPANTS:-5}"
ERROR_MARKER="DEMO_ERROR"
PROGRESS_MARKER="DEMO_PROGRESS"

cd "$(dirname "$0")/.."

log() { printf '%s rotate-demo: %s\n' "$(date -u +%H:%M:%S)" "$*"; }
fail() { log "FAILED: $*" >&2; exit 1; }

compose() { docker compose "$@"; }

# status_check ROOT: exit 0 if `kafka-pki status --json` shows every participant (at least
# $PARTICIPANTS) serving ROOT alone, signed by ROOT, and no rotation in progress.
# Evaluated by Python inside the operator container (no jq needed on the host).
status_check() {
  compose exec -T operator kafka-pki status --json \
    | compose exec -T -e WANT_ROOT="$1" -e WANT_MEMBERS="$PARTICIPANTS" operator python -c '
import json, os, sys
data = json.load(sys.stdin)
root, members = os.environ["WANT_ROOT"], int(os.environ["WANT_MEMBERS"])
rotation = data.get("rotation") or {}
people = data.get("participants") or []
settled = rotation.get("stable", False) or rotation.get("from") == rotation.get("to")
ok = (data.get("active_root") == root and rotation.get("to") == root and settled
      and len(people) >= members
      and all(p["signer"] == root and p["trust"] == [root] for p in people))
sys.exit(0 if ok else 1)
'
}

# wait_until DEADLINE DESCRIPTION COMMAND...: retry COMMAND every 5 s until it succeeds.
wait_until() {
  local deadline=$1 what=$2
  shift 2
  local end=$((SECONDS + deadline))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then
      fail "$what: not reached within ${deadline}s"
    fi
    sleep 5
  done
  log "$what"
}

# progress_count SERVICE SINCE: number of progress lines SERVICE printed since SINCE.
progress_count() {
  compose logs --no-color --since "$2" "$1" | grep -c "$PROGRESS_MARKER" || true
}

app_running() {
  [ "$(progress_count producer 1h)" -gt 0 ] && [ "$(progress_count consumer 1h)" -gt 0 ]
}

command -v docker >/dev/null 2>&1 || fail "docker is not installed"
docker compose version >/dev/null 2>&1 || fail "Docker Compose v2 (docker compose) is needed"

log "bringing the stack up"
compose up -d --build

current_root=$(compose exec -T operator kafka-pki status --json \
  | compose exec -T operator python -c 'import json,sys; print(json.load(sys.stdin)["active_root"] or "")')
if [ "$current_root" = "$TARGET_ROOT" ]; then
  fail "active-root is already $TARGET_ROOT; rotate to another root (e.g. pki_root_a) or start
from a fresh stack: docker compose down -v"
fi

wait_until "$READY_DEADLINE" "producer and consumer are flowing" app_running
wait_until "$READY_DEADLINE" "all $PARTICIPANTS participants serve $current_root" \
  status_check "$current_root"

since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "rotating $current_root -> $TARGET_ROOT"
# kafka-pki checks the root in Vault with VAULT_TOKEN: the operator token is read from its file
# inside the container, so it never appears on a command line.
# shellcheck disable=SC2016  # expanded by the container's shell, on purpose
compose exec -T -e TARGET_ROOT="$TARGET_ROOT" operator sh -c \
  'VAULT_TOKEN="$(cat /etc/kafka-pki/vault/operator/vault-token)" exec kafka-pki rotate --to "$TARGET_ROOT"'

wait_until "$ROTATE_DEADLINE" "rotation stable on $TARGET_ROOT" status_check "$TARGET_ROOT"
compose exec -T operator kafka-pki status

# Let both apps run a little on the new material before judging them.
sleep 20

errors=$(compose logs --no-color --since "$since" producer consumer | grep -c "$ERROR_MARKER" || true)
produced=$(progress_count producer "$since")
consumed=$(progress_count consumer "$since")
log "since $since: $errors error lines, $produced producer and $consumed consumer progress lines"
if [ "$errors" -ne 0 ]; then
  compose logs --no-color --since "$since" producer consumer | grep "$ERROR_MARKER" | head -20 >&2
  fail "the apps logged errors during the rotation"
fi
[ "$produced" -gt 0 ] || fail "the producer made no progress during the rotation"
[ "$consumed" -gt 0 ] || fail "the consumer made no progress during the rotation"
log "OK: rotated to $TARGET_ROOT with no client errors"
