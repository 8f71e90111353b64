"""Training from disk: memory and throughput of ``bf.tl.pretrain``'s streaming path, 100k to 1M cells.

1. Builds a corpus per size in a temporary directory: 4 h5ad files of equal numbers of cells, each
   holding the 2,000 seurat_v3 highly variable genes of PBMC 3k except its own block of 200 (file
   ``k`` lacks genes ``200k`` to ``200k + 199``), cells resampled from PBMC 3k as
   ``embed_large.py`` does (Poisson(s * x), s ~ LogNormal(log 0.9, 0.25)); written a chunk at a time.
2. For each size, in a fresh process: opens the 4 files backed and runs ``bf.tl.pretrain(files,
   max_steps=...)`` with the defaults: the pass over the counts (checks, binning scale, vocabulary),
   the model from its registry, training on the :class:`~bioformers.data.StreamingDataModule` for a
   fixed number of steps, the count decoder's fit on 20,000 cells. Left out: the embedding of every
   cell that ``pretrain`` writes at the end (timed in ``embed_large.py``). Memory: resident set after
   imports and opening the files (baseline) and the peak over the call (Linux ``VmHWM``, reset first).
3. In-memory reference, same model and steps: the smallest corpus's first file loaded into memory,
   ``bf.tl.pretrain(adata, train_size=1.0, max_steps=...)`` through scvi-tools' own data loader.

Default model (4 layers, d=64, max_seq_len 256), batch 64, bf16 where the CPU has it. Writes
``results/train_from_disk.{json,md}``.

    python benchmarks/train_from_disk.py [--sizes 100000 1000000] [--steps 300] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from embed_large import _reset_peak, _status_gib, pbmc_hvg

RESULTS = Path(__file__).parent / "results"
N_FILES, DROPPED, BUILD_CHUNK, BATCH_SIZE = 4, 200, 10_000, 64


def build_corpus(reference, n_cells: int, directory: Path, seed: int = 0) -> list[Path]:
    """``N_FILES`` files of ``n_cells / N_FILES`` cells each, file ``k`` without its own block of genes."""
    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem
    from scipy import sparse

    rng = np.random.default_rng(seed)
    counts = sparse.csr_matrix(reference.X, dtype=np.float32)
    paths = []
    for k in range(N_FILES):
        keep = np.setdiff1d(np.arange(reference.n_vars), np.arange(k * DROPPED, (k + 1) * DROPPED))
        path = directory / f"part_{k}.h5ad"
        n = n_cells // N_FILES
        obs = pd.DataFrame(index=pd.Index([f"cell_{k}_{i}" for i in range(n)]))
        ad.AnnData(obs=obs, var=reference.var.iloc[keep][[]].copy()).write_h5ad(path)
        for start in range(0, n, BUILD_CHUNK):
            chunk = counts[rng.integers(0, counts.shape[0], min(BUILD_CHUNK, n - start))]
            scale = np.repeat(rng.lognormal(np.log(0.9), 0.25, chunk.shape[0]), np.diff(chunk.indptr))
            chunk.data = rng.poisson(chunk.data * scale).astype(np.float32)
            chunk = chunk[:, keep].tocsr()
            chunk.eliminate_zeros()
            empty = np.flatnonzero(np.diff(chunk.indptr) == 0)
            if empty.size:  # keep every cell non-empty: one count in its first gene
                chunk = chunk.tolil()
                chunk[empty, 0] = 1
                chunk = chunk.tocsr()
            with h5py.File(path, "a") as f:
                if "X" in f:
                    sparse_dataset(f["X"]).append(chunk)
                else:
                    write_elem(f, "X", chunk)
        paths.append(path)
    return paths


def child(paths: list[str], steps: int, in_memory: bool) -> None:
    """``bf.tl.pretrain`` of ``paths`` (or, ``in_memory``, of the first loaded into memory); print one JSON line."""
    import gc

    import anndata as ad
    import lightning.pytorch as pl
    import torch

    import bioformers as bf
    import bioformers.tl._from_disk
    import bioformers.tl._pretrain

    # the embedding of every cell after training is left out here (timed in embed_large.py: ~740 cells/s)
    for module in (bioformers.tl._pretrain, bioformers.tl._from_disk):
        module.write_results = lambda *args, **kwargs: None

    class Timer(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.seconds, self.steps = time.perf_counter() - self.start, trainer.global_step

    sources = [ad.read_h5ad(path, backed=None if in_memory else "r") for path in paths]
    timer = Timer()
    train = {"max_steps": steps, "batch_size": BATCH_SIZE, "enable_progress_bar": False, "callbacks": [timer]}
    gc.collect()
    baseline = _status_gib("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    if in_memory:
        model = bf.tl.pretrain(sources[0], train_size=1.0, **train)
    else:
        model = bf.tl.pretrain(sources, **train)
    total = time.perf_counter() - start
    print(
        json.dumps(
            {
                "n_cells": sum(s.n_obs for s in sources),
                "in_memory": in_memory,
                "baseline_rss_gib": baseline,
                "peak_rss_gib": _status_gib("VmHWM"),
                "before_training_seconds": timer.start - start,
                "train_seconds": timer.seconds,
                "after_training_seconds": total - timer.seconds - (timer.start - start),
                "cells_per_s": timer.steps * BATCH_SIZE / timer.seconds,
                "n_genes": int(model.genes_.size),
                "threads": torch.get_num_threads(),
                "precision": str(model.trainer.precision),
            }
        )
    )


def run_child(paths: list[Path], steps: int, in_memory: bool) -> dict:
    command = [sys.executable, __file__, "--child", str(steps), str(int(in_memory)), *map(str, paths)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(runs: list[dict], reference: dict, result: dict) -> str:
    lines = [
        "# Training from disk",
        "",
        __doc__.split("\n\n")[1],
        "",
        "| cells | files | genes | before training (s) | training cells/s | vs in memory | after training (s) | "
        "baseline RSS (GiB) | peak RSS (GiB) | added (GiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run['n_cells']:,} | {N_FILES} | {run['n_genes']:,} | {run['before_training_seconds']:.0f} | "
            f"{run['cells_per_s']:.0f} | {run['cells_per_s'] / reference['cells_per_s']:.0%} | "
            f"{run['after_training_seconds']:.0f} | {run['baseline_rss_gib']:.2f} | {run['peak_rss_gib']:.2f} | "
            f"{run['peak_rss_gib'] - run['baseline_rss_gib']:.2f} |"
        )
    lines += [
        "",
        f"In memory (the first file of the {runs[0]['n_cells']:,}-cell corpus: {reference['n_cells']:,} cells x "
        f"{reference['n_genes']:,} genes, binned in memory, scvi-tools' loader): {reference['cells_per_s']:.0f} "
        f"cells/s in training, peak {reference['peak_rss_gib']:.2f} GiB (baseline with the data loaded "
        f"{reference['baseline_rss_gib']:.2f} GiB).",
        "",
        "Before training: the pass over the counts and building the model; after training: fitting the count "
        "decoder on 20,000 random cells read from the files (in memory: on all cells).",
        f"{result['steps']} steps of {BATCH_SIZE} cells per run, default model; building the corpora took "
        f"{result['build_seconds']:.0f} s. Machine: {result['machine']}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="10k and 20k cells, 30 steps")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[2:], int(args.child[0]), bool(int(args.child[1])))
        return
    sizes, steps = ([10_000, 20_000], 30) if args.quick else (sorted(args.sizes), args.steps)
    reference_data = pbmc_hvg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="train_from_disk_") as tmp:
        start = time.perf_counter()
        corpora = {}
        for n in sizes:
            (Path(tmp) / str(n)).mkdir()
            corpora[n] = build_corpus(reference_data, n, Path(tmp) / str(n))
        build_seconds = time.perf_counter() - start
        print(f"built corpora of {sizes} cells in {build_seconds:.0f} s", flush=True)
        reference = run_child(corpora[sizes[0]][:1], steps, in_memory=True)
        print(f"in memory: {reference['cells_per_s']:.0f} cells/s", flush=True)
        for n in sizes:
            run = run_child(corpora[n], steps, in_memory=False)
            runs.append(run)
            print(json.dumps(run), flush=True)
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {reference['threads']} torch threads, {reference['precision']}"
    result = {"runs": runs, "in_memory": reference, "steps": steps, "build_seconds": build_seconds, "machine": machine}
    name = "train_from_disk" + ("_quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(runs, reference, result)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
