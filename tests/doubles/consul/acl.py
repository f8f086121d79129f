"""ACLs for KV and sessions: HCL rules, tokens, and how Consul finds and refuses a request's
token."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import uuid
from dataclasses import dataclass

from tests.doubles.consul.wire import _first, _json_response, _Response, _text

# Consul's ACL rules for KV and sessions, as acl/policy_authorizer.go and acl/policy.go
# enforce them: ``key "<k>"`` and ``session "<n>"`` are exact-match rules, ``key_prefix`` and
# ``session_prefix`` prefix rules, kept in one radix tree per resource.  ``getPolicy`` walks
# the tree down the path of the name: an exact rule for the whole name wins, else the last
# (longest) prefix rule seen on the way.  ``write`` grants read and write, ``read`` read,
# ``deny`` nothing; no rule falls to the default policy (deny here).  ``KeyWritePrefix``
# (delete of a tree) needs the longest prefix rule on the path to grant write AND no rule
# (exact or prefix) under the prefix that does not.  Several policies on one token merge
# per name with deny over write over read (acl/policy_merger.go).
#
# Error texts (acl/errors.go): Consul 1.10 and 1.11 answer 403 ``Permission denied``; from
# 1.12 (hashicorp/consul#12620, #10830) ``Permission denied: token with AccessorID '<id>'
# lacks permission 'key:write' on "<key>"`` (the anonymous token: ``Permission denied:
# anonymous token lacks ... The anonymous token is used implicitly when a request does not
# specify a token.``).  An unknown token is 403 ``ACL not found`` in every version.

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
_ACL_LEVELS = {"deny": 0, "read": 1, "write": 2}
_MERGE_RANK = {"read": 1, "write": 2, "deny": 3}  # policy_merger.go: deny wins
_ACL_RULE = re.compile(
    r'(key|key_prefix|session|session_prefix|[a-z_]+)\s+"([^"]*)"\s*\{\s*policy\s*=\s*"(\w+)"\s*\}'
)


def parse_acl_rules(text: str) -> dict[tuple[str, str], str]:
    """The key and session rules of an HCL policy: {(kind, name): policy}.

    Only the block form (``key_prefix "a/" { policy = "write" }``) is understood; rules for
    other resources (node, service, ...) are parsed and ignored.  Repeated names merge with
    deny > write > read (policy_merger.go).
    """
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    rules: dict[tuple[str, str], str] = {}
    for kind, name, policy in _ACL_RULE.findall(text):
        if policy not in _ACL_LEVELS:
            raise ValueError(f"Invalid {kind} policy: {policy!r}")
        if kind not in ("key", "key_prefix", "session", "session_prefix"):
            continue
        old = rules.get((kind, name))
        if old is None or _MERGE_RANK[policy] > _MERGE_RANK[old]:
            rules[(kind, name)] = policy
    return rules


@dataclass(frozen=True)
class AclToken:
    """A token of the double: its accessor (shown in 1.12+ errors) and its rules."""

    accessor_id: str
    rules: dict[tuple[str, str], str]
    management: bool = False
    description: str = ""
    policy_names: tuple[str, ...] = ()

    def policy_for(self, resource: str, name: str) -> str | None:
        """getPolicy: the exact rule for ``name``, else the longest prefix rule."""
        exact = self.rules.get((resource, name))
        return exact if exact is not None else self._longest_prefix(resource, name)

    def _longest_prefix(self, resource: str, name: str) -> str | None:
        """The policy of the longest ``<resource>_prefix`` rule that ``name`` starts with."""
        found = [(len(prefix), policy) for (kind, prefix), policy in self.rules.items()
                 if kind == resource + "_prefix" and name.startswith(prefix)]
        return max(found)[1] if found else None

    def allows(self, resource: str, name: str, access: str) -> bool:
        if self.management:
            return True
        policy = self.policy_for(resource, name)
        return policy is not None and _ACL_LEVELS[policy] >= _ACL_LEVELS[access]

    def allows_write_prefix(self, prefix: str) -> bool:
        """KeyWritePrefix: write by the longest prefix rule on the path, and by every rule
        (exact or prefix) at or under the prefix."""
        if self.management:
            return True
        if self._longest_prefix("key", prefix) != "write":
            return False
        return all(policy == "write" for (kind, name), policy in self.rules.items()
                   if kind in ("key", "key_prefix") and name.startswith(prefix))


_MANAGEMENT_ACCESSOR = "00000000-0000-0000-0000-000000000001"



class AclChecks:
    """The double's tokens (ACLs are on once one exists) and its 403 answers."""

    acl_errors: str
    _lock: threading.RLock
    _tokens: dict[str, AclToken]
    _acl_token: str | None
    _acl_policies: dict[str, tuple[str, str]]  # ID -> (Name, Rules)

    @property
    def acl_token(self) -> str | None:
        """The management token (None: none; ACLs are on once any token exists)."""
        return self._acl_token

    @acl_token.setter
    def acl_token(self, secret: str | None) -> None:
        """Set (or replace) the management token; may be set on a running double."""
        if self._acl_token is not None:
            self._tokens.pop(self._acl_token, None)
        self._acl_token = secret
        if secret is not None:
            self._tokens[secret] = AclToken(_MANAGEMENT_ACCESSOR, {}, management=True)

    @property
    def acl_enabled(self) -> bool:
        return bool(self._tokens)

    def create_token(self, rules: str, *, secret: str | None = None,
                     accessor_id: str | None = None, description: str = "",
                     policy_name: str | None = None) -> str:
        """A client token with these HCL rules (see :func:`parse_acl_rules`); its SecretID.
        ``description`` and ``policy_name`` are what ``acl/token/self`` shows of it.

        The first token turns ACLs on (default deny) if ``acl_token`` did not.
        """
        secret = secret or str(uuid.uuid4())
        token = AclToken(accessor_id or str(uuid.uuid4()), parse_acl_rules(rules),
                         description=description,
                         policy_names=(policy_name,) if policy_name else ())
        with self._lock:
            self._tokens[secret] = token
        return secret

    def accessor_of(self, secret: str) -> str:
        """The AccessorID of a token (what Consul 1.12+ names in a 403)."""
        return self._tokens[secret].accessor_id

    def _resolve_token(
        self, query: dict[str, list[str]], headers: dict[str, str]
    ) -> AclToken | _Response | None:
        """The request's token (None: ACLs off); no token is the anonymous token (no rules:
        default deny); an unknown one is 403 ``ACL not found`` (acl/errors.go)."""
        if not self._tokens:
            return None
        lower = {k.lower(): v for k, v in headers.items()}
        secret = _first(query, "token") or lower.get("x-consul-token", "")
        auth = lower.get("authorization", "")
        if not secret and auth.lower().startswith("bearer "):
            secret = auth[7:].strip()
        if not secret:
            return AclToken(ANONYMOUS_ACCESSOR, {})
        with self._lock:
            token = self._tokens.get(secret)
        return token if token is not None else _text(403, "ACL not found")

    def _token_self(self, query: dict[str, list[str]], headers: dict[str, str]) -> _Response:
        """``GET /v1/acl/token/self`` (agent/acl_endpoint.go ``ACLTokenSelf``, ACL.TokenRead by
        secret): ACLs off, 401 ``ACL support disabled``; the request's own token, whatever its
        rules (no acl:read needed); no token or an unknown one, 403 ``ACL not found`` (the
        secret "" names no token)."""
        if not self._tokens:
            return _text(401, "ACL support disabled")
        token = self._resolve_token(query, headers)
        if isinstance(token, _Response) or token is None or token.accessor_id == ANONYMOUS_ACCESSOR:
            return _text(403, "ACL not found")
        policies = ([{"ID": _MANAGEMENT_ACCESSOR, "Name": "global-management"}]
                    if token.management else
                    [{"ID": str(uuid.uuid5(uuid.NAMESPACE_URL, name)), "Name": name}
                     for name in token.policy_names])
        secret = next(k for k, v in self._tokens.items() if v is token)
        return _json_response({"AccessorID": token.accessor_id, "SecretID": secret,
                               "Description": token.description, "Policies": policies,
                               "Local": False})

    def _acl_endpoint(self, method: str, path: str, body: bytes,
                      authz: AclToken | None) -> _Response:
        """What ``consul_setup.AclTokens`` asks of a real Consul: ``PUT /v1/acl/policy``
        (Name, Rules), ``PUT /v1/acl/token`` (Description, Policies by ID), and ``DELETE`` of
        either by ID (agent/acl_endpoint.go ACLPolicyCreate, ACLTokenCreate, ...Delete). They
        need acl:write, which here only the management token has; ACLs off, 401."""
        if authz is None:
            return _text(401, "ACL support disabled")
        if not authz.management:
            return self._denied(authz, "acl", "write", "")
        try:
            data = json.loads(body or b"{}")
        except ValueError as exc:
            return _text(400, f"Failed to decode request body: {exc}")
        with self._lock:
            if method == "PUT" and path == "/v1/acl/policy":
                policy_id = str(uuid.uuid4())
                self._acl_policies[policy_id] = (str(data["Name"]), str(data.get("Rules", "")))
                return _json_response({"ID": policy_id, "Name": data["Name"],
                                       "Rules": data.get("Rules", "")})
            if method == "PUT" and path == "/v1/acl/token":
                ids = [str(p["ID"]) for p in data.get("Policies") or []]
                if any(i not in self._acl_policies for i in ids):
                    return _text(400, "cannot find policy")
                rules = "\n".join(self._acl_policies[i][1] for i in ids)
                names = tuple(self._acl_policies[i][0] for i in ids)
                accessor = str(uuid.uuid4())
                secret = self.create_token(rules, accessor_id=accessor,
                                           description=str(data.get("Description", "")))
                self._tokens[secret] = dataclasses.replace(self._tokens[secret],
                                                           policy_names=names)
                return _json_response({"AccessorID": accessor, "SecretID": secret,
                                       "Description": data.get("Description", ""),
                                       "Policies": [{"ID": i, "Name": self._acl_policies[i][0]}
                                                    for i in ids]})
            if method == "DELETE" and path.startswith("/v1/acl/policy/"):
                self._acl_policies.pop(path.rsplit("/", 1)[1], None)
                return _json_response(True)
            if method == "DELETE" and path.startswith("/v1/acl/token/"):
                accessor = path.rsplit("/", 1)[1]
                for secret, token in list(self._tokens.items()):
                    if token.accessor_id == accessor and not token.management:
                        del self._tokens[secret]
                return _json_response(True)
        return _Response(404)

    def _denial(self, authz: AclToken, resource: str, access: str, name: str) -> str:
        """acl/errors.go ``PermissionDeniedError.Error`` for this version."""
        if self.acl_errors == "1.10":
            return "Permission denied"
        who = ("anonymous token" if authz.accessor_id == ANONYMOUS_ACCESSOR
               else f"token with AccessorID '{authz.accessor_id}'")
        text = f"Permission denied: {who} lacks permission '{resource}:{access}' on \"{name}\""
        if authz.accessor_id == ANONYMOUS_ACCESSOR:
            text += (". The anonymous token is used implicitly when a request does not "
                     "specify a token.")
        return text

    def _denied(self, authz: AclToken, resource: str, access: str, name: str) -> _Response:
        return _text(403, self._denial(authz, resource, access, name))
