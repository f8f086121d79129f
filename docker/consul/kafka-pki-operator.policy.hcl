# Consul ACL policy for operators of cluster "demo": `kafka-pki status` reads the prefix;
# `kafka-pki init` and `kafka-pki rotate` write active-root. A read-only variant for
# dashboards and on-call: change "write" to "read" (status then works, init and rotate are
# refused with a 403).
key_prefix "kafka-pki/demo/" {
  policy = "write"
}
