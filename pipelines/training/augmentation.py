"""Label-preserving augmentation of training faces: a mirror and a small shift (every label the heads learn is
mirror-invariant; a parsing map mirrors with its left / right classes swapped)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pipelines.label_maps import FLIP_LUT


def mirror_and_shift(images: torch.Tensor, gen: torch.Generator, shift: int = 4,
                     maps: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mirror half the faces and shift each by up to `shift` px (edge pixels repeated): (B, C, H, W). With `maps`
    (B, h, w) parsing maps, each map is mirrored and shifted with its face (the shift scaled to its side) and
    (images, maps) is returned."""
    flip = torch.rand(len(images), generator=gen) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    dy, dx = torch.randint(0, 2 * shift + 1, (2, len(images)), generator=gen)
    moved = _crop_shifted(images, dy, dx, shift)
    if maps is None:
        return moved
    lut = torch.as_tensor(FLIP_LUT, dtype=maps.dtype, device=maps.device)
    maps = torch.where(flip[:, None, None], lut[maps.flip(2)], maps)
    scale = maps.shape[-1] / images.shape[-1]
    m = round(shift * scale)
    my, mx = ((dy - shift) * scale).round().long() + m, ((dx - shift) * scale).round().long() + m
    moved_maps = _crop_shifted(maps[:, None].float(), my, mx, m)[:, 0].round().to(maps.dtype)
    return moved, moved_maps


def _crop_shifted(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, C, H, W) -> the same size cut from x edge-padded by `pad`, at offset (dy, dx) per item."""
    if pad == 0:
        return x
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    h, w = x.shape[-2:]
    return torch.stack([padded[k, :, dy[k]:dy[k] + h, dx[k]:dx[k] + w] for k in range(len(x))])
