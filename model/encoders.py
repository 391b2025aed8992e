"""The two visual streams (image ViT, parsing-map encoder) and the projectors into the LLM's space."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from model.config import ProjectorConfig, SegEncoderConfig, VisionConfig


class Block(nn.Module):
    """A pre-norm transformer block (one code path in training and inference, unlike nn.TransformerEncoderLayer's
    fast path, so a model's outputs do not depend on which of its parameters require gradients)."""

    def __init__(self, hidden: int, heads: int, attention: str = "sdpa"):
        super().__init__()
        self.heads, self.attention = heads, attention
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.out = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.out(attend(q, k, v, self.attention).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: str) -> torch.Tensor:
    """Full attention of (B, heads, N, head_dim) queries over keys and values. `eager`: three plain ops. On CPUs the
    fused kernel's backward runs one small GEMM per block of every head, each a oneDNN call of its own: for these
    ~100-token sequences it took 40% of align's heads-only step (py-spy; benchmarks/RESULTS.md)."""
    if kind == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    weights = torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)
    return weights.to(v.dtype) @ v


def _stem(c_in: int, hidden: int, patch: int) -> nn.Module:
    """Patch embedding; two stride-2 convolutions first where the patch allows (cheap local features)."""
    if patch % 4:
        return nn.Conv2d(c_in, hidden, patch, patch)
    c = max(8, hidden // 4)
    return nn.Sequential(nn.Conv2d(c_in, c, 3, 2, 1), nn.GELU(), nn.Conv2d(c, 2 * c, 3, 2, 1), nn.GELU(),
                         nn.Conv2d(2 * c, hidden, patch // 4, patch // 4))


def _conv_body(c_in: int, hidden: int, patch: int, width: int, depth: int) -> nn.Module:
    """A small CNN to the patch grid: per halving, a strided 3x3 convolution and `depth` more at that resolution
    (GroupNorm, GELU), the width doubling each time; a 1x1 convolution to the transformer's width. The tiny ViT's
    two strided convolutions gave its heads less than a CNN of the specialist's kind learns in the same time."""
    layers: list[nn.Module] = []
    for _ in range(patch.bit_length() - 1):
        for k in range(depth + 1):
            layers += [nn.Conv2d(c_in if k == 0 else width, width, 3, 2 if k == 0 else 1, 1, bias=False),
                       nn.GroupNorm(8 if width % 8 == 0 else 1, width), nn.GELU()]
        c_in, width = width, 2 * width
    return nn.Sequential(*layers, nn.Conv2d(c_in, hidden, 1))


class TinyViT(nn.Module):
    """A small ViT with a conv stem (a plain ViT of ~0.5M parameters learns little in minutes on a CPU)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        if not cfg.conv_stem:
            self.stem = nn.Conv2d(3, cfg.hidden, cfg.patch_size, cfg.patch_size)
        elif cfg.stem_depth:
            self.stem = _conv_body(3, cfg.hidden, cfg.patch_size, cfg.stem_width or max(8, cfg.hidden // 4),
                                   cfg.stem_depth)
        else:
            self.stem = _stem(3, cfg.hidden, cfg.patch_size)
        self.num_tokens = (cfg.image_size // cfg.patch_size) ** 2
        self.position = nn.Parameter(torch.randn(1, self.num_tokens, cfg.hidden) * 0.02)
        self.blocks = nn.ModuleList([Block(cfg.hidden, cfg.heads, cfg.attention) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(cfg.hidden)
        self.out_dim = cfg.hidden

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the `feature_layer` tokens (B, N, hidden)."""
        x = self.stem((pixel_values - 0.5) / 0.25).flatten(2).transpose(1, 2) + self.position
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        states[-1] = self.norm(states[-1])
        return states[self.cfg.feature_layer if len(states) > abs(self.cfg.feature_layer) else -1]


class PretrainedViT(nn.Module):
    """CLIP / SigLIP vision tower from a Hugging Face id or directory; patch tokens of `feature_layer`."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        from transformers import CLIPVisionModel, SiglipVisionModel

        cls = CLIPVisionModel if cfg.kind == "clip" else SiglipVisionModel
        self.cfg = cfg
        self.tower = cls.from_pretrained(cfg.path)
        self.out_dim = self.tower.config.hidden_size
        side = self.tower.config.image_size // self.tower.config.patch_size
        self.num_tokens = side * side
        self.drop_cls = cfg.kind == "clip"  # CLIP prepends a class token; LLaVA uses patch tokens only

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixel_values=pixel_values, output_hidden_states=True)
        states = out.hidden_states[self.cfg.feature_layer]
        return states[:, 1:] if self.drop_cls else states


def build_vision(cfg: VisionConfig) -> nn.Module:
    return TinyViT(cfg) if cfg.kind == "tiny" else PretrainedViT(cfg)


class ImagePreprocessor:
    """uint8 RGB images -> the tensor the vision tower expects (its own processor for pretrained towers)."""

    def __init__(self, cfg: VisionConfig):
        self.cfg = cfg
        self.processor = None
        if cfg.kind != "tiny":
            from transformers import AutoImageProcessor

            self.processor = AutoImageProcessor.from_pretrained(cfg.path)

    def __call__(self, images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        if self.processor is not None:
            return self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        x = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)))).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.cfg.image_size:
            x = F.interpolate(x, size=(self.cfg.image_size, self.cfg.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return x


class SegMapEncoder(nn.Module):
    """19-class parsing map -> tokens: one-hot classes, a patch convolution, a small transformer."""

    def __init__(self, cfg: SegEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = _stem(cfg.num_classes, cfg.hidden, cfg.patch_size)
        self.num_tokens = (cfg.image_size // cfg.patch_size) ** 2
        self.position = nn.Parameter(torch.randn(1, self.num_tokens, cfg.hidden) * 0.02)
        self.blocks = nn.Sequential(*[Block(cfg.hidden, cfg.heads, cfg.attention) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(cfg.hidden)
        self.out_dim = cfg.hidden

    def forward(self, seg_maps: torch.Tensor) -> torch.Tensor:
        """(B, H, W) integer labels -> (B, N, hidden)."""
        if seg_maps.shape[-1] != self.cfg.image_size:
            seg_maps = F.interpolate(seg_maps[:, None].float(), size=(self.cfg.image_size,) * 2,
                                     mode="nearest")[:, 0]
        onehot = F.one_hot(seg_maps.long().clamp(0, self.cfg.num_classes - 1), self.cfg.num_classes)
        x = self.patch(onehot.permute(0, 3, 1, 2).to(self.position.dtype)).flatten(2).transpose(1, 2)
        return self.norm(self.blocks(x + self.position))


def build_projector(cfg: ProjectorConfig, in_dim: int, out_dim: int) -> nn.Module:
    """LLaVA's projectors: linear, or mlpNx_gelu (N linear layers with GELU between)."""
    if cfg.type == "linear":
        return nn.Linear(in_dim, out_dim)
    depth = int(cfg.type.removeprefix("mlp").split("x")[0])
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)
