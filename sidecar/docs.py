"""Reference tables for the README, generated from the code (a test keeps them in sync).

    python -m sidecar.docs      prints the tables
"""

from __future__ import annotations

from sidecar import settings


def settings_table(cls: type, env_prefix: str) -> str:
    """A Markdown table of every setting of a config dataclass."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for info in settings.describe(cls, env_prefix):
        flag = info.flag if info.flag.startswith("(") else f"`{info.flag}`"
        rows.append(f"| {flag} | `{info.env}` | `{info.default}` | {info.help} |")
    return "\n".join(rows)


def tables() -> dict[str, str]:
    """Section marker -> table, for every process."""
    from monitor.config import ENV_PREFIX as MONITOR_PREFIX
    from monitor.config import MonitorConfig
    from sidecar.config import ENV_PREFIX, AuthManagerConfig

    return {"auth-manager": settings_table(AuthManagerConfig, ENV_PREFIX),
            "tls-monitor": settings_table(MonitorConfig, MONITOR_PREFIX)}


if __name__ == "__main__":
    for name, table in tables().items():
        print(f"<!-- config:{name} -->\n{table}\n<!-- /config:{name} -->\n")
