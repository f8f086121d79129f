#!/bin/sh
# One-shot Vault set-up for the compose demo, run with the hashicorp/vault image against the
# dev server (VAULT_ADDR, VAULT_TOKEN = the dev root token, from the service's environment).
#
#   - two PKI mounts, pki_root_a and pki_root_b, each with an internal root CA and the role
#     `kafka` (its ou/organization make the issued DN equal the sidecars' PKI_SUBJECT);
#   - the policy `kafka-pki` (sign on the roots' kafka role, read their CA chain) and
#     `kafka-pki-operator` (read the CA chain: what `kafka-pki rotate` checks);
#   - AppRole auth, one role per participant, role_id fixed to the participant's name (not a
#     secret: the sidecars get it as PKI_VAULT_ROLE_ID), secret_id written to
#     $CREDENTIALS_DIR/<participant>/secret-id (0600, owned by the sidecars' UID);
#   - an operator token for `kafka-pki rotate` in $CREDENTIALS_DIR/operator/vault-token.
#
# Idempotent: `docker compose up` runs it again. Existing mounts are kept (a root CA is never
# regenerated), a secret_id or token that still works is kept, anything else is replaced.
# Secrets never appear on a command line: they go from vault's stdout straight into a file and
# are read back with vault's `key=@file` syntax or through the environment.
set -eu

: "${VAULT_ADDR:?VAULT_ADDR must be set}"
: "${VAULT_TOKEN:?VAULT_TOKEN must be set}"
CREDENTIALS_DIR="${CREDENTIALS_DIR:-/credentials}"
PARTICIPANTS="${PARTICIPANTS:-kafka-1 kafka-2 kafka-3 producer consumer}"
ROOTS="pki_root_a pki_root_b"
OWNER="${CREDENTIALS_OWNER:-1000:1000}"

log() { echo "vault-init: $*"; }

wait_for_vault() {
  tries=0
  until vault status >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
      log "Vault at $VAULT_ADDR is not answering after 60 s" >&2
      exit 1
    fi
    sleep 1
  done
}

mount_exists() {
  vault secrets list -format=json | grep -q "\"$1/\""
}

setup_root() {
  root="$1"
  letter=$(echo "${root#pki_root_}" | tr '[:lower:]' '[:upper:]')
  if mount_exists "$root"; then
    log "$root already mounted; keeping its root CA"
  else
    vault secrets enable -path="$root" pki >/dev/null
    vault secrets tune -max-lease-ttl=87600h "$root" >/dev/null
    vault write -field=serial_number "$root/root/generate/internal" \
      common_name="Example Kafka Root $letter" issuer_name="root-$letter" \
      key_type=ec key_bits=256 ttl=87600h >/dev/null
    log "$root mounted with a new internal root CA (Example Kafka Root $letter)"
  fi
  # A role write replaces the whole role, and one without key_type is rsa on every Vault
  # version (1.7 included): it would refuse the sidecars' EC CSRs. key_type=any signs both.
  vault write "$root/roles/kafka" \
    allowed_domains="kafka.test,localhost" allow_subdomains=true allow_localhost=true \
    allow_ip_sans=true allow_bare_domains=true key_type=any \
    ou=kafka organization=Example max_ttl=72h >/dev/null
}

write_policies() {
  # Vault's `+` wildcard stands for a whole path segment only ("pki_root_+" would be a
  # literal), so every root mount is listed.
  policy=""
  operator=""
  for root in $ROOTS; do
    policy="$policy
path \"$root/sign/kafka\" { capabilities = [\"update\"] }
path \"$root/ca_chain\"   { capabilities = [\"read\"] }
path \"$root/ca/pem\"     { capabilities = [\"read\"] }"
    operator="$operator
path \"$root/ca_chain\"   { capabilities = [\"read\"] }
path \"$root/ca/pem\"     { capabilities = [\"read\"] }"
  done
  printf '%s\n' "$policy" | vault policy write kafka-pki - >/dev/null
  printf '%s\n' "$operator" | vault policy write kafka-pki-operator - >/dev/null
  log "policies kafka-pki and kafka-pki-operator written"
}

# install_secret FILE: move FILE.new into place as FILE, 0600, owned by the sidecars' UID.
install_secret() {
  chmod 0600 "$1.new"
  chown "$OWNER" "$1.new"
  mv -f "$1.new" "$1"
}

setup_approle() {
  if ! vault auth list -format=json | grep -q '"approle/"'; then
    vault auth enable approle >/dev/null
  fi
  for name in $PARTICIPANTS; do
    vault write "auth/approle/role/$name" token_policies=kafka-pki \
      token_ttl=1h token_max_ttl=4h secret_id_ttl=0 secret_id_num_uses=0 >/dev/null
    vault write "auth/approle/role/$name/role-id" role_id="$name" >/dev/null
    dir="$CREDENTIALS_DIR/$name"
    mkdir -p "$dir"
    chown "$OWNER" "$dir"
    chmod 0700 "$dir"
    file="$dir/secret-id"
    if [ -s "$file" ] && vault write -field=token auth/approle/login \
        role_id="$name" secret_id=@"$file" >/dev/null 2>&1; then
      log "AppRole $name: existing secret_id still valid"
      continue
    fi
    umask 077
    vault write -f -field=secret_id "auth/approle/role/$name/secret-id" > "$file.new"
    install_secret "$file"
    log "AppRole $name: secret_id written to $file"
  done
}

setup_operator_token() {
  dir="$CREDENTIALS_DIR/operator"
  mkdir -p "$dir"
  chown "$OWNER" "$dir"
  chmod 0700 "$dir"
  file="$dir/vault-token"
  if [ -s "$file" ] && VAULT_TOKEN="$(cat "$file")" vault token lookup >/dev/null 2>&1; then
    log "operator token still valid"
    return
  fi
  umask 077
  vault token create -orphan -policy=kafka-pki-operator -ttl=720h -field=token > "$file.new"
  install_secret "$file"
  log "operator token written to $file"
}

wait_for_vault
for root in $ROOTS; do
  setup_root "$root"
done
write_policies
setup_approle
setup_operator_token
log "done"
