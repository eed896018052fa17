"""Checks shared by the backends that feed samples to a model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.errors import StageError

if TYPE_CHECKING:
    import numpy as np


def check_sample(what: str, sample: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    """A sample must have the example inputs' names (in order), shapes and dtypes."""
    import numpy as np

    if not isinstance(sample, dict) or list(sample) != list(ref):
        keys = list(sample) if isinstance(sample, dict) else type(sample).__name__
        raise StageError(f"{what} has inputs {keys}; expected {list(ref)} (same order)")
    for key, value in sample.items():
        array = np.asarray(value)
        if array.shape != ref[key].shape or array.dtype != ref[key].dtype:
            raise StageError(
                f"{what} input {key!r} is {array.dtype}{list(array.shape)}; "
                f"expected {ref[key].dtype}{list(ref[key].shape)} like the example inputs"
            )
