"""PKI auth manager: certificates from Vault into the shared volume."""
