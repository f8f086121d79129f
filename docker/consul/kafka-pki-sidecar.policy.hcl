# Consul ACL policy for the kafka-pki sidecars of one cluster ("demo" here; one policy per
# cluster). Create it and a token for the sidecars:
#
#   consul acl policy create -name kafka-pki-demo -rules @docker/consul/kafka-pki-sidecar.policy.hcl
#   consul acl token create -description "kafka-pki sidecars, cluster demo" -policy-name kafka-pki-demo
#
# and give the token to the auth managers as CONSUL_HTTP_TOKEN (from a secret, never argv).

# The cluster's keys: active-root (read), rotation (the keeper's fenced check-and-set, in a
# transaction), keeper (the lock, acquired with the participant's session), nodes/<id> (each
# participant's report, under its session). Nothing outside this prefix.
key_prefix "kafka-pki/demo/" {
  policy = "write"
}

# Sessions are created on the node of the agent the sidecar talks to (its local agent).
# Restrict the prefix to your node names if they follow a pattern.
session_prefix "" {
  policy = "write"
}
