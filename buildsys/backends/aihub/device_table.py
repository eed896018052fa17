"""`modelbuild devices`: the table of AI Hub devices a recipe can name (cached for a day).

The caller says where the list is kept (`modelbuild devices`: `<store>/aihub/devices.json`).
It holds device names, OS versions and attributes only (never the API token).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from buildsys.errors import StageError

if TYPE_CHECKING:
    from buildsys.backends.aihub.devices import DeviceInfo

def device_table(devices: list[DeviceInfo]) -> str:
    """Name, OS, chipset, form factor and frameworks: enough to write a recipe's device."""
    rows = [("DEVICE", "OS", "CHIPSET", "FORMAT", "FRAMEWORKS")]
    for d in devices:
        values = _attribute_values(d.attributes)
        rows.append((d.name, d.os, d.chipset or "-", ",".join(values.get("format", [])) or "-",
                     ",".join(values.get("framework", [])) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    return "\n".join(lines)


def _attribute_values(attributes: list[str]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for attribute in attributes:
        key, _, value = attribute.partition(":")
        values.setdefault(key, []).append(value)
    return values


def print_devices(attributes: list[str], cache: Path, refresh: bool = False, *,
                  client: Any = None, stream: TextIO | None = None) -> int:
    """Print the AI Hub devices having all `attributes`; exit code 0, or 1 with a message
    (no token, AI Hub unreachable, unknown attribute)."""
    from buildsys.backends.aihub.client import AIHubClient

    out = stream or sys.stdout
    client = client or AIHubClient()
    try:
        client.check_token()
        if refresh:
            cache.unlink(missing_ok=True)
        devices = client.list_devices(attributes, cache_path=cache)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shown = f" with {', '.join(attributes)}" if attributes else ""
    if not devices:
        print(f"no AI Hub device{shown}; `modelbuild devices` lists them all", file=out)
        return 1 if attributes else 0
    print(device_table(devices), file=out)
    print(f"\n{len(devices)} devices{shown} (cached a day in {cache}; --refresh to fetch again). "
          "In a recipe: devices: {my-phone: {backend: aihub, name: \"<DEVICE>\"}} or "
          "attributes: [chipset:...]", file=out)
    return 0
