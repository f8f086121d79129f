#!/usr/bin/env bash
# Runs a Kafka broker and starts it again when it is stopped by SIGTERM: tls-monitor's
# `restart` action (MONITOR_RESTART_LISTENERS, the KRaft controller listener, whose SSL stores
# Kafka cannot reload) sends SIGTERM to the pid in the pid file and waits for a new pid there.
#
#   kafka-supervise.sh COMMAND [ARG...]      (compose: /etc/kafka/docker/run)
#
# KAFKA_SUPERVISE_PID_FILE: where the broker's pid is written (atomically), on a volume the
# monitor mounts; the monitor shares this container's PID namespace.
#
# A broker that exits 0 or on SIGTERM (143, a controlled shutdown) is started again. Any other
# exit (a crash, SIGKILL) ends this script with the broker's status, so the failure shows
# and the container's restart policy takes over. SIGTERM or SIGINT to this script (docker
# stop) is passed to the broker, and the script exits when the broker has.
set -u

pid_file="${KAFKA_SUPERVISE_PID_FILE:-/var/run/kafka-supervise/kafka.pid}"
if [ $# -eq 0 ]; then
  echo "kafka-supervise: usage: kafka-supervise.sh COMMAND [ARG...]" >&2
  exit 2
fi

child=""
stopping=0
forward() {
  stopping=1
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
}
trap forward TERM INT

while :; do
  "$@" &
  child=$!
  printf '%s\n' "$child" > "$pid_file.tmp" && mv -f "$pid_file.tmp" "$pid_file"
  status=0
  wait "$child" || status=$?
  # A trapped signal interrupts `wait` (status > 128) while the broker still runs.
  while kill -0 "$child" 2>/dev/null; do
    status=0
    wait "$child" || status=$?
  done
  if [ "$stopping" = 1 ]; then
    rm -f "$pid_file"
    exit "$status"
  fi
  case "$status" in
    0|143) echo "kafka-supervise: broker (pid $child) stopped ($status); starting it again" >&2 ;;
    *) echo "kafka-supervise: broker (pid $child) failed with status $status" >&2
       rm -f "$pid_file"
       exit "$status" ;;
  esac
  sleep 1
  if [ "$stopping" = 1 ]; then rm -f "$pid_file"; exit 0; fi
done
