"""Training speed alone and beside another busy PyTorch process on the same cores (notebooks run beside other work).

Each configuration runs in a fresh process (OpenMP reads its environment when torch is imported):
a short default `bf.tl.pretrain` of PBMC 3k cells, once alone and once while a second process
multiplies matrices with torch's default threads. Prints seconds and the slowdown; writes
``benchmarks/results/shared_cores.md``.

    python benchmarks/shared_cores.py [--cells 512] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

TRAIN = """
import time, warnings, sys, torch
warnings.filterwarnings("ignore")
import bioformers as bf
threads = {threads}
if threads:
    torch.set_num_threads(threads)
adata = bf.datasets.pbmc3k()[:{cells}].copy()
start = time.perf_counter()
bf.tl.pretrain(adata, max_epochs={epochs}, train_size=1.0, enable_progress_bar=False)
print(time.perf_counter() - start)
"""

BUSY = """
import torch
a = torch.randn(512, 512)
while True:
    a = (a @ a).tanh()
"""

CONFIGS = {
    "default": ({}, 0),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
    "torch.set_num_threads(1)": ({}, 1),
}


def run(env: dict, threads: int, cells: int, epochs: int) -> float:
    code = TRAIN.format(threads=threads, cells=cells, epochs=epochs)
    out = subprocess.run([sys.executable, "-c", code], env=os.environ | env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for name, (env, threads) in CONFIGS.items():
        alone = run(env, threads, args.cells, args.epochs)
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
        try:
            time.sleep(2)
            beside = run(env, threads, args.cells, args.epochs)
        finally:
            busy.kill()
            busy.wait()
        rows.append((name, alone, beside))
        print(f"{name}: alone {alone:.1f} s, beside a busy process {beside:.1f} s ({beside / alone:.1f}x)", flush=True)
    lines = [
        f"# Training alone and beside a busy PyTorch process ({os.cpu_count()} cores)",
        "",
        f"`bf.tl.pretrain` defaults, {args.cells} PBMC 3k cells, {args.epochs} epochs, no validation; the busy "
        "process multiplies 512 x 512 matrices with torch's default threads. One run each.",
        "",
        "| setting | alone (s) | beside (s) | slowdown |",
        "|---|---|---|---|",
        *[f"| {name} | {alone:.1f} | {beside:.1f} | {beside / alone:.1f}x |" for name, alone, beside in rows],
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shared_cores.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
