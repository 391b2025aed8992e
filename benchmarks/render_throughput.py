"""Synthetic face rendering throughput: faces/s per dataset format, 1 vs N worker processes.

    python benchmarks/render_throughput.py [--faces 400] [--workers 2] [--image-size 256]

Prints one row per (format, workers) with faces/s and the parallel speed-up. Writes to a temp dir.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipelines.synthetic.writers import SyntheticConfig, write_celebamask_hq, write_rafdb, write_utkface

WRITERS = {"celebamask_hq (image + masks)": (write_celebamask_hq, "celebamask_hq"),
           "utkface": (write_utkface, "utkface"), "rafdb (original + aligned)": (write_rafdb, "rafdb")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=256)
    args = ap.parse_args()
    print(f"{'format':32s} {'workers':>7s} {'faces/s':>9s} {'speed-up':>9s}")
    for label, (write, key) in WRITERS.items():
        base = None
        for workers in sorted({1, args.workers}):
            cfg = SyntheticConfig(**{"celebamask_hq": 0, "utkface": 0, "rafdb": 0, key: args.faces},
                                  image_size=args.image_size, mask_size=args.image_size // 2,
                                  utkface_size=args.image_size, rafdb_size=args.image_size, defects=0,
                                  workers=workers)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                write(Path(tmp) / "out", 1, cfg)
                rate = args.faces / (time.perf_counter() - start)
            base = base or rate
            print(f"{label:32s} {workers:7d} {rate:9.1f} {rate / base:8.2f}x")


if __name__ == "__main__":
    main()
