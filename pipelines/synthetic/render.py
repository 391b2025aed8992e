"""Render one synthetic face: an RGB image and its exact per-part masks.

The image is painted from the same rasterised shapes the masks are saved from, in the official
CelebAMask-HQ order, so the composed label map says which part every pixel shows. Appearance
(colours, textures, wrinkles, beards, makeup) lives inside each part's region; camera effects
(lighting, noise, blur) come last and never move a mask. An occluder, when drawn, clears the masks
under it, as annotators leave occluded pixels unlabelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model.labels import EXPRESSIONS, PART_LABEL
from pipelines.label_maps import compose_label_map
from pipelines.synthetic.geometry import (
    FaceLayout,
    Polygon,
    adult_ageing,
    eye_centres,
    layout_face,
    lip_curves,
    part_shapes,
)
from pipelines.synthetic.latent import FaceFactors

# Parts that are drawn later in the official order but sit behind others physically.
BEHIND: dict[str, tuple[str, ...]] = {
    "l_ear": ("skin", "hair"), "r_ear": ("skin", "hair"),
    "neck": ("skin", "hair", "neck_l", "ear_r"),
    "cloth": ("skin", "hair", "neck_l", "ear_r"),
}

SKIN_TONES = {  # UTKFace race index -> base skin RGB
    0: (232, 190, 160), 1: (120, 80, 55), 2: (236, 200, 160), 3: (190, 140, 100), 4: (205, 160, 120),
}
PALE_SKIN = np.array((247, 228, 218), dtype=float)
HAIR_COLOURS = {
    "Black_Hair": (28, 22, 22), "Blond_Hair": (222, 190, 118), "Brown_Hair": (105, 66, 38),
    "Gray_Hair": (168, 168, 170),
}
OTHER_HAIR = ((150, 62, 32), (196, 96, 44))  # auburn, ginger: no label (hues no labelled colour has)
IRIS_COLOURS = ((88, 56, 32), (40, 30, 22), (70, 110, 160), (84, 120, 84))
LIPSTICK = ((190, 28, 52), (214, 88, 120), (140, 28, 70))
EYESHADOW = ((120, 70, 140), (110, 75, 60), (70, 100, 160))
EXPR = {name: k for k, name in enumerate(EXPRESSIONS)}


FACE_RAISE = 0.3  # how far a zoomed face moves up, per unit of face_scale above 1 (image heights)


@dataclass(frozen=True)
class Difficulty:
    """Knobs that make the tasks harder; every one also exists in params.yaml."""

    pose_rotation_deg: float = 8.0  # std of in-plane rotation
    pose_shift: float = 0.025  # std of translation, in image widths
    pose_scale: float = 0.05  # std of relative scale
    # the face's size in the frame (1: cheek to cheek ~40% of the width, where a mouth is ~8 px at 64 px); larger
    # faces are raised so the shoulders (necktie, necklace) stay in the frame, and the hair top may leave it
    face_scale: float = 1.0
    lighting: float = 0.35  # max brightness change across the image
    noise: float = 5.0  # std of sensor noise, 0-255 units
    blur: float = 0.004  # max blur radius, in image widths (Blurry faces get 0.022 more)
    occlusion: float = 0.15  # probability of an occluder entering from a lower corner
    clutter: int = 6  # max background shapes
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not 0.5 <= self.face_scale <= 2.0:
            raise ValueError(f"difficulty.face_scale must be in [0.5, 2], got {self.face_scale}")
        for name in ("pose_rotation_deg", "pose_shift", "pose_scale", "lighting", "noise", "blur"):
            if getattr(self, name) < 0:
                raise ValueError(f"difficulty.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.occlusion <= 1:
            raise ValueError(f"difficulty.occlusion is a probability, got {self.occlusion}")
        if self.clutter < 0:
            raise ValueError(f"difficulty.clutter must be >= 0, got {self.clutter}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"difficulty.jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@dataclass(frozen=True)
class Pose:
    """Similarity transform of the face about its centre (canvas units)."""

    angle: float
    scale: float
    dx: float
    dy: float
    cx: float = 0.5
    cy: float = 0.5

    def apply(self, pts: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        rel = pts - (self.cx, self.cy)
        rot = np.stack([c * rel[:, 0] - s * rel[:, 1], s * rel[:, 0] + c * rel[:, 1]], 1)
        return rot * self.scale + (self.cx + self.dx, self.cy + self.dy)

    def face_coords(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Face-frame coordinates (u, v) of every pixel centre of a size x size image."""
        p = (np.arange(size) + 0.5) / size
        x, y = np.meshgrid(p, p)
        x = (x - self.cx - self.dx) / self.scale
        y = (y - self.cy - self.dy) / self.scale
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.cx + c * x + s * y, self.cy - s * x + c * y


IDENTITY = Pose(0.0, 1.0, 0.0, 0.0)


def raster(polys: list[Polygon], size: int, pose: Pose = IDENTITY) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for poly in polys:
        pts = pose.apply(poly) * size
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=255)
    return np.asarray(img) > 0


def visible_masks(shapes: dict[str, list[Polygon]], size: int, pose: Pose,
                  occluder: list[Polygon] | None = None) -> dict[str, np.ndarray]:
    """Per-part boolean masks of what is visible; absent parts are left out."""
    r = {k: raster(v, size, pose) for k, v in shapes.items() if v}
    empty = np.zeros((size, size), dtype=bool)
    if "hair" in r:
        face = r["skin"]
        r["hair"] = (r["hair"] & ~face) | (face & r.get("_forehead", empty)) | r.get("_sideburns", empty)
    for part, front in BEHIND.items():
        if part in r:
            for other in front:
                if other in r:
                    r[part] = r[part] & ~r[other]
    blocked = raster(occluder, size) if occluder else empty
    return {k: m & ~blocked for k, m in r.items() if not k.startswith("_") and (m & ~blocked).any()}


def _blend(layer: np.ndarray, alpha: np.ndarray, colour, window=(slice(None), slice(None))) -> None:
    """layer = (1 - alpha) * layer + alpha * colour, inside `window` (alpha has the window's shape)."""
    a = np.clip(alpha, 0, 1).astype(np.float32)[..., None]
    part = layer[window]
    part *= 1 - a
    part += a * np.asarray(colour, dtype=np.float32)


class _Painter:
    """Builds the per-part colour layers of one face at one image size."""

    def __init__(self, f: FaceFactors, L: FaceLayout, pose: Pose, size: int, rng: np.random.Generator):
        self.f, self.L, self.pose, self.size, self.rng = f, L, pose, size, rng
        u, v = pose.face_coords(size)
        self.u, self.v = u.astype(np.float32), v.astype(np.float32)
        self.noise = rng.standard_normal((size, size, 1), dtype=np.float32)  # shared grain of all layers
        at = f.attributes
        skin = np.array(SKIN_TONES[f.race], dtype=float) + rng.normal(0, 8, 3)
        self.skin_rgb = 0.35 * skin + 0.65 * PALE_SKIN if at["Pale_Skin"] else skin
        # skin loses colour with age: a global cue that survives the resize to 64 px
        self.skin_rgb = self.skin_rgb + 0.45 * adult_ageing(f.age) * (self.skin_rgb.mean() - self.skin_rgb)
        colour = next((c for name, c in HAIR_COLOURS.items() if at[name]), None)
        if colour is None:
            colour = OTHER_HAIR[int(rng.integers(len(OTHER_HAIR)))]
        self.hair_rgb = np.clip(np.array(colour, float) + rng.normal(0, 7, 3), 0, 255)
        self.beard_rgb = np.array(HAIR_COLOURS["Gray_Hair"], float) if at["Gray_Hair"] else self.hair_rgb * 0.7

    def window(self, x: float, y: float, rx: float, ry: float) -> tuple[slice, slice]:
        """Pixel rows/cols that hold a face-frame box of half-size (rx, ry) around (x, y)."""
        corners = self.pose.apply(np.array([(x - rx, y - ry), (x + rx, y - ry), (x - rx, y + ry), (x + rx, y + ry)]))
        lo = np.clip(np.floor(corners.min(0) * self.size), 0, self.size).astype(int)
        hi = np.clip(np.ceil(corners.max(0) * self.size) + 1, 0, self.size).astype(int)
        return slice(lo[1], hi[1]), slice(lo[0], hi[0])

    def dab(self, layer: np.ndarray, strength: float, x: float, y: float, rx: float, ry: float, colour) -> None:
        """Blend a soft Gaussian spot of `colour` into the layer."""
        w = self.window(x, y, 3 * rx, 3 * ry)
        alpha = np.exp(-(((self.u[w] - x) / rx) ** 2 + ((self.v[w] - y) / ry) ** 2))
        _blend(layer, strength * alpha, colour, w)

    def strokes(self, lines: list[np.ndarray], width: float) -> np.ndarray:
        img = Image.new("L", (self.size, self.size), 0)
        draw = ImageDraw.Draw(img)
        w = max(1, round(width * self.size))
        for line in lines:
            pts = self.pose.apply(line) * self.size
            draw.line([(float(x), float(y)) for x, y in pts], fill=255, width=w)
        return np.asarray(img, dtype=np.float32) / 255.0

    def flat(self, rgb, noise: float = 4.0) -> np.ndarray:
        return np.asarray(rgb, dtype=np.float32) + noise * self.noise

    def skin(self) -> np.ndarray:
        L, at, u, v = self.L, self.f.attributes, self.u, self.v
        r2 = ((u - L.cx) / L.a) ** 2 + ((v - L.cy) / L.b) ** 2
        layer = self.flat(self.skin_rgb, 3.0) * (1.0 - 0.16 * np.clip(r2, 0, 1.4))[..., None]
        eyes = eye_centres(L)
        if at["High_Cheekbones"]:
            for side in (-1, 1):
                self.dab(layer, 0.55, L.cx + side * 0.55 * L.a, L.eye_y + 0.06, 0.05, 0.028,
                       np.minimum(self.skin_rgb * 1.3, 255))
                self.dab(layer, 0.55, L.cx + side * 0.7 * L.a, L.eye_y + 0.125, 0.035, 0.035,
                       self.skin_rgb * 0.6)
        if at["Rosy_Cheeks"]:
            for side in (-1, 1):
                self.dab(layer, 0.65, L.cx + side * 0.52 * L.a, L.mouth_y - 0.055, 0.05, 0.04,
                       (222, 80, 95))
        if at["Heavy_Makeup"]:
            shadow = EYESHADOW[int(self.rng.integers(len(EYESHADOW)))]
            for ex, ey in eyes:
                self.dab(layer, 0.85, ex, ey - L.eye_h - 0.01, 1.2 * L.eye_w, 0.02, shadow)
                self.dab(layer, 0.25, ex, ey + 0.07, 0.05, 0.03, (230, 120, 130))
        if at["Bags_Under_Eyes"]:
            for ex, ey in eyes:
                self.dab(layer, 0.7, ex, ey + 0.75 * L.eye_h + 0.016, 0.95 * L.eye_w, 0.016,
                       self.skin_rgb * 0.5)
        lines = self._wrinkles()
        if lines:  # darker with age, so age reads as a continuous cue
            depth = 0.5 + 0.45 * float(np.clip((self.f.age - 25) / 50, 0, 1))
            _blend(layer, depth * self.strokes(lines, 0.015), self.skin_rgb * 0.45)
        for k in range(max(0, (self.f.age - 44) // 6)):  # age spots: one more every 6 years from 50
            side = 1 if k % 2 else -1
            self.dab(layer, 0.8, L.cx + side * (0.3 + 0.1 * (k % 3)) * L.a, L.eye_y + (-0.09, 0.06, 0.1)[k % 3],
                     0.014, 0.014, self.skin_rgb * 0.55)
        if at["5_o_Clock_Shadow"]:
            jaw = (v > L.nose_tip_y + 0.01) & ((v > L.mouth_y - 0.035) | (np.abs(u - L.cx) > 0.55 * L.a))
            dots = self.rng.random((self.size, self.size)) < 0.55
            _blend(layer, 0.65 * (jaw & dots), (60, 60, 70))
        beard = []
        lips = lip_curves(L)
        if at["Mustache"]:
            pts = np.stack([lips["x"], lips["upper_top"] - 0.012], 1)
            beard.append(np.concatenate([pts[:, :] + (0, -0.014), (pts + (0, 0.012))[::-1]]))
        if at["Goatee"]:
            chin = np.asarray(lips["lower_bottom"]).max()
            t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
            beard.append(np.stack([L.cx + 0.06 * np.cos(t), chin + 0.04 + 0.045 * np.sin(t)], 1))
        if beard:
            m = raster(beard, self.size, self.pose)
            _blend(layer, 0.9 * m * (0.85 + 0.1 * self.noise[..., 0]), self.beard_rgb)
        if L.double_chin:
            t = np.linspace(0.2 * math.pi, 0.8 * math.pi, 12)
            fold = np.stack([L.cx + 0.4 * L.a * np.cos(t), L.cy + 0.93 * L.b + 0.02 * np.sin(t)], 1)
            _blend(layer, 0.75 * self.strokes([fold], 0.012), self.skin_rgb * 0.5)
        return np.clip(layer, 0, 255)

    def _wrinkles(self) -> list[np.ndarray]:
        f, L = self.f, self.L
        lines: list[np.ndarray] = []
        # forehead lines: none under 25, then one more a decade (the 40-year Young boundary: 2 -> 3)
        n_forehead = int(np.clip((f.age - 15) // 10, 0, 6))
        xs = np.linspace(L.cx - 0.55 * L.a, L.cx + 0.55 * L.a, 9)
        for k in range(n_forehead):
            y = L.brow_y - 0.035 - 0.022 * k
            lines.append(np.stack([xs, y + 0.004 * np.sin(xs * 40 + k)], 1))
        if f.age >= 40 or f.expression == EXPR["Happiness"]:
            for side in (-1, 1):
                lines.append(np.array([(L.cx + side * 0.9 * L.nose_w + side * 0.01, L.nose_tip_y - 0.01),
                                       (L.cx + side * (L.mouth_w + 0.012), L.mouth_y + 0.01)]))
        if f.age >= 45:
            for (ex, ey), side in zip(eye_centres(L), (-1, 1), strict=True):
                x0 = ex + side * (L.eye_w + 0.008)
                for dy in (-0.012, 0.0, 0.012):
                    lines.append(np.array([(x0, ey), (x0 + side * 0.035, ey + 2 * dy)]))
        if f.age >= 55:  # marionette lines from the mouth corners down
            for side in (-1, 1):
                x0 = L.cx + side * L.mouth_w
                lines.append(np.array([(x0, L.mouth_y + 0.01), (x0 - side * 0.01, L.mouth_y + 0.06)]))
        if f.expression == EXPR["Disgust"]:  # a wrinkled nose bridge
            for k in range(3):
                y = L.eye_y + 0.012 + 0.016 * k
                lines.append(np.array([(L.cx - 0.03, y), (L.cx + 0.03, y)]))
        return lines

    def hair(self) -> np.ndarray:
        at, u, v = self.f.attributes, self.u, self.v
        layer = self.flat(self.hair_rgb, 3.0)
        # periods of 0.08+ (5+ px at 64): at 0.04 (2.5 px) the resize to 64 px blurred the strands away, and a
        # straight-haired face read at chance for every learner (benchmarks/RESULTS.md, 2026-12-05)
        if at["Straight_Hair"]:
            tex = np.sign(np.sin(2 * math.pi * u / 0.08))
        elif at["Wavy_Hair"]:
            tex = np.sign(np.sin(2 * math.pi * (u + 0.04 * np.sin(2 * math.pi * v / 0.12)) / 0.08))
        else:  # short crop or curls: a dotted texture with no direction
            tex = np.sin(2 * math.pi * u / 0.1) * np.sin(2 * math.pi * v / 0.1)
        # relative strands and an added sheen: on black hair a relative +-28% is a few grey levels
        layer = layer * (1 + 0.28 * tex)[..., None] + 28.0 * tex[..., None]
        if at["Gray_Hair"]:
            _blend(layer, 0.5 * (tex > 0.5), (235, 235, 235))
        elif self.f.age > 35:  # salt and pepper: some strands grey with age, the colour still reads
            _blend(layer, 0.4 * float(np.clip((self.f.age - 35) / 45, 0, 1)) * (tex > 0.5), (205, 205, 205))
        return np.clip(layer, 0, 255)

    def eyes(self) -> np.ndarray:
        L, at = self.L, self.f.attributes
        layer = self.flat((236, 234, 228), 3.0)
        iris = IRIS_COLOURS[int(self.rng.integers(2 if self.f.race else len(IRIS_COLOURS)))]
        for ex, ey in eye_centres(L):
            w = self.window(ex, ey, 1.2 * L.eye_w, 1.2 * L.eye_w)
            u, v, part = self.u[w], self.v[w], layer[w]
            ix = ex + L.gaze * L.eye_w
            d = np.hypot(u - ix, v - ey)
            r = 0.5 * L.eye_w
            part[d < r] = iris
            part[d < 0.45 * r] = (12, 10, 10)
            part[np.hypot(u - ix - 0.3 * r, v - ey + 0.3 * r) < 0.15 * r] = (250, 250, 250)
            if at["Heavy_Makeup"] or not self.f.male:  # lashes / eyeliner: the upper lid reads dark
                lid = ey - (0.3 if at["Heavy_Makeup"] else 0.45) * L.eye_h
                _blend(layer, (v < lid) * (np.abs(u - ex) < L.eye_w), (15, 10, 10), w)
        return layer

    def glasses(self, skin_layer: np.ndarray) -> np.ndarray:
        L = self.L
        frame = self.flat((30, 28, 35) if self.rng.random() < 0.7 else (150, 110, 60), 2.0)
        lens = np.zeros((self.size, self.size), dtype=bool)
        for ex, ey in eye_centres(L):
            d = ((self.u - ex) / (1.45 * L.eye_w - 0.006)) ** 2 + ((self.v - ey - 0.004) / 0.034) ** 2
            lens |= d < 1
        tinted = skin_layer * np.array((0.8, 0.9, 1.05)) + 18
        glare = np.abs((self.u - self.v) - (L.cx - L.eye_y) + 0.06) < 0.006
        tinted[glare] = 250
        return np.clip(np.where(lens[..., None], tinted, frame), 0, 255)

    def lips(self) -> np.ndarray:
        at = self.f.attributes
        if at["Wearing_Lipstick"]:
            colour = np.array(LIPSTICK[int(self.rng.integers(len(LIPSTICK)))], float)
        else:
            colour = self.skin_rgb * (np.array((0.92, 0.55, 0.6)) if not self.f.male else np.array((0.8, 0.6, 0.58)))
        layer = self.flat(colour, 3.0)
        w = self.window(self.L.cx, self.L.mouth_y, 1.2 * self.L.mouth_w, 0.06)
        shade = np.exp(-((self.v[w] - self.L.mouth_y) / 0.006) ** 2)
        _blend(layer, 0.35 * shade, colour * 0.5, w)
        if at["Wearing_Lipstick"]:
            self.dab(layer, 0.5, self.L.cx, self.L.mouth_y + 0.6 * self.L.lip_lower, 0.02, 0.004,
                   (255, 220, 220))
        return layer

    def mouth(self) -> np.ndarray:
        layer = self.flat((60, 16, 22), 3.0)
        if self.f.expression in (EXPR["Happiness"], EXPR["Fear"]):  # teeth; a surprised mouth is a dark O
            layer[self.v < self.L.mouth_y + self.L.mouth_corner_dy * 0.3] = (238, 236, 225)
        return layer

    def cloth(self) -> np.ndarray:
        L, rng = self.L, self.rng
        base = rng.integers(20, 235, 3)
        layer = self.flat(base, 4.0)
        if rng.random() < 0.3:
            layer *= (1 + 0.18 * np.sign(np.sin(self.v * rng.uniform(80, 160))))[..., None]
        if L.necktie:
            sy, cx = L.shoulders_y, L.cx
            collar = [np.array([(cx - 0.08, sy - 0.012), (cx, sy + 0.025), (cx - 0.015, sy + 0.06)]),
                      np.array([(cx + 0.08, sy - 0.012), (cx, sy + 0.025), (cx + 0.015, sy + 0.06)])]
            _blend(layer, raster(collar, self.size, self.pose), (240, 240, 240))
            tie = [np.array([(cx - 0.026, sy + 0.02), (cx + 0.026, sy + 0.02), (cx + 0.018, sy + 0.05),
                             (cx + 0.05, 1.02), (cx - 0.05, 1.02), (cx - 0.018, sy + 0.05)])]
            _blend(layer, raster(tie, self.size, self.pose), 255 - base)
        return np.clip(layer, 0, 255)

    def hat(self) -> np.ndarray:
        layer = self.flat(self.rng.integers(10, 240, 3), 3.0)
        hat_y = self.L.cy - 0.52 * self.L.b
        _blend(layer, 0.6 * ((self.v > hat_y - 0.03) & (self.v < hat_y - 0.012)), (20, 20, 20))
        return layer

    def jewel(self) -> np.ndarray:
        colour = ((212, 175, 55), (205, 205, 215), (245, 240, 230))[int(self.rng.integers(3))]
        return self.flat(colour, 10.0)


def _background(size: int, difficulty: Difficulty, rng: np.random.Generator) -> np.ndarray:
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    theta = rng.uniform(0, 2 * math.pi)
    p = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(p, p)
    t = np.clip(0.5 + (x - 0.5) * math.cos(theta) + (y - 0.5) * math.sin(theta), 0, 1)[..., None]
    img = Image.fromarray(((1 - t) * c0 + t * c1).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, difficulty.clutter + 1))):
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * size
        w, h = rng.uniform(0.05, 0.4, 2) * size
        box = (float(x0), float(y0), float(x0 + w), float(y0 + h))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
    return np.asarray(img, dtype=np.float32)


def _occluder(rng: np.random.Generator) -> list[Polygon]:
    """A hand or object entering from a lower corner; it stays clear of every attribute-bearing part."""
    side = rng.choice([-1, 1])
    cx = 0.5 + side * rng.uniform(0.33, 0.43)
    cy = rng.uniform(0.84, 0.95)
    t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
    r = rng.uniform(0.07, 0.13) * (1 + 0.15 * np.sin(3 * t + rng.uniform(0, 6)))
    return [np.stack([cx + r * np.cos(t), cy + 1.2 * r * np.sin(t)], 1)]


@dataclass
class RenderedFace:
    image: Image.Image
    masks: dict[str, np.ndarray]  # at mask size; absent parts are not keys


def render_face(f: FaceFactors, rng: np.random.Generator, image_size: int, mask_size: int | None,
                difficulty: Difficulty) -> RenderedFace:
    """Draw one face. `rng` must be the face's own stream so faces are independent of order."""
    L = layout_face(f, rng)
    zoom = difficulty.face_scale
    pose = Pose(angle=math.radians(rng.normal(0, difficulty.pose_rotation_deg)),
                scale=zoom * float(np.clip(1 + rng.normal(0, difficulty.pose_scale), 0.85, 1.15)),
                dx=float(np.clip(rng.normal(0, difficulty.pose_shift), -0.06, 0.06)),
                dy=float(np.clip(rng.normal(0, difficulty.pose_shift), -0.04, 0.04)) - FACE_RAISE * (zoom - 1), cy=L.cy)
    occluder = _occluder(rng) if rng.random() < difficulty.occlusion else None
    shapes = part_shapes(L)
    masks = visible_masks(shapes, image_size, pose, occluder)
    label = compose_label_map(masks, (image_size, image_size))

    paint = _Painter(f, L, pose, image_size, rng)
    img = _background(image_size, difficulty, rng)
    skin = paint.skin()
    layers = {
        "skin": lambda: skin, "nose": lambda: _shaded_nose(paint, skin),
        "eye_g": lambda: paint.glasses(skin), "l_eye": paint.eyes, "r_eye": paint.eyes,
        "l_brow": lambda: paint.flat(paint.hair_rgb * (0.85 if paint.hair_rgb.mean() > 120 else 0.6)),
        "l_ear": lambda: skin * 0.92, "mouth": paint.mouth, "u_lip": paint.lips, "hair": paint.hair,
        "hat": paint.hat, "ear_r": paint.jewel, "neck_l": paint.jewel,
        "neck": lambda: skin * np.clip(0.7 + 2.0 * (paint.v - L.cy - L.b), 0.7, 0.9)[..., None],
        "cloth": paint.cloth,
    }
    aliases = {"r_eye": "l_eye", "r_brow": "l_brow", "r_ear": "l_ear", "l_lip": "u_lip"}
    built: dict[str, np.ndarray] = {}
    for part in masks:
        key = aliases.get(part, part)
        if key not in built:
            built[key] = layers[key]()
        where = label == PART_LABEL[part]
        img[where] = built[key][where]
    if occluder:
        tone = paint.skin_rgb if rng.random() < 0.6 else rng.integers(0, 256, 3)
        _blend(img, raster(occluder, image_size), tone)
    _camera(img, f, difficulty, rng)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    radius = float(rng.uniform(0, difficulty.blur)) + (0.022 if f.attributes["Blurry"] else 0.0)
    if radius * image_size >= 0.3:
        out = out.filter(ImageFilter.GaussianBlur(radius * image_size))
    saved = visible_masks(shapes, mask_size, pose, occluder) if mask_size else {}
    return RenderedFace(image=out, masks=saved)


def _shaded_nose(paint: _Painter, skin: np.ndarray) -> np.ndarray:
    L = paint.L
    layer = skin * 0.75  # the nose's outline shows (at 0.94 its width, Big_Nose's cue, hardly did; 0.85 hardly more)
    for side in (-1, 1):  # the nostrils grow with the nose: a big nose's are apart and large at 64 px
        paint.dab(layer, 0.8, L.cx + side * 0.42 * L.nose_w, L.nose_tip_y + 0.004, 0.225 * L.nose_w,
                  0.125 * L.nose_w, (50, 30, 30))
    paint.dab(layer, 0.3, L.cx, L.nose_tip_y - 0.04, 0.006, 0.03, np.minimum(paint.skin_rgb * 1.2, 255))
    if L.nose_pointy:  # the tip hanging below the wings lies in shadow: a dark point that a 64-px face still shows
        paint.dab(layer, 0.9, L.cx, L.nose_tip_y + 0.045, 0.02, 0.03, (60, 35, 35))
    return layer


def _camera(img: np.ndarray, f: FaceFactors, d: Difficulty, rng: np.random.Generator) -> None:
    size = img.shape[0]
    theta = rng.uniform(0, 2 * math.pi)
    p = (np.arange(size) + 0.5) / size - 0.5
    x, y = np.meshgrid(p, p)
    ramp = x * math.cos(theta) + y * math.sin(theta)
    gain = 1 + rng.uniform(-0.12, 0.12) + rng.uniform(0, d.lighting) * ramp
    img *= gain[..., None].astype(np.float32)
    if d.noise > 0:
        img += d.noise * rng.standard_normal(img.shape, dtype=np.float32)
