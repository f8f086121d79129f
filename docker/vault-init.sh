#!/bin/sh
# One-shot Vault set-up for the compose demo, run with the hashicorp/vault image against the
# dev server (VAULT_ADDR, VAULT_TOKEN = the dev root token, from the service's environment).
# It works unchanged with OpenBao (the openbao/openbao image, VAULT_IMAGE in compose.yaml):
# where there is no `vault` command, `bao` is used; it reads the same VAULT_* variables.
#
#   - PKI_LAYOUT=mounts (the default, every Vault version): two PKI mounts, pki_root_a and
#     pki_root_b, each with an internal root CA (roots `pki_root_a`, `pki_root_b`);
#     PKI_LAYOUT=issuers (Vault 1.11+, OpenBao): one PKI mount, $ISSUER_MOUNT (default pki),
#     holding the roots as the issuers root-a and root-b (roots `pki:root-a`, `pki:root-b`;
#     set active-root to `pki:root-a` then), the roles below on that mount, and the policies
#     granting `sign` through `<mount>/issuer/+/sign/<role>`;
#   - PKI_ROLES=templated (the default, least privilege): on each root the roles
#     `kafka-broker` and `kafka-client`, whose only allowed name is
#     `<AppRole name>.kafka.test` (a broker also `<AppRole name>.kraft.test`, its controller
#     listener's name; plus localhost and IP SANs): allowed_domains is the identity
#     template {{identity.entity.aliases.<approle accessor>.metadata.role_name}}.kafka.test, so
#     the AppRole `producer` can get `producer.kafka.test` and never `kafka-1.kafka.test` (a
#     broker's DN is a Kafka super user). Vault answers 400 "common name kafka-1.kafka.test
#     not allowed by this role". Policies `kafka-pki-broker` / `kafka-pki-client` allow only
#     `sign` on their own role (and reading the CA chains); a client's certificate is not
#     valid for TLS servers (server_flag=false).
#     PKI_ROLES=shared (quick start, less safe): one role `kafka` signing any name under
#     kafka.test and one policy `kafka-pki` for every participant: any participant can
#     obtain any other's certificate, a broker's included;
#   - the ou/organization of every role make the issued DN equal the sidecars' PKI_SUBJECT;
#   - `kafka-pki-operator` (read the CA chains and the roles: what `kafka-pki rotate` and
#     `kafka-pki init` check; never sign);
#   - AppRole auth, one role per participant (BROKERS are brokers, the other PARTICIPANTS
#     clients), role_id fixed to the participant's name (not a secret: the sidecars get it as
#     PKI_VAULT_ROLE_ID), secret_id written to $CREDENTIALS_DIR/<participant>/secret-id
#     (0600, owned by the sidecars' UID);
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
BROKERS="${BROKERS:-kafka-1 kafka-2 kafka-3}"
PKI_ROLES="${PKI_ROLES:-templated}"
case "$PKI_ROLES" in
  templated|shared) ;;
  *) echo "vault-init: PKI_ROLES must be templated or shared, not $PKI_ROLES" >&2; exit 1 ;;
esac
PKI_LAYOUT="${PKI_LAYOUT:-mounts}"
case "$PKI_LAYOUT" in
  mounts|issuers) ;;
  *) echo "vault-init: PKI_LAYOUT must be mounts or issuers, not $PKI_LAYOUT" >&2; exit 1 ;;
esac
ROOTS="pki_root_a pki_root_b"
ISSUER_MOUNT="${ISSUER_MOUNT:-pki}"
ISSUERS="root-a root-b"
OWNER="${CREDENTIALS_OWNER:-1000:1000}"

log() { echo "vault-init: $*"; }

if ! command -v vault >/dev/null 2>&1 && command -v bao >/dev/null 2>&1; then
  vault() { bao "$@"; }
fi

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
  write_roles "$root"
}

# setup_issuers: one mount holding every root as a named issuer (Vault 1.11+).
setup_issuers() {
  mount="$ISSUER_MOUNT"
  if mount_exists "$mount"; then
    log "$mount already mounted"
  else
    vault secrets enable -path="$mount" pki >/dev/null
    vault secrets tune -max-lease-ttl=87600h "$mount" >/dev/null
  fi
  for issuer in $ISSUERS; do
    letter=$(echo "${issuer#root-}" | tr '[:lower:]' '[:upper:]')
    if vault read "$mount/issuer/$issuer" >/dev/null 2>&1; then
      log "$mount:$issuer exists; keeping it"
      continue
    fi
    vault write -field=issuer_id "$mount/issuers/generate/root/internal" \
      common_name="Example Kafka Root $letter" issuer_name="$issuer" \
      key_type=ec key_bits=256 ttl=87600h >/dev/null
    log "$mount:$issuer generated (Example Kafka Root $letter)"
  done
  write_roles "$mount"
}

# write_roles MOUNT: the signing roles on one PKI mount.
write_roles() {
  root="$1"
  # A role write replaces the whole role, and one without key_type is rsa on every Vault
  # version (1.7 included): it would refuse the sidecars' EC CSRs. key_type=any signs both.
  if [ "$PKI_ROLES" = shared ]; then
    vault write "$root/roles/kafka" \
      allowed_domains="kafka.test,kraft.test,localhost" allow_subdomains=true allow_localhost=true \
      allow_ip_sans=true allow_bare_domains=true key_type=any \
      ou=kafka organization=Example max_ttl=72h >/dev/null
    return
  fi
  # The name comes from the caller's identity: the AppRole login's entity alias carries the
  # metadata role_name (builtin/credential/approle/path_login.go), and Vault populates the
  # template per request (builtin/logical/pki/cert_util.go validateNames). A template Vault
  # cannot populate (a token without that alias, e.g. root) allows no name at all.
  name="{{identity.entity.aliases.$APPROLE_ACCESSOR.metadata.role_name}}"
  for kind in broker client; do
    server_flag=true
    domains="$name.kafka.test"
    [ "$kind" = client ] && server_flag=false
    # A broker's controller listener is reached as <name>.kraft.test (compose's `kraft` net).
    [ "$kind" = broker ] && domains="$name.kafka.test,$name.kraft.test"
    vault write "$root/roles/kafka-$kind" \
      allowed_domains="$domains" allowed_domains_template=true allow_bare_domains=true \
      allow_subdomains=false allow_localhost=true allow_ip_sans=true key_type=any \
      server_flag="$server_flag" client_flag=true \
      ou=kafka organization=Example max_ttl=72h >/dev/null
  done
}

enable_approle() {
  if ! vault auth list -format=json | grep -q '"approle/"'; then
    vault auth enable approle >/dev/null
  fi
  APPROLE_ACCESSOR=$(vault auth list -format=json \
    | tr -d '\n ' | sed 's/.*"approle\/":{[^}]*"accessor":"\([^"]*\)".*/\1/')
  case "$APPROLE_ACCESSOR" in
    auth_approle_*) ;;
    *) log "cannot read the approle/ mount accessor" >&2; exit 1 ;;
  esac
}

is_broker() {
  for broker in $BROKERS; do
    [ "$broker" = "$1" ] && return 0
  done
  return 1
}

write_policies() {
  # Vault's `+` wildcard stands for a whole path segment only ("pki_root_+" would be a
  # literal), so every root mount is listed.
  operator=""
  shared=""
  for root in $ROOTS; do
    shared="$shared
path \"$root/sign/kafka\" { capabilities = [\"update\"] }
path \"$root/ca_chain\"   { capabilities = [\"read\"] }
path \"$root/ca/pem\"     { capabilities = [\"read\"] }"
    operator="$operator
path \"$root/ca_chain\"   { capabilities = [\"read\"] }
path \"$root/ca/pem\"     { capabilities = [\"read\"] }
path \"$root/roles/+\"    { capabilities = [\"read\"] }"
  done
  if [ "$PKI_LAYOUT" = issuers ]; then
    # Vault's `+` is one whole path segment: any issuer of this mount, by name or id.
    issuer="$ISSUER_MOUNT/issuer/+"
    shared="
path \"$issuer/sign/kafka\" { capabilities = [\"update\"] }
path \"$issuer/json\"       { capabilities = [\"read\"] }"
    operator="
path \"$issuer/json\"       { capabilities = [\"read\"] }
path \"$ISSUER_MOUNT/roles/+\" { capabilities = [\"read\"] }"
  fi
  # The operator reads the CAs (`kafka-pki rotate`) and the roles (`kafka-pki init` checks the
  # participants' roles by reading them). It never signs: a token that signs obtains a
  # certificate every participant trusts (a templated role still gives it localhost).
  printf '%s\n' "$operator" | vault policy write kafka-pki-operator - >/dev/null
  if [ "$PKI_ROLES" = shared ]; then
    printf '%s\n' "$shared" | vault policy write kafka-pki - >/dev/null
    log "policies kafka-pki and kafka-pki-operator written"
    return
  fi
  for kind in broker client; do
    # `sign` on this kind's role of every root (never issue, never the other role), and
    # reading the roots' CA chains.
    policy=""
    for root in $ROOTS; do
      policy="$policy
path \"$root/sign/kafka-$kind\" { capabilities = [\"update\"] }
path \"$root/ca_chain\"   { capabilities = [\"read\"] }
path \"$root/ca/pem\"     { capabilities = [\"read\"] }"
    done
    if [ "$PKI_LAYOUT" = issuers ]; then
      policy="
path \"$ISSUER_MOUNT/issuer/+/sign/kafka-$kind\" { capabilities = [\"update\"] }
path \"$ISSUER_MOUNT/issuer/+/json\"       { capabilities = [\"read\"] }"
    fi
    printf '%s\n' "$policy" | vault policy write "kafka-pki-$kind" - >/dev/null
  done
  log "policies kafka-pki-broker, kafka-pki-client and kafka-pki-operator written"
}

participant_policy() {
  if [ "$PKI_ROLES" = shared ]; then
    echo kafka-pki
  elif is_broker "$1"; then
    echo kafka-pki-broker
  else
    echo kafka-pki-client
  fi
}

# install_secret FILE: move FILE.new into place as FILE, 0600, owned by the sidecars' UID.
install_secret() {
  chmod 0600 "$1.new"
  chown "$OWNER" "$1.new"
  mv -f "$1.new" "$1"
}

setup_approle() {
  for name in $PARTICIPANTS; do
    vault write "auth/approle/role/$name" token_policies="$(participant_policy "$name")" \
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
enable_approle
if [ "$PKI_LAYOUT" = issuers ]; then
  setup_issuers
else
  for root in $ROOTS; do
    setup_root "$root"
  done
fi
write_policies
setup_approle
setup_operator_token
log "done"
