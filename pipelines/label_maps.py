"""19-class face-parsing label maps: composing them from per-part masks, and colouring them."""

from __future__ import annotations

import numpy as np

from model.labels import LEFT_RIGHT_PAIRS, MASK_PARTS, PARSING_CLASSES, PART_LABEL
from pipelines.storage import read_url

# One colour per class, CelebAMask-HQ's usual visualisation palette.
PALETTE = np.array([
    (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204), (0, 255, 255),
    (255, 204, 204), (102, 51, 0), (255, 0, 0), (102, 204, 0), (255, 255, 0), (0, 0, 153), (0, 0, 204),
    (255, 51, 153), (0, 204, 204), (0, 51, 0), (255, 153, 51), (0, 204, 0),
], dtype=np.uint8)
assert len(PALETTE) == len(PARSING_CLASSES)


def compose_label_map(masks: dict[str, np.ndarray], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Paint boolean part masks in the official order (a later part overwrites an earlier one)."""
    if shape is None:
        if not masks:
            raise ValueError("compose_label_map needs masks or an explicit shape")
        shape = next(iter(masks.values())).shape[:2]
    label = np.zeros(shape, dtype=np.uint8)
    for part in MASK_PARTS:
        mask = masks.get(part)
        if mask is not None:
            if mask.shape[:2] != shape:
                raise ValueError(f"mask '{part}' is {mask.shape[:2]}, expected {shape}")
            label[mask.astype(bool)] = PART_LABEL[part]
    return label


def colorize(label_map: np.ndarray) -> np.ndarray:
    """RGB rendering of a label map with the class palette."""
    return PALETTE[label_map]


def part_of_mask_file(path: str) -> str:
    """'…/00012_l_eye.png' -> 'l_eye'."""
    name = path.rsplit("/", 1)[-1].removesuffix(".png")
    return name.split("_", 1)[1]


def load_label_map(mask_urls: list[str]) -> np.ndarray | None:
    """Read a record's mask files (local or S3) and compose them; None when it has no masks."""
    import io

    from PIL import Image

    masks = {}
    for url in mask_urls:
        with Image.open(io.BytesIO(read_url(url))) as img:
            masks[part_of_mask_file(url)] = np.asarray(img.convert("L")) > 0
    return compose_label_map(masks) if masks else None


def _flip_lut() -> np.ndarray:
    lut = np.arange(len(PARSING_CLASSES), dtype=np.uint8)
    for left, right in LEFT_RIGHT_PAIRS:
        lut[PART_LABEL[left]], lut[PART_LABEL[right]] = PART_LABEL[right], PART_LABEL[left]
    return lut


# Label value -> the label it becomes in a mirrored image (l_eye <-> r_eye, brows, ears).
FLIP_LUT = _flip_lut()


def flip_label_map(label_map: np.ndarray) -> np.ndarray:
    """Mirror a label map left-right and swap the left/right classes, as a mirrored face needs."""
    return FLIP_LUT[label_map[..., ::-1]]
