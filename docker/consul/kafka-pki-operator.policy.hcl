# Consul ACL policy TEMPLATE for the operators of one cluster ({{prefix}}: "kafka-pki/<cluster>/";
# docker/consul-acl-init.sh renders it). `kafka-pki status` reads the prefix; `kafka-pki init`
# and `kafka-pki rotate` write active-root, and nothing else. A read-only variant for
# dashboards and on-call: drop the active-root rule (status then works, init and rotate are
# refused with a 403 naming the key).
key_prefix "{{prefix}}" {
  policy = "read"
}

key "{{prefix}}active-root" {
  policy = "write"
}
