# Consul ACL policy TEMPLATE for ONE kafka-pki participant (one auth manager) of one cluster.
# docker/consul-acl-init.sh renders it per participant ({{prefix}}: "kafka-pki/<cluster>/",
# {{node_id}}: the participant's PKI_NODE_ID) and makes one policy and one token each:
#
#   sed -e 's|{{prefix}}|kafka-pki/demo/|g' -e 's|{{node_id}}|kafka-1|g' \
#       docker/consul/kafka-pki-sidecar.policy.hcl > kafka-1.hcl
#   consul acl policy create -name kafka-pki-demo-kafka-1 -rules @kafka-1.hcl
#   consul acl token create -description "kafka-pki demo kafka-1" -policy-name kafka-pki-demo-kafka-1
#
# Give each auth manager its own token (CONSUL_HTTP_TOKEN from a secret, never argv).
#
# Consul picks the exact `key` rule for a key, else the longest `key_prefix` rule
# (acl/policy_authorizer.go getPolicy): so the participant reads the whole prefix (the keeper
# reads every report and active-root; any participant may become the keeper) and writes only:
#   rotation     the record, written by the keeper in a transaction (check-session on keeper,
#                then cas on rotation: the check needs read, the cas write)
#   keeper       the lock, acquired and released with the participant's session
#   restart-queue/<node_id>  its place in the KRaft restart queue (one broker of the cluster
#                restarts at a time), acquired with the participant's session
#   nodes/<id>   its own report, under its session
# It cannot write active-root (the operator's) nor another participant's report.
key_prefix "{{prefix}}" {
  policy = "read"
}

key "{{prefix}}rotation" {
  policy = "write"
}

key "{{prefix}}keeper" {
  policy = "write"
}

key "{{prefix}}restart-queue/{{node_id}}" {
  policy = "write"
}

key "{{prefix}}nodes/{{node_id}}" {
  policy = "write"
}

# Only with PKI_DATACENTERS (one rotation over several datacenters, docs/protocol.md): the
# keeper writes its datacenter's summary, and learns which datacenter its agent is in.
key "{{prefix}}summary" {
  policy = "write"
}

agent_prefix "" {
  policy = "read"
}

# Sessions are created on the node of the agent the sidecar talks to (its local agent).
# Restrict this to your agents' node names (session "<node>" or a narrower prefix) if you can.
session_prefix "" {
  policy = "write"
}
