"""Why the test suite runs torch on one thread per process: a small model's training steps, alone and two processes
at once, with torch's default threads (one per core) and with one.

    python benchmarks/thread_contention.py [--steps 400]

Each configuration starts fresh processes (OMP_NUM_THREADS set before torch is imported) and prints the seconds of
each process' steps. On 2 cores two 2-thread processes wait on each other's cores at every parallel region.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

STEPS = """
import sys, time, torch
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1),
                        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 40))
opt = torch.optim.AdamW(m.parameters(), 1e-3)
x, y = torch.randn(8, 3, 32, 32), torch.randn(8, 40)
start = time.perf_counter()
for _ in range(int(sys.argv[1])):
    loss = ((m(x) - y) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"{time.perf_counter() - start:.2f}")
"""


def run(processes: int, threads: str | None, steps: int) -> list[float]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # torch's default: one thread per core
    if threads:
        env["OMP_NUM_THREADS"] = threads
    procs = [subprocess.Popen([sys.executable, "-c", STEPS, str(steps)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    return [float(p.communicate()[0]) for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    from pipelines.provenance import host_tags

    print(f"CPU: {host_tags()['host.cpu']}, {os.cpu_count()} cores; {args.steps} steps of a small CNN, batch 8")
    for processes, threads in ((1, None), (1, "1"), (2, None), (2, "1")):
        seconds = run(processes, threads, args.steps)
        label = f"{processes} process{'es' if processes > 1 else ''}, {threads or 'default'} thread(s)"
        print(f"{label:<32} " + ", ".join(f"{s:.2f} s" for s in seconds))


if __name__ == "__main__":
    main()
