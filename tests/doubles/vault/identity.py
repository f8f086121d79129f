"""The Vault double's identity store: entities, entity aliases and identity templating.

What Vault does on a login (vault/request_handling.go ``handleLoginRequest``): the auth
method names an *alias* (a name within its mount, identified by the mount's accessor); the
identity store finds the entity holding that alias or creates one, and the token carries the
entity's id. Aliases, as the auth methods name them:

* AppRole (builtin/credential/approle/path_login.go): ``Name: role.RoleID`` with the login's
  metadata, which always holds ``role_name``. The alias name is the *role_id*, not the role's
  name; they coincide only where the role_id is set to the name (docker/vault-init.sh does).
* Kubernetes (vault-plugin-auth-kubernetes, backend.go ``getAliasName``): the service
  account's UID (``alias_name_source=serviceaccount_uid``, the default) or
  ``<namespace>/<name>`` (``serviceaccount_name``); metadata ``service_account_uid``,
  ``service_account_name``, ``service_account_namespace``, ``service_account_secret_name``.

Templating follows sdk/helper/identitytpl/templating.go ``PopulateString`` in ACL mode, for
the forms this project uses: ``identity.entity.id``, ``identity.entity.name`` and
``identity.entity.aliases.<mount accessor>.{id,name,metadata.<key>}``. The forms Vault has
and the double does not model (entity metadata, groups, time, custom_metadata) raise
``TemplateNotModelled``: a test relying on them must fail loudly, never be allowed everything
or nothing by accident.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field

__all__ = [
    "Alias",
    "Entity",
    "IdentityStore",
    "TemplateError",
    "TemplateNotModelled",
    "check_modelled",
    "has_template",
    "populate",
]


class TemplateError(Exception):
    """A template Vault cannot populate for this entity (identitytpl's errors, same words)."""


class TemplateNotModelled(Exception):
    """A template form Vault understands but this double does not implement."""


@dataclass
class Alias:
    id: str
    name: str
    mount_accessor: str
    mount_type: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Entity:
    id: str
    name: str
    aliases: list[Alias] = field(default_factory=list)


class IdentityStore:
    """Entities by id, found again by (mount accessor, alias name) on the next login."""

    def __init__(self) -> None:
        self.entities: dict[str, Entity] = {}
        self._by_alias: dict[tuple[str, str], str] = {}

    def login(
        self, accessor: str, mount_type: str, alias_name: str, metadata: dict[str, str]
    ) -> Entity:
        """The entity for this alias, created on its first login (named ``entity_<8 hex>``
        like Vault's), the alias metadata refreshed from this login."""
        entity_id = self._by_alias.get((accessor, alias_name))
        if entity_id is not None:
            entity = self.entities[entity_id]
            for alias in entity.aliases:
                if alias.mount_accessor == accessor:
                    alias.metadata = dict(metadata)
            return entity
        entity_id = str(uuid.uuid4())
        entity = Entity(id=entity_id, name=f"entity_{entity_id[:8]}")
        entity.aliases.append(
            Alias(str(uuid.uuid4()), alias_name, accessor, mount_type, dict(metadata))
        )
        self.entities[entity_id] = entity
        self._by_alias[(accessor, alias_name)] = entity_id
        return entity


def _split(template: str) -> list[tuple[str, str]]:
    """(literal, directive) pieces; raises like identitytpl on unbalanced braces."""
    pieces = template.split("{{")
    if "}}" in pieces[0]:
        raise TemplateError("unbalanced templating characters")
    out = [(pieces[0], "")]
    for piece in pieces[1:]:
        parts = piece.split("}}")
        if len(parts) != 2:
            raise TemplateError("unbalanced templating characters")
        out.append((parts[1], parts[0].strip()))
    return out


def has_template(template: str) -> bool:
    """framework.ValidateIdentityTemplate: whether the string holds a directive (False, not an
    error, for an unbalanced one: cert_util.go's validateNames ignores the error)."""
    try:
        return len(_split(template)) > 1
    except TemplateError:
        return False


def _directive(directive: str, entity: Entity) -> str:
    if directive.startswith(("identity.groups.", "time.")):
        raise TemplateNotModelled(f"identity template {{{{{directive}}}}}")
    if not directive.startswith("identity.entity."):
        raise TemplateError("no value could be found for one of the template directives")
    rest = directive[len("identity.entity."):]
    if rest == "id":
        return entity.id
    if rest == "name":
        return entity.name
    if rest.startswith("aliases."):
        accessor, _, selector = rest[len("aliases."):].partition(".")
        if not selector:
            raise TemplateError("invalid alias selector")
        alias = next((a for a in entity.aliases if a.mount_accessor == accessor), None)
        if alias is None:
            raise TemplateError("alias not found")
        if selector == "id":
            value = alias.id
        elif selector == "name":
            value = alias.name
        elif selector.startswith("metadata."):
            value = alias.metadata.get(selector[len("metadata."):], "")
        elif selector.startswith("custom_metadata"):
            raise TemplateNotModelled(f"identity template {{{{{directive}}}}}")
        else:
            value = ""
        if not value:
            raise TemplateError("no value could be found for one of the template directives")
        return value
    if rest.startswith(("metadata", "groups.")):
        raise TemplateNotModelled(f"identity template {{{{{directive}}}}}")
    raise TemplateError("no value could be found for one of the template directives")


def populate(template: str, entity: Entity) -> str:
    """identitytpl.PopulateString in ACL mode for ``entity`` (no groups)."""
    pieces = _split(template)
    out = [pieces[0][0]]
    for literal, directive in pieces[1:]:
        value = _directive(directive, entity)
        if "*" in value or "+" in value:
            raise TemplateError("globs and wildcards are not allowed in template result")
        out += [value, literal]
    return "".join(out)


def check_modelled(template: str) -> None:
    """Raise ``TemplateNotModelled`` if ``template`` uses a form the double does not model
    (checked at role write, with a stand-in entity, so the test fails at its set-up)."""
    probe = Entity(id="probe", name="probe")
    for _, directive in _split(template)[1:] if has_template(template) else []:
        if directive.startswith("identity.entity.aliases."):
            selector = directive.split(".", 4)[-1] if directive.count(".") >= 4 else ""
            if selector.startswith("custom_metadata"):
                raise TemplateNotModelled(f"identity template {{{{{directive}}}}}")
            continue
        with contextlib.suppress(TemplateError):  # Vault's own refusal: the double models it
            _directive(directive, probe)
