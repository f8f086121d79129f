"""Reference tables for the docs site, generated from the code.

The MkDocs hook (docs/hooks/config_tables.py) fills them in at build time; a test keeps the copy
in docs/configuration.md current.

    python -m sidecar.docs                                  prints the tables
    python -m sidecar.docs --write docs/configuration.md    rewrites the page's tables
"""

from __future__ import annotations

import argparse

from sidecar import settings


def settings_table(cls: type, env_prefix: str) -> str:
    """A Markdown table of every setting of a config dataclass."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for info in settings.describe(cls, env_prefix):
        flag = info.flag if info.flag.startswith("(") else f"`{info.flag}`"
        rows.append(f"| {flag} | `{info.env}` | `{info.default}` | {info.help} |")
    return "\n".join(rows)


def command_table(parser: argparse.ArgumentParser, environment: dict[str, str]) -> str:
    """A Markdown table of a command line's subcommands and options, then its environment.

    Options the top-level parser shares with every subcommand (same flags) are global: listed
    once, as taken before or after the command."""
    rows = ["| command | option | meaning |", "|---|---|---|"]

    def flags(current: argparse.ArgumentParser) -> set[tuple[str, ...]]:
        return {tuple(a.option_strings) for a in current._actions if a.option_strings}

    subs = [sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for sub in action.choices.values()]
    shared = flags(parser).intersection(*map(flags, subs)) if subs else set()

    def walk(command: str, current: argparse.ArgumentParser) -> None:
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(f"{command} {name}", sub)
            elif action.option_strings and not isinstance(action, argparse._HelpAction):
                is_global = tuple(action.option_strings) in shared
                if is_global and current is not parser:
                    continue
                option = action.option_strings[-1]
                if action.metavar:
                    option += f" {action.metavar}"
                where = f"`{command}`" + (" (before or after the command)" if is_global else "")
                rows.append(f"| {where} | `{option}` | {action.help or ''} |")

    walk(parser.prog, parser)
    rows += ["", "| environment | meaning |", "|---|---|"]
    rows += [f"| `{name}` | {meaning} |" for name, meaning in environment.items()]
    return "\n".join(rows)


def tables() -> dict[str, str]:
    """Section marker -> table, for every process."""
    from monitor.config import ENV_PREFIX as MONITOR_PREFIX
    from monitor.config import MonitorConfig
    from sidecar import operator_cli
    from sidecar.config import ENV_PREFIX, AuthManagerConfig

    return {"auth-manager": settings_table(AuthManagerConfig, ENV_PREFIX),
            "tls-monitor": settings_table(MonitorConfig, MONITOR_PREFIX),
            "kafka-pki": command_table(operator_cli.build_parser(), operator_cli.ENVIRONMENT)}


def fill_tables(text: str) -> str:
    """Replace every generated block of ``text`` with the current table; absent ones stay absent."""
    for name, table in tables().items():
        start, end = f"<!-- config:{name} -->", f"<!-- /config:{name} -->"
        if start not in text:
            continue
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        text = f"{head}{start}\n{table}\n{end}{tail}"
    return text


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if sys.argv[1:2] == ["--write"]:
        page = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/configuration.md")
        page.write_text(fill_tables(page.read_text()))
    else:
        for name, table in tables().items():
            print(f"<!-- config:{name} -->\n{table}\n<!-- /config:{name} -->\n")
