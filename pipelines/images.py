"""Image bytes -> arrays at the model's side: what training, evaluation, serving and the corpus all decode with.

One module so that `dvc.yaml` can say which stages depend on how images are decoded, and so a change to it
re-runs each of them (and a change to the renderer re-runs none).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def decode_image(data: bytes, size: int, mode: str = "RGB") -> np.ndarray:
    """Encoded image bytes -> a size x size array; "L" (label maps) resizes by nearest neighbour."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert(mode)
        if img.size != (size, size):
            img = img.resize((size, size), Image.NEAREST if mode == "L" else Image.BILINEAR)
        return np.asarray(img)


def resize_map(label_map: np.ndarray, size: int) -> np.ndarray:
    """Nearest neighbour: a label map has no in-between classes."""
    if label_map.shape == (size, size):
        return label_map
    return np.asarray(Image.fromarray(label_map).resize((size, size), Image.NEAREST))
