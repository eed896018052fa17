"""AI Hub devices: a device as plain data, its OS ordering, close-match suggestions, and the
one-day cache of device lists."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.backends.aihub.files import atomic_write_text

ATTRIBUTE_RE = re.compile(r"[a-z][a-z0-9_]*:\S+")

DEVICE_CACHE_TTL_S = 24 * 3600.0
DEVICE_CACHE_VERSION = 1


@dataclass(frozen=True)
class DeviceInfo:
    """One AI Hub device (a name + OS version), JSON-able through ``to_dict``/``from_dict``."""

    name: str
    os: str
    attributes: list[str] = field(default_factory=list)
    chipset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceInfo:
        return cls(
            name=str(data["name"]),
            os=str(data["os"]),
            attributes=[str(a) for a in data.get("attributes", [])],
            chipset=str(data.get("chipset", "")),
        )

    @classmethod
    def from_hub(cls, device: Any) -> DeviceInfo:
        attrs = device.attributes
        attributes = sorted([attrs] if isinstance(attrs, str) else [str(a) for a in attrs])
        chipset = next(
            (a.split(":", 1)[1] for a in attributes if a.startswith("chipset:")), ""
        )
        return cls(name=str(device.name), os=str(device.os), attributes=attributes, chipset=chipset)


def suggest(word: str, choices: Iterable[str], n: int = 6) -> list[str]:
    choices = sorted(set(choices))
    low = {c.lower(): c for c in choices}
    w = word.lower().strip()
    found = [c for c in choices if w and (w in c.lower() or c.lower() in w)]
    found += [low[m] for m in difflib.get_close_matches(w, list(low), n=n, cutoff=0.5)]
    return list(dict.fromkeys(found))[:n]


def os_key(os_version: str) -> tuple[tuple[int, ...], str]:
    nums = tuple(int(x) for x in re.findall(r"\d+", os_version))
    return nums, os_version


def cached_devices(cache: Path | None, key: str, now: float) -> tuple[list[DeviceInfo] | None,
                                                                   dict[str, Any]]:
    """The devices cached under `key` if fetched less than a day before `now` (else None),
    and every entry of the cache file (to keep when writing it back)."""
    if cache is None or not cache.is_file():
        return None, {}
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("version") != DEVICE_CACHE_VERSION:
            return None, {}
        entries = dict(data.get("entries", {}))
        entry = entries.get(key)
        if entry is not None and 0 <= now - entry["fetched_at"] < DEVICE_CACHE_TTL_S:
            return [DeviceInfo.from_dict(d) for d in entry["devices"]], entries
        return None, entries
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, {}  # unreadable cache: refetch and overwrite


def cache_devices(cache: Path, entries: dict[str, Any], key: str, now: float,
                  devices: list[DeviceInfo]) -> None:
    entries[key] = {"fetched_at": now, "devices": [d.to_dict() for d in devices]}
    payload = {"version": DEVICE_CACHE_VERSION, "entries": entries}
    atomic_write_text(cache, json.dumps(payload, indent=1, sort_keys=True) + "\n")
