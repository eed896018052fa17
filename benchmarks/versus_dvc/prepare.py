"""DVC stages `calibration` and `validation`: skimage's bundled photos → model-ready tensors.

    python prepare.py calibration   # the first `calibration` (params.yaml) calibration photos
    python prepare.py validation    # the two validation photos

The last calibration photo (ihc) widens most activation ranges, so calibrating on 7 instead of
8 changes the quantized model and the one-change run goes through to validation. The same
photos, order and preprocessing as the modelbuild recipe: RGB, bilinear resize to
64×64 (Pillow), float32 in [0, 1], NCHW.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

CALIBRATION = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "camera",
               "coins", "ihc"]
VALIDATION = ["brick", "retina"]

split = sys.argv[1]
if split == "calibration":
    with open("params.yaml") as f:
        names = CALIBRATION[: yaml.safe_load(f)["calibration"]]
else:
    names = VALIDATION
# The photos inside the scikit-image wheel (no download, no skimage import needed).
data_dir = Path(importlib.util.find_spec("skimage").origin).parent / "data"
tensors = []
for name in names:
    path = next(data_dir.glob(f"{name}.*"))
    image = Image.open(path).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    pixels = np.asarray(image).astype(np.float32) * np.float32(1 / 255)
    tensors.append(pixels.transpose(2, 0, 1)[None])
Path("data").mkdir(exist_ok=True)
np.savez(f"data/{split}.npz", image=np.stack(tensors))
