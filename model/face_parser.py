"""A small U-Net face parser: RGB image -> 19-class CelebAMask-HQ label map.

FaceInsight feeds a parsing map as its second visual stream; this network makes the map wherever a
dataset has no ground-truth masks, and always at evaluation and inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from torch import nn
from torch.nn import functional as F

from model.labels import PARSING_CLASSES
from model.small_checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_small_config, save_small

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "FaceParser", "FaceParserConfig", "load_parser", "save_parser"]


@dataclass(frozen=True)
class FaceParserConfig:
    num_classes: int = len(PARSING_CLASSES)
    image_size: int = 64  # input side; maps come out at the same side
    base_channels: int = 8
    depth: int = 3  # down-samplings; image_size must divide by 2**depth
    groups: int = 4  # GroupNorm groups (batch-size independent, so DDP needs no sync)
    # x / y coordinate channels beside RGB (CoordConv, Liu et al. 2018): a left and a right eye look alike, and
    # without them the mirror-augmented parser called both l_eye (val IoU 0.64 vs r_eye 0.19, RESULTS.md)
    coord_channels: bool = True

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"parser.num_classes must be >= 2, got {self.num_classes}")
        if self.depth < 1 or self.image_size % (2 ** self.depth):
            raise ValueError(f"parser.image_size ({self.image_size}) must divide by 2**depth ({2 ** self.depth})")
        if self.base_channels % self.groups:
            raise ValueError(f"parser.base_channels ({self.base_channels}) must divide by groups ({self.groups})")


def _block(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(groups, c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(groups, c_out), nn.ReLU(inplace=True),
    )


def coordinate_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2, H, W): each pixel's x and y in [-1, 1] (image left / top at -1)."""
    h, w = x.shape[-2:]
    ys = torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device)[:, None].expand(h, w)
    xs = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device)[None, :].expand(h, w)
    return torch.stack([xs, ys])[None].expand(len(x), 2, h, w)


class FaceParser(nn.Module):
    def __init__(self, cfg: FaceParserConfig):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.base_channels * 2 ** k for k in range(cfg.depth + 1)]
        first = 5 if cfg.coord_channels else 3
        self.down = nn.ModuleList([_block(first if k == 0 else widths[k - 1], widths[k], cfg.groups)
                                   for k in range(cfg.depth + 1)])
        self.up = nn.ModuleList([_block(widths[k + 1] + widths[k], widths[k], cfg.groups)
                                 for k in reversed(range(cfg.depth))])
        self.head = nn.Conv2d(widths[0], cfg.num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) floats in [0, 1] -> logits (B, num_classes, H, W)."""
        x = (images - 0.5) / 0.25
        if self.cfg.coord_channels:
            x = torch.cat([x, coordinate_channels(x)], dim=1)
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False),
                                 skip], dim=1))
        return self.head(x)

    @torch.inference_mode()
    def parse(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, 3) at the configured size -> uint8 (B, H, W) label maps (in eval mode)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        if not self.training:
            return self(x).argmax(dim=1).to(torch.uint8).numpy()
        self.eval()
        try:
            return self(x).argmax(dim=1).to(torch.uint8).numpy()
        finally:
            self.train()


def save_parser(model: FaceParser, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Safetensors weights (the model's own, or `state_dict`) + a JSON config: no pickle."""
    save_small(path, "face_parser", model.cfg, state_dict if state_dict is not None else model.state_dict())


def load_parser(path: str | Path) -> FaceParser:
    return parser_from_bytes(read_small_config(path, "train_parser"), (Path(path) / WEIGHTS_FILE).read_bytes())


def parser_from_bytes(config: dict, weights: bytes) -> FaceParser:
    """A parser from its config mapping and safetensors bytes (how Ray actors on any node receive it)."""
    raw = {k: v for k, v in config.items() if k != "model_type"}
    raw.setdefault("coord_channels", False)  # a parser saved before the field had RGB alone
    model = FaceParser(FaceParserConfig(**raw))
    model.load_state_dict(load_safetensors(weights))
    model.eval()
    return model
