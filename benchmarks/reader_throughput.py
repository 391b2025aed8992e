"""Dataset reader throughput: records/s for each format, with and without decoding every image.

    python benchmarks/reader_throughput.py [--faces 1000] [--s3]

Renders a synthetic set once into a temp dir, then times each reader on it. With --s3 it also
starts a local moto_server and times the readers on s3:// (listing + ETags, and full reads).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.datasets.celebamask_hq import read_celebamask_hq
from pipelines.datasets.rafdb import read_rafdb
from pipelines.datasets.utkface import read_utkface
from pipelines.synthetic.writers import SyntheticConfig, write_synthetic


def time_readers(roots: dict[str, str], label: str) -> None:
    readers = {
        "celebamask_hq": lambda root, d: read_celebamask_hq(root, d),
        "utkface": lambda root, d: read_utkface(root, 0.1, 0.1, d),
        "rafdb": lambda root, d: read_rafdb(root, 0.1, d),
    }
    for name, read in readers.items():
        for decode in (False, True):
            start = time.perf_counter()
            res = read(roots[name], decode)
            rate = res.read / (time.perf_counter() - start)
            print(f"{label:6s} {name:14s} decode={str(decode):5s} {res.read:6d} records {rate:9.1f} records/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=1000)
    ap.add_argument("--s3", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SyntheticConfig(celebamask_hq=args.faces, utkface=args.faces, rafdb=args.faces, defects=0)
        roots = write_synthetic(Path(tmp), 1, cfg)
        time_readers({k: str(v) for k, v in roots.items()}, "local")
        if args.s3:
            import boto3

            from pipelines.ray_session import free_port
            from pipelines.storage import upload_dir

            port = free_port()
            server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                                       "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="x",
                                  AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
                time.sleep(2)
                boto3.client("s3").create_bucket(Bucket="bench")
                s3_roots = {}
                for name, local in roots.items():
                    upload_dir(local, f"s3://bench/{local.name}")
                    s3_roots[name] = f"s3://bench/{local.name}"
                time_readers(s3_roots, "s3")
            finally:
                server.terminate()
                server.wait()


if __name__ == "__main__":
    main()
