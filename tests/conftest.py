"""Shared fixtures: the Vault and Consul targets (doubles, or real servers when
VAULT_ADDR/VAULT_TOKEN or CONSUL_HTTP_ADDR are set)."""

pytest_plugins = ["tests.consul_setup", "tests.vault_setup"]
