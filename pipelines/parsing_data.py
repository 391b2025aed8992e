"""Face-parsing examples: image + composed label map at the parser's size, and their augmentation."""

from __future__ import annotations

import io
import zlib
from typing import Any

import albumentations as A
import cv2
import numpy as np
from PIL import Image

from pipelines.label_maps import FLIP_LUT, load_label_map
from pipelines.storage import read_url


def load_image(url: str, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(read_url(url))) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))


def resize_label_map(label_map: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour only: a label map has no in-between classes."""
    return np.asarray(Image.fromarray(label_map).resize((size, size), Image.NEAREST))


def load_parsing_example(row: dict[str, Any], size: int) -> dict[str, Any]:
    label_map = load_label_map(list(row["masks"]))
    if label_map is None:
        raise ValueError(f"record {row['id']} ({row['image']}) has no masks; parser training needs masks")
    return {"id": row["id"], "image": load_image(row["image"], size), "label": resize_label_map(label_map, size)}


class HorizontalFlipSwapLR(A.DualTransform):
    """Mirror image and label map, and swap left/right classes (l_eye <-> r_eye, brows, ears)."""

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1])

    def apply_to_mask(self, mask: np.ndarray, **params) -> np.ndarray:
        return np.ascontiguousarray(FLIP_LUT[mask[:, ::-1]])

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


def parser_augmentation() -> A.Compose:
    return A.Compose([
        HorizontalFlipSwapLR(p=0.5),
        A.Affine(scale=(0.9, 1.1), rotate=(-12, 12), translate_percent=(-0.05, 0.05), interpolation=cv2.INTER_LINEAR,
                 mask_interpolation=cv2.INTER_NEAREST, p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.6),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=10, p=0.4),
    ])


def augment_batch(batch: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """A Ray Data task (no actor to lose on a busy cluster): augments a batch of images and labels. Each
    batch seeds its own pipeline from its first face id, so the result depends on the data, not on which
    worker runs it."""
    transform = parser_augmentation()
    transform.set_random_seed(zlib.crc32(f"{seed}:{batch['id'][0]}".encode()))
    images, labels = [], []
    for image, label in zip(batch["image"], batch["label"], strict=True):
        out = transform(image=image, mask=label)
        images.append(out["image"])
        labels.append(out["mask"])
    return {**batch, "image": np.stack(images), "label": np.stack(labels)}
