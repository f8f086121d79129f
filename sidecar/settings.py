"""Declarative configuration: one dataclass field per setting, read from flags, env and TOML.

Precedence is flag > environment > TOML file > default. Every setting is declared once
(with :func:`setting`), so the command-line parser, the environment names and the docs'
configuration reference all come from the same place. Invalid values fail with one line
naming the setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    env: str | None = None,
    choices: Sequence[str] | None = None,
    secret: bool = False,
) -> Any:
    """Declare a configuration field.

    ``env`` overrides the default environment name (``PKI_<FIELD>``); ``secret`` hides the
    value in diagnostics. Lists are comma separated in flags and environment variables.
    """
    meta = {"help": help, "env": env, "choices": tuple(choices) if choices else None,
            "secret": secret}
    if isinstance(default, list):
        items: list[Any] = list(default)
        return dataclasses.field(default_factory=items.copy, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class SettingInfo:
    """What the configuration reference (docs/configuration.md) shows for one setting."""

    name: str
    flag: str
    env: str
    default: str
    help: str


def flag_name(field_name: str) -> str:
    """The command-line flag of a setting."""
    return "--" + field_name.replace("_", "-")


def env_name(field: dataclasses.Field[Any], env_prefix: str) -> str:
    explicit = field.metadata.get("env")
    return str(explicit) if explicit else env_prefix + field.name.upper()


def describe(cls: type[Any], env_prefix: str) -> list[SettingInfo]:
    """List every setting of a config dataclass, for docs and ``--help``."""
    infos = []
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            default = _render_default(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = _render_default(field.default_factory())
        else:
            default = "(required)"
        flag = "(env only)" if field.metadata.get("secret") else flag_name(field.name)
        infos.append(SettingInfo(field.name, flag, env_name(field, env_prefix),
                                 default, str(field.metadata.get("help", ""))))
    return infos


def _render_default(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(empty)"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """Strip ``X | None``; return (type, optional)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _convert(name: str, annotation: Any, raw: Any, choices: Sequence[str] | None) -> Any:
    base, optional = _base_type(annotation)
    if raw is None or (optional and isinstance(raw, str) and raw == ""):
        return None
    try:
        value = _convert_value(base, raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value for {name}: {raw!r} ({exc})") from None
    if choices is not None and value not in choices:
        raise ConfigError(f"invalid value for {name}: {value!r} (choose from {', '.join(choices)})")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert_value(base: Any, raw: Any) -> Any:
    if typing.get_origin(base) is list:
        (item_type,) = typing.get_args(base)
        items = raw if isinstance(raw, list) else [s.strip() for s in str(raw).split(",")]
        return [_convert_value(item_type, item) for item in items if item != ""]
    if base is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("expected true or false")
    if base is int:
        if isinstance(raw, bool):
            raise ValueError("expected an integer")
        return int(raw)
    if base is float:
        return float(raw)
    if base is Path:
        return Path(str(raw)).expanduser()
    if base is str:
        if not isinstance(raw, str | int | float):
            raise ValueError("expected a string")
        return str(raw)
    raise TypeError(f"unsupported setting type {base!r}")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes (an unknown flag, a flag without its value) are ConfigErrors too, so
    they end in the same one line and exit code 2 as any other invalid setting."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(message)


def build_parser(cls: type[Any], prog: str, description: str, env_prefix: str,
                 extra: Callable[[argparse.ArgumentParser], None] | None = None
                 ) -> argparse.ArgumentParser:
    """An argparse parser with one optional flag per setting (all default to None)."""
    parser = _Parser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--config", type=Path, default=None,
                        help=f"TOML configuration file (env {env_prefix}CONFIG)")
    for field in dataclasses.fields(cls):
        if field.metadata.get("secret"):
            continue  # secrets never go on argv (visible in ps): environment or file only
        base, _ = _base_type(field.type if not isinstance(field.type, str) else
                             typing.get_type_hints(cls)[field.name])
        help_text = f"{field.metadata.get('help', '')} (env {env_name(field, env_prefix)})"
        if base is bool:
            parser.add_argument(flag_name(field.name), dest=field.name, default=None,
                                action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag_name(field.name), dest=field.name, default=None,
                                help=help_text)
    if extra is not None:
        extra(parser)
    return parser


def load(cls: type[T], args: argparse.Namespace, environ: Mapping[str, str],
         env_prefix: str) -> T:
    """Resolve every setting of ``cls`` from flags, environment, TOML and defaults."""
    config_path = getattr(args, "config", None) or environ.get(env_prefix + "CONFIG")
    file_values: dict[str, Any] = {}
    if config_path:
        file_values = read_toml(Path(config_path))
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    known = {f.name for f in fields}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise ConfigError(f"unknown setting in {config_path}: {unknown[0]}")
    values: dict[str, Any] = {}
    for field in fields:
        choices = field.metadata.get("choices")
        flag_value = getattr(args, field.name, None)
        env_value = environ.get(env_name(field, env_prefix))
        if flag_value is not None:
            raw, source = flag_value, flag_name(field.name)
        elif env_value is not None:
            raw, source = env_value, env_name(field, env_prefix)
        elif field.name in file_values:
            raw, source = file_values[field.name], f"{field.name} in {config_path}"
        else:
            continue
        values[field.name] = _convert(source, hints[field.name], raw, choices)
    missing = [f for f in fields
               if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        field = missing[0]
        raise ConfigError(f"missing required setting {field.name} "
                          f"({flag_name(field.name)} or {env_name(field, env_prefix)})")
    return cls(**values)


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file; keys may use dashes or underscores."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in config file {path}: {exc}") from None
    return {key.replace("-", "_"): value for key, value in data.items()}


def parse_host_port(name: str, value: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 in brackets); raise ConfigError naming the setting."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not (0 <= int(port_text) <= 65535):
        raise ConfigError(f"invalid value for {name}: {value!r} (expected host:port)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
