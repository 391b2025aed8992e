"""Synthetic faces as the corpus would hold them, without the DAG: render, JPEG, decode, resize.

For quick checks of the renderer (benchmarks/learnability.py --render): the same factors, renderer,
image sizes, JPEG round trip, RAF-DB aligned crop and corpus resize as ingest + build_corpus, in memory.
"""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from pipelines.synthetic.latent import CELEBA_POPULATION, RAFDB_POPULATION, UTKFACE_POPULATION, sample_faces
from pipelines.synthetic.render import render_face
from pipelines.synthetic.writers import SyntheticConfig, face_rng, rafdb_aligned

POPULATIONS = {"celebamask_hq": CELEBA_POPULATION, "utkface": UTKFACE_POPULATION, "rafdb": RAFDB_POPULATION}


def _row(args: tuple[str, int, int, Any, SyntheticConfig, int]) -> dict[str, Any]:
    dataset, seed, index, face, cfg, size = args
    side = {"celebamask_hq": cfg.image_size, "utkface": cfg.utkface_size, "rafdb": cfg.rafdb_size}[dataset]
    image = render_face(face, face_rng(seed, dataset, index), side, None, cfg.difficulty).image
    if dataset == "rafdb":
        image = rafdb_aligned(image)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=cfg.difficulty.jpeg_quality)
    with Image.open(buf) as img:
        pixels = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))
    has_attrs = dataset == "celebamask_hq"
    return {"image": pixels, "dataset": dataset,
            "attributes": np.array([v > 0 for v in face.label_vector()] if has_attrs else [-1] * 40, np.int8),
            "age": face.age if dataset == "utkface" else -1,
            "gender": (0 if face.male else 1) if dataset == "utkface" else -1,
            "race": face.race if dataset == "utkface" else -1,
            "expression": face.expression if dataset == "rafdb" else -1}


def render_rows(counts: dict[str, int], seed: int, cfg: SyntheticConfig, size: int, workers: int = 2
                ) -> list[dict[str, Any]]:
    """counts: faces per dataset -> one row per face (image size x size, labels, -1 where none)."""
    jobs = []
    for code, (dataset, n) in enumerate(counts.items()):
        faces = sample_faces(POPULATIONS[dataset], n, np.random.default_rng([seed, code, 7]))
        jobs += [(dataset, seed, k, face, cfg, size) for k, face in enumerate(faces)]
    if workers <= 1:
        return [_row(job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_row, jobs, chunksize=32))
