"""The settings reference table in docs/configuration.md, generated from SPECS.

    python -m felix_nat64.model.settings_doc docs/configuration.md   # rewrite the table
"""

from __future__ import annotations

import sys
from dataclasses import fields

from felix_nat64.model.settings import SPECS, Settings
from felix_nat64.model.values import format_duration

START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"
_DURATIONS = {"tcp_established_timeout", "tcp_transitory_timeout", "udp_timeout", "icmp_timeout",
              "resync_interval"}


def _default(attr: str) -> str:
    value = {f.name: f.default for f in fields(Settings)}[attr]
    if value is None:
        return "unset"
    if attr in _DURATIONS:
        return format_duration(float(value))  # type: ignore[arg-type]
    if attr in ("firewall_mark", "felix_mark_mask", "felix_nft_mark_mask"):
        return f"{value:#x}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "empty (NAT64 off)"
    if attr == "hostname":
        return "the node's hostname"
    if value == "":
        return "unset"
    return str(value)


def table() -> str:
    rows = ["| Setting | Environment variable | Default | Meaning | Example |", "|---|---|---|---|---|"]
    for spec in SPECS:
        env = f"FELIX_{spec.key.upper()}"
        note = " (Felix's own)" if spec.felix_owned else ""
        rows.append(f"| `{spec.key}`{note} | `{env}` | {_default(spec.attr)} | {spec.help} | "
                    f"`{spec.example}` |")
    return "\n".join(rows)


def render_into(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "docs/configuration.md"
    with open(path) as handle:
        text = handle.read()
    with open(path, "w") as handle:
        handle.write(render_into(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
