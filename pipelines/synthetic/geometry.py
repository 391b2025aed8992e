"""Face geometry: where every part is, as polygons in canvas units ([0, 1] square, y down).

A `FaceLayout` holds the scalar measurements of one face (drawn from its factors and its own
random stream); `part_shapes` turns them into one polygon list per parsing part. Visible masks
come from rasterising these shapes and removing what lies physically in front (see render.py),
so the masks are exactly the geometry that was drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.labels import EXPRESSIONS
from pipelines.synthetic.latent import FaceFactors

Polygon = np.ndarray  # (n, 2) points in canvas units

EXPR = {name: k for k, name in enumerate(EXPRESSIONS)}


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40,
            t0: float = 0.0, t1: float = 2 * math.pi) -> Polygon:
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * math.pi - 1e-9)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def band(points: Polygon, half_width: np.ndarray | float) -> Polygon:
    """A stroke of varying half-width along a polyline, as one closed polygon."""
    d = np.gradient(points, axis=0)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
    hw = np.broadcast_to(np.asarray(half_width, dtype=float), (len(points),))[:, None]
    return np.concatenate([points + normal * hw, (points - normal * hw)[::-1]])


def between(xs: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> Polygon:
    """The region between two curves y=top(x) and y=bottom(x) sampled at xs."""
    return np.concatenate([np.stack([xs, top], 1), np.stack([xs[::-1], bottom[::-1]], 1)])


@dataclass(frozen=True)
class FaceLayout:
    cx: float
    cy: float
    a: float  # face half-width
    b: float  # face half-height
    jaw_exponent: float  # superellipse exponent of the lower face (2 = round, higher = square)
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    gaze: float
    brow_y: float
    brow_half_thickness: float
    brow_arch: float
    brow_inner_dy: float  # + lowers the inner ends (anger), - raises them (sadness, fear)
    nose_tip_y: float
    nose_w: float
    nose_pointy: bool
    mouth_y: float
    mouth_w: float
    mouth_corner_dy: float  # - raises the corners (smile)
    lip_upper: float
    lip_lower: float
    mouth_gap: float  # 0 when closed
    ear_dy: float
    long_hair: bool
    hairline: str  # "normal" | "bangs" | "receding"
    wavy: bool
    double_chin: bool
    glasses: bool
    hat: bool
    bald: bool
    sideburns: bool
    earrings: bool
    necklace: bool
    necktie: bool
    shoulders_y: float
    male: bool = False


def adult_ageing(age: float) -> float:
    """0 up to 30, 1 from 80: how far the adult ageing cues (thin lips, faded skin) have gone."""
    return float(np.clip((age - 30) / 50, 0, 1))


def layout_face(f: FaceFactors, rng: np.random.Generator) -> FaceLayout:
    at = f.attributes
    kid = f.age < 13
    j = lambda s: float(rng.normal(0.0, s))  # noqa: E731 - small per-face jitter
    # Cues are sized for the 64-px corpus (1 px = 0.016 canvas units): each is 2+ px where it shows.
    a = 0.205 + 0.014 * f.male + 0.03 * at["Chubby"] - 0.02 * at["Oval_Face"] \
        + 0.006 * float(np.clip(f.weight, -2, 2)) + j(0.005)
    b = 0.285 + 0.035 * at["Oval_Face"] - 0.008 * at["Chubby"] + j(0.005)
    growth = min(f.age, 16) / 16.0  # children's faces are smaller and rounder, growing to adult size
    a, b = a * (0.76 + 0.24 * growth), b * (0.66 + 0.34 * growth)
    cx, cy = 0.5, 0.47
    expr = f.expression
    # Each expression is a distinct combination of eye opening, brow lift / inner-brow tilt and mouth shape.
    eye_open = {EXPR["Surprise"]: 1.9, EXPR["Fear"]: 1.7, EXPR["Happiness"]: 0.5,
                EXPR["Disgust"]: 0.45, EXPR["Anger"]: 0.65, EXPR["Sadness"]: 0.8}.get(expr, 1.0)
    eye_w = (0.4 - 0.14 * growth) * a + j(0.002)
    eye_h = 0.5 * eye_w * eye_open * (0.45 if at["Narrow_Eyes"] else 1.0)
    eye_y = cy - 0.05 * growth + j(0.003)
    brow_lift = {EXPR["Surprise"]: 0.06, EXPR["Fear"]: 0.035, EXPR["Anger"]: -0.02,
                 EXPR["Disgust"]: -0.018}.get(expr, 0.0)
    brow_inner = {EXPR["Anger"]: 0.05, EXPR["Disgust"]: 0.02, EXPR["Sadness"]: -0.045,
                  EXPR["Fear"]: -0.04}.get(expr, 0.0)
    corner = {EXPR["Happiness"]: -0.065, EXPR["Sadness"]: 0.05, EXPR["Anger"]: 0.015,
              EXPR["Disgust"]: 0.03, EXPR["Fear"]: 0.012}.get(expr, 0.0)
    mouth_scale = {EXPR["Happiness"]: 1.25, EXPR["Surprise"]: 0.72, EXPR["Fear"]: 1.2,
                   EXPR["Anger"]: 0.85}.get(expr, 1.0)
    lip_scale = (2.2 if at["Big_Lips"] else 1.0) * (0.6 if expr == EXPR["Anger"] else 1.0) \
        * (1.2 if not f.male else 1.0) * (1.0 - 0.35 * adult_ageing(f.age))  # lips thin with age
    gap = 0.0
    if at["Mouth_Slightly_Open"]:
        gap = 0.034 + float(rng.uniform(0, 0.016)) + (0.035 if expr == EXPR["Surprise"] else 0.0)
    long_hair = (not at["Bald"]) and bool(rng.random() < (0.08 if f.male else 0.82) + 0.1 * kid)
    hairline = "bangs" if at["Bangs"] else "receding" if at["Receding_Hairline"] else "normal"
    return FaceLayout(
        cx=cx, cy=cy, a=a, b=b,
        jaw_exponent=(2.0 + (1.4 if f.male else 0.0) * (0.4 + 0.6 * growth)) - 0.5 * at["Chubby"],
        eye_y=eye_y, eye_dx=0.44 * a, eye_w=eye_w, eye_h=eye_h, gaze=j(0.15),
        brow_y=eye_y - 0.062 - brow_lift + j(0.003),
        brow_half_thickness=(0.026 if at["Bushy_Eyebrows"] else 0.013) + 0.005 * f.male,
        brow_arch=0.03 if at["Arched_Eyebrows"] else 0.003,
        brow_inner_dy=brow_inner,
        nose_tip_y=cy + 0.065 + 0.04 * growth + 0.018 * at["Big_Nose"] + j(0.003),
        nose_w=(0.032 + 0.008 * growth) * (2.4 if at["Big_Nose"] else 1.0),
        nose_pointy=at["Pointy_Nose"],
        mouth_y=cy + 0.16 + 0.018 * growth + j(0.003),
        mouth_w=0.42 * a * mouth_scale, mouth_corner_dy=corner,
        lip_upper=0.014 * lip_scale, lip_lower=0.019 * lip_scale, mouth_gap=gap,
        ear_dy=0.045 + j(0.004),
        long_hair=long_hair, hairline=hairline, wavy=at["Wavy_Hair"], double_chin=at["Double_Chin"],
        glasses=at["Eyeglasses"], hat=at["Wearing_Hat"], bald=at["Bald"], sideburns=at["Sideburns"],
        earrings=at["Wearing_Earrings"], necklace=at["Wearing_Necklace"], necktie=at["Wearing_Necktie"],
        shoulders_y=cy + b + 0.095 + j(0.005), male=f.male,
    )


def face_outline(L: FaceLayout, n: int = 64) -> Polygon:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    lower = s > 0
    e = 2.0 / L.jaw_exponent
    x = np.where(lower, np.sign(c) * np.abs(c) ** e, c)
    y = np.where(lower, np.abs(s) ** e, s)
    return np.stack([L.cx + L.a * x, L.cy + L.b * y], 1)


def hairline_y(L: FaceLayout, x: np.ndarray) -> np.ndarray:
    d = (x - L.cx) / L.a
    if L.hairline == "bangs":
        return L.brow_y - 0.018 + 0.05 * d ** 2
    if L.hairline == "receding":
        return L.cy - 0.74 * L.b - 0.16 * d ** 2
    return L.cy - 0.6 * L.b + 0.06 * d ** 2


def eye_centres(L: FaceLayout) -> list[tuple[float, float]]:
    """Image-left eye first (l_eye), then image-right (r_eye)."""
    return [(L.cx - L.eye_dx, L.eye_y), (L.cx + L.eye_dx, L.eye_y)]


def ear_centres(L: FaceLayout) -> list[tuple[float, float]]:
    return [(L.cx - 0.985 * L.a, L.eye_y + L.ear_dy), (L.cx + 0.985 * L.a, L.eye_y + L.ear_dy)]


def lip_curves(L: FaceLayout, n: int = 25) -> dict[str, np.ndarray]:
    """x samples and the four lip edges; the mouth opening lies between the two inner ones."""
    xs = np.linspace(L.cx - L.mouth_w, L.cx + L.mouth_w, n)
    d = (xs - L.cx) / L.mouth_w
    taper = np.sqrt(np.clip(1 - d ** 2, 0, 1))
    mid = L.mouth_y + L.mouth_corner_dy * d ** 2
    half_gap = 0.5 * L.mouth_gap * taper
    bow = 0.25 * L.lip_upper * np.exp(-(d / 0.12) ** 2)  # the dip of the cupid's bow
    return {
        "x": xs,
        "upper_top": mid - half_gap - L.lip_upper * (0.35 + 0.65 * taper) + bow,
        "upper_bottom": mid - half_gap,
        "lower_top": mid + half_gap,
        "lower_bottom": mid + half_gap + L.lip_lower * (0.3 + 0.7 * taper),
    }


def part_shapes(L: FaceLayout) -> dict[str, list[Polygon]]:
    """Raw shapes per part plus helper shapes (keys starting with '_') used to cut the hair."""
    cx, cy, a, b = L.cx, L.cy, L.a, L.b
    shapes: dict[str, list[Polygon]] = {k: [] for k in (
        "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth", "u_lip",
        "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth", "_forehead", "_sideburns")}
    shapes["skin"].append(face_outline(L))
    if L.double_chin:
        shapes["skin"].append(ellipse(cx, cy + 0.98 * b, 0.5 * a, 0.065))
    # Eyes: almond shapes.
    for part, (ex, ey) in zip(("l_eye", "r_eye"), eye_centres(L), strict=True):
        xs = np.linspace(ex - L.eye_w, ex + L.eye_w, 17)
        taper = np.sqrt(np.clip(1 - ((xs - ex) / L.eye_w) ** 2, 0, 1))
        shapes[part].append(between(xs, ey - L.eye_h * taper ** 0.8, ey + 0.75 * L.eye_h * taper))
    # Brows: arched strokes above the eyes; the inner end is the one nearer the midline.
    for part, (ex, _), side in zip(("l_brow", "r_brow"), eye_centres(L), (-1, 1), strict=True):
        xs = np.linspace(ex - 1.2 * L.eye_w, ex + 1.2 * L.eye_w, 15)
        rel = (xs - ex) / (1.2 * L.eye_w)  # -1..1 left to right
        inner = (1 - side * rel) / 2  # 1 at the inner end, 0 at the outer end
        ys = L.brow_y - L.brow_arch * (1 - (rel + 0.2 * side) ** 2) + L.brow_inner_dy * inner ** 2
        hw = L.brow_half_thickness * (0.55 + 0.45 * inner)
        shapes[part].append(band(np.stack([xs, ys], 1), hw))
    # Nose: bridge to wings to tip. A pointy nose's tip hangs 0.065 below the wings and ends in a point (4 px at 64)
    # at the width of a plain one's: narrowed as well it was a sub-pixel sliver no learner read (RESULTS.md).
    top = L.eye_y + 0.005
    nw, ty = L.nose_w, L.nose_tip_y
    tip, tip_w, point = (ty + 0.065, 0.3 * nw, 0.012) if L.nose_pointy else (ty + 0.01, 0.35 * nw, 0.002)
    shapes["nose"].append(np.array([
        (cx - 0.011, top), (cx + 0.011, top), (cx + 0.35 * nw, ty - 0.03), (cx + nw, ty - 0.004),
        (cx + 0.75 * nw, ty + 0.01), (cx + tip_w, tip), (cx, tip + point),
        (cx - tip_w, tip), (cx - 0.75 * nw, ty + 0.01),
        (cx - nw, ty - 0.004), (cx - 0.35 * nw, ty - 0.03)]))
    # Mouth and lips.
    lips = lip_curves(L)
    shapes["u_lip"].append(between(lips["x"], lips["upper_top"], lips["upper_bottom"]))
    shapes["l_lip"].append(between(lips["x"], lips["lower_top"], lips["lower_bottom"]))
    if L.mouth_gap > 0:
        shapes["mouth"].append(between(lips["x"], lips["upper_bottom"], lips["lower_top"]))
    # Ears, earrings.
    for part, (ex, ey), side in zip(("l_ear", "r_ear"), ear_centres(L), (-1, 1), strict=True):
        shapes[part].append(ellipse(ex + side * 0.008, ey, 0.03, 0.056))
        if L.earrings:
            shapes["ear_r"].append(ellipse(ex + side * 0.008, ey + 0.076, 0.026, 0.036, n=16))
    # Glasses: two lenses (frame + glass), a bridge, the arms to the ears.
    if L.glasses:
        for ex, ey in eye_centres(L):
            shapes["eye_g"].append(ellipse(ex, ey + 0.004, 1.45 * L.eye_w + 0.01, 0.05, n=32))
        lx = eye_centres(L)[0][0] + 1.5 * L.eye_w
        rx = eye_centres(L)[1][0] - 1.5 * L.eye_w
        shapes["eye_g"].append(band(np.array([(lx, L.eye_y - 0.006), (cx, L.eye_y - 0.012),
                                              (rx, L.eye_y - 0.006)]), 0.009))
        for side in (-1, 1):
            x0 = cx + side * (L.eye_dx + 1.5 * L.eye_w)
            shapes["eye_g"].append(band(np.array([(x0, L.eye_y - 0.01), (cx + side * 0.99 * a, L.eye_y - 0.006)]),
                                        0.009))
    # Neck and clothes.
    sy = L.shoulders_y
    neck = 0.66 if L.male else 0.46  # a man's neck is broader (a cue of sex beside the jaw and brows)
    shapes["neck"].append(np.array([(cx - neck * a, cy + 0.5 * b), (cx + neck * a, cy + 0.5 * b),
                                    (cx + (neck + 0.03) * a, 1.02), (cx - (neck + 0.03) * a, 1.02)]))
    v_depth = 0.02 if L.necktie else 0.075
    shapes["cloth"].append(np.array([
        (cx - 0.47, 1.02), (cx - 0.42, sy + 0.05), (cx - 0.3, sy), (cx - 0.5 * a, sy - 0.012), (cx, sy + v_depth),
        (cx + 0.5 * a, sy - 0.012), (cx + 0.3, sy), (cx + 0.42, sy + 0.05), (cx + 0.47, 1.02)]))
    if L.necklace:
        xs = np.linspace(cx - 0.48 * a, cx + 0.48 * a, 21)
        ys = cy + b + 0.012 + (sy + 0.035 - (cy + b + 0.012)) * (1 - ((xs - cx) / (0.48 * a)) ** 2)
        shapes["neck_l"].append(band(np.stack([xs, ys], 1), 0.012))
        shapes["neck_l"].append(ellipse(cx, sy + 0.05, 0.022, 0.026, n=16))
    # Hair: an outer shape; the face is cut away below the hairline (see render.visible_masks).
    if not L.bald:
        if L.long_hair:
            cap = ellipse(cx, cy - 0.01, a + 0.035, b + 0.028, n=33, t0=math.pi, t1=2 * math.pi)
            bottom = min(0.97, sy + 0.06)
            ys = np.linspace(cap[-1, 1], bottom, 16)
            wave = 0.03 * np.sin((ys - cy) * 45) if L.wavy else np.zeros_like(ys)
            right = np.stack([cx + a + 0.035 + 0.25 * (ys - ys[0]) * 0.3 + wave, ys], 1)
            left = np.stack([cx - a - 0.035 - 0.25 * (ys - ys[0]) * 0.3 - wave, ys], 1)[::-1]
            shapes["hair"].append(np.concatenate([cap, right, left]))
        else:
            limit = L.eye_y + 0.015
            t = np.linspace(math.pi, 2 * math.pi, 33)
            cap = np.stack([cx + (a + 0.022) * np.cos(t), cy - 0.012 + (b + 0.02) * np.sin(t)], 1)
            cap[:, 1] = np.minimum(cap[:, 1], limit)
            ends = np.array([(cx + a + 0.022, limit), (cx - a - 0.022, limit)])
            shapes["hair"].append(np.concatenate([cap, ends]))
        xs = np.linspace(cx - a - 0.08, cx + a + 0.08, 33)
        shapes["_forehead"].append(np.concatenate([np.stack([xs, hairline_y(L, xs)], 1),
                                                   np.array([(xs[-1], -0.1), (xs[0], -0.1)])]))
        if L.sideburns:
            for side in (-1, 1):
                x_out, x_in = cx + side * (a + 0.005), cx + side * (a - 0.03)
                shapes["_sideburns"].append(np.array([(x_out, L.eye_y - 0.04), (x_in, L.eye_y - 0.04),
                                                      (x_in + side * 0.006, L.eye_y + 0.085),
                                                      (x_out, L.eye_y + 0.085)]))
    if L.hat:
        hat_y = cy - 0.52 * b
        crown = ellipse(cx, cy - 0.5 * b, a + 0.035, 0.62 * b, n=33, t0=math.pi, t1=2 * math.pi)
        shapes["hat"].append(crown)
        shapes["hat"].append(ellipse(cx, hat_y, a + 0.085, 0.022, n=32))
    return shapes
