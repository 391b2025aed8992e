"""A contact sheet: faces beside their colourised parsing maps, positive attributes underneath."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from model.labels import CELEBA_ATTRIBUTES
from pipelines.datasets.common import Record
from pipelines.label_maps import colorize, load_label_map
from pipelines.storage import atomic_path, read_url

TILE = 128
TEXT_H = 64


def contact_sheet(records: list[Record], columns: int = 4) -> Image.Image:
    rows = (len(records) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * 2 * TILE, rows * (TILE + TEXT_H)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, rec in enumerate(records):
        x, y = (k % columns) * 2 * TILE, (k // columns) * (TILE + TEXT_H)
        with Image.open(io.BytesIO(read_url(rec.image))) as img:
            sheet.paste(img.convert("RGB").resize((TILE, TILE), Image.BILINEAR), (x, y))
        label_map = load_label_map(rec.masks)
        if label_map is not None:
            sheet.paste(Image.fromarray(colorize(label_map)).resize((TILE, TILE), Image.NEAREST), (x + TILE, y))
        positive = [n for n, v in zip(CELEBA_ATTRIBUTES, rec.attributes or [], strict=False) if v == 1]
        text = f"#{rec.id}: " + ", ".join(n.replace("_", " ") for n in positive)
        lines = textwrap.wrap(text, width=42)[:5]
        draw.multiline_text((x + 3, y + TILE + 2), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=1)
    return sheet


def write_contact_sheet(records: list[Record], path: Path, faces: int) -> None:
    chosen = records[:faces]
    if not chosen:
        return
    with atomic_path(path) as tmp:
        contact_sheet(chosen).save(tmp)
