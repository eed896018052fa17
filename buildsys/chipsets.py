"""Snapdragon chipsets the local QNN HTP compiler can target: name -> QNN `soc_model` id.

How each row was verified (onnxruntime-qnn 2.7.0, QNN SDK 2.51): a tiny uint8 QDQ conv net was
compiled with `soc_model=<id>` for every id 0..110, and the context binary's own config record
(`soc_type=<NAME>;arch=<N>;` and `vtcm_size=<bytes>` in `<stem>_ctx_qnn.bin`) was read back.
A row is listed only if the SDK itself names the id as that chipset, the binary records an HTP
arch that agrees with Qualcomm's published tables wherever they list the chip (pytorch/executorch
`qc_schema.py`, google-ai-edge/LiteRT `soc_table.h`: sm8350, sm8450, sm8550, sm8650, sm8750,
sm8850, sa8295, sa8255, sc8380xp, qcs9100, qcs8300, sxr2230p, qcs6490 as QCM6490), and
the compiled binary runs on the x86 HTP simulator. `vtcm_mb` is what the binary records. Marketing
names are informational. `compile_context_binary` re-checks the recorded arch on every build.

Ids the SDK knows but where the recorded arch disagrees with the published one are left out:
SM8475 (soc_model 42, published v69) records arch 68, as do SM7450, SM7475, SXR1230P and
SSG2115P. Such a binary would not be what the chip runs natively.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from buildsys.errors import StageError


@dataclass(frozen=True)
class Chipset:
    name: str  # lower-case part number, the key used in recipes ("sm8550")
    soc_model: str  # QNN soc_model id, as the string the QNN EP option takes ("43")
    htp_arch: int  # Hexagon HTP architecture version the binary records (73 = v73)
    marketing_name: str
    vtcm_mb: int  # VTCM size the compiled binary records, MiB
    aihub_chipset: str | None = None  # AI Hub device attribute value, where documented


_TABLE: tuple[Chipset, ...] = (
    # phones
    Chipset("sm8350", "30", 68, "Snapdragon 888", 4, "qualcomm-snapdragon-888"),
    Chipset("sm8450", "36", 69, "Snapdragon 8 Gen 1", 8, "qualcomm-snapdragon-8gen1"),
    Chipset("sm8550", "43", 73, "Snapdragon 8 Gen 2", 8, "qualcomm-snapdragon-8gen2"),
    Chipset("sm8650", "57", 75, "Snapdragon 8 Gen 3", 8),
    Chipset("sm8635", "68", 73, "Snapdragon 8s Gen 3", 4),
    Chipset("sm8750", "69", 79, "Snapdragon 8 Elite", 8),
    Chipset("sm8850", "87", 81, "Snapdragon 8 Elite Gen 5", 8),
    Chipset("sm7550", "64", 73, "Snapdragon 7 Gen 3", 2),
    # compute
    Chipset("sc8280x", "37", 68, "Snapdragon 8cx Gen 3", 4),
    Chipset("sc8380xp", "60", 73, "Snapdragon X Elite", 8),
    # automotive
    Chipset("sa8295", "39", 68, "Snapdragon SA8295P (automotive)", 8),
    Chipset("sa8255", "52", 73, "Snapdragon SA8255P (automotive)", 8),
    # IoT
    Chipset("qcs6490", "93", 68, "Qualcomm QCS6490", 2),
    Chipset("qcs8550", "66", 73, "Qualcomm QCS8550", 8),
    Chipset("qcs9100", "77", 73, "Qualcomm QCS9100", 8),
    Chipset("qcs8300", "82", 75, "Qualcomm QCS8300", 8),
    # XR
    Chipset("sxr2230p", "53", 69, "Snapdragon XR2 Gen 2", 8),
)

CHIPSETS: dict[str, Chipset] = {c.name: c for c in _TABLE}

# Known to the QNN SDK, deliberately not listed: name -> (soc_model, published arch).
_EXCLUDED: dict[str, tuple[str, int]] = {
    "sm8475": ("42", 69),
    "sm7450": ("41", 69),
    "sm7475": ("54", 69),
    "sxr1230p": ("45", 73),
    "ssg2115p": ("46", 73),
}


def known() -> list[str]:
    """Chipset names, sorted."""
    return sorted(CHIPSETS)


def lookup(chipset: str) -> Chipset:
    """The table row for `chipset` (case-insensitive; AI Hub's "chipset:..." names accepted)."""
    key = str(chipset).strip().lower()
    key = key.removeprefix("chipset:")
    if key in CHIPSETS:
        return CHIPSETS[key]
    for c in _TABLE:
        if c.aihub_chipset is not None and key == c.aihub_chipset:
            return c
    if key in _EXCLUDED:
        soc_model, arch = _EXCLUDED[key]
        raise StageError(
            f"chipset {chipset!r} is not supported: QNN SDK soc_model {soc_model} compiles it "
            f"for HTP v68, not the chip's v{arch}. Known chipsets: {', '.join(known())}."
        )
    names = known()
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise StageError(
        f"unknown chipset {chipset!r}: no QNN soc_model id is known for it.{hint} "
        f"Known chipsets: {', '.join(names)}."
    )
