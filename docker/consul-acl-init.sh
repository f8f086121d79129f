#!/bin/sh
# One Consul ACL policy and token per kafka-pki participant, and the operator's (docs/vault-consul.md,
# "Consul for a fleet"). Idempotent: a participant whose token file exists is left alone.
#
# Needs: the consul CLI; CONSUL_HTTP_ADDR; a management token in CONSUL_HTTP_TOKEN_FILE (or
# CONSUL_HTTP_TOKEN), for this script only; PKI_CLUSTER; PARTICIPANTS (space-separated ids,
# each the participant's PKI_NODE_ID); TOKENS_DIR (where <id>/token and operator/token go);
# POLICY_DIR (default: the directory of the templates next to this script).
# Tokens go to files readable by TOKEN_UID only (0400), are never printed and never appear
# on a command line.
set -eu

: "${PKI_CLUSTER:?set PKI_CLUSTER}"
: "${PARTICIPANTS:?set PARTICIPANTS}"
: "${TOKENS_DIR:?set TOKENS_DIR}"
PKI_CONSUL_PREFIX="${PKI_CONSUL_PREFIX:-kafka-pki}"
POLICY_DIR="${POLICY_DIR:-$(dirname "$0")/consul}"
TOKEN_UID="${TOKEN_UID:-1000}"
prefix="${PKI_CONSUL_PREFIX%/}/${PKI_CLUSTER}/"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
umask 077

render() {  # template node_id -> rules file
    sed -e "s|{{prefix}}|${prefix}|g" -e "s|{{node_id}}|$2|g" "$1" > "$work/rules.hcl"
}

make_policy() {  # name: create, or update the rules of an existing policy
    if consul acl policy read -name "$1" > /dev/null 2>&1; then
        consul acl policy update -name "$1" -rules "@$work/rules.hcl" > /dev/null
    else
        consul acl policy create -name "$1" -rules "@$work/rules.hcl" > /dev/null
    fi
}

make_token() {  # policy-name description output-file
    if [ -s "$3" ]; then
        echo "consul-acl-init: $3 exists, token kept"
        return
    fi
    mkdir -p "$(dirname "$3")"
    # Consul generates the SecretID; it goes from the JSON answer straight to the file.
    consul acl token create -description "$2" -policy-name "$1" -format json \
        | sed -n 's/^ *"SecretID": "\([^"]*\)".*/\1/p' > "$3"
    if [ ! -s "$3" ]; then
        rm -f "$3"
        echo "consul-acl-init: no SecretID in the answer for $2" >&2
        exit 1
    fi
    chmod 0400 "$3"
    chown "$TOKEN_UID" "$3" 2> /dev/null || true
    echo "consul-acl-init: token for $2 written to $3"
}

for id in $PARTICIPANTS; do
    name="kafka-pki-${PKI_CLUSTER}-${id}"
    render "$POLICY_DIR/kafka-pki-sidecar.policy.hcl" "$id"
    make_policy "$name"
    make_token "$name" "kafka-pki ${PKI_CLUSTER} ${id}" "$TOKENS_DIR/$id/token"
done

render "$POLICY_DIR/kafka-pki-operator.policy.hcl" ""
make_policy "kafka-pki-${PKI_CLUSTER}-operator"
make_token "kafka-pki-${PKI_CLUSTER}-operator" "kafka-pki ${PKI_CLUSTER} operator" \
    "$TOKENS_DIR/operator/token"
