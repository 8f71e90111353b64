"""Embedding backed AnnData of 10k to 100k cells: seconds, cells/s and peak memory per size.

1. Builds synthetic count files of 10k, 25k, 50k and 100k cells x 2,000 genes in a temporary
   directory: cells resampled from PBMC 3k (bundled), restricted to its 2,000 seurat_v3 highly
   variable genes, each cell's counts redrawn as Poisson(s * x) with a per-cell factor
   s ~ LogNormal(log 0.9, 0.25) (zeros stay zero). Files are written a chunk of cells at a time
   (``anndata.io.write_elem`` + ``sparse_dataset(...).append``), so building them is itself flat in
   memory.
2. Trains a default-size model (4 layers, d=64, max_seq_len 256) for a few epochs on PBMC 3k
   and saves it.
3. For each size, in a fresh subprocess: loads the model, opens the file with
   ``anndata.read_h5ad(path, backed="r")`` and times ``bf.tl.embed(backed, model)``, which reads and
   bins 4,096 cells at a time. Memory: the child's resident set right before the embedding step
   (imports, model, open file), its peak during the step (Linux: the peak is reset through
   ``/proc/self/clear_refs`` before the step and read from ``VmHWM`` after it; where that is not
   allowed, the lifetime ``ru_maxrss`` stands in, an upper bound), and its lifetime peak
   (``ru_maxrss``). Peak during the step minus the resident set before it is what embedding added:
   flat in the number of cells apart from the output (n_cells x 64 float32).

Writes ``benchmarks/results/embed_large.json`` (``embed_large_quick.json`` with ``--quick``, or
the path given by ``--out``) and the ``.md`` table next to it, and prints the table.

The JSON is flat, one value per key or one list entry per size (lists in the order of ``n_cells``)::

    n_cells           list[int]    cells embedded
    seconds           list[float]  wall time of bf.tl.embed on the backed file
    cells_per_s       list[float]  n_cells / seconds
    peak_rss_gib      list[float]  the child's peak resident memory over its whole life (GiB)
    baseline_rss_gib  list[float]  its resident memory right before embedding: imports, model, open file
    embed_peak_rss_gib list[float] its peak resident memory during the embedding step
    embed_rss_gib     list[float]  embed_peak_rss_gib - baseline_rss_gib: memory the embedding step added
    output_gib        list[float]  size of the embedding itself, n_cells * n_hidden * 4 bytes
    n_genes, n_hidden, n_layers, max_seq_len, chunk_size, batch_size, train_epochs  int
    train_seconds, build_seconds                                                    float
    quick             bool         whether --quick was given
    peak_reset        bool         whether the step's peak was measured alone (else ru_maxrss)
    machine           str          platform, CPU count, torch threads and device used

    python benchmarks/embed_large.py [--quick] [--sizes 10000 25000 ...] [--max-epochs N] [--out PATH.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SIZES = (10_000, 25_000, 50_000, 100_000)
QUICK_SIZES = (2_000, 5_000, 10_000)
N_GENES = 2_000
BUILD_CHUNK = 10_000
CHUNK_SIZE = 4_096
BATCH_SIZE = 256
#: The per-size lists of the JSON, in the order of the table's columns.
KEYS = (
    "n_cells",
    "seconds",
    "cells_per_s",
    "peak_rss_gib",
    "baseline_rss_gib",
    "embed_peak_rss_gib",
    "embed_rss_gib",
    "output_gib",
)


def _max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _status_gib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, from ``/proc/self/status``."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 2**20
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset this process's peak resident set (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def pbmc_hvg():
    """PBMC 3k raw counts on its 2,000 seurat_v3 highly variable genes."""
    import scanpy as sc

    import bioformers as bf

    adata = bf.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=N_GENES)
    return adata[:, adata.var["highly_variable"]].copy()


def build_files(reference, sizes: list[int], directory: Path, seed: int = 0) -> dict[int, Path]:
    """One h5ad per size; the first n cells of every file are the same cells. Chunked: flat in memory."""
    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem
    from scipy import sparse

    rng = np.random.default_rng(seed)
    counts = sparse.csr_matrix(reference.X, dtype=np.float32)
    paths = {n: directory / f"cells_{n}.h5ad" for n in sizes}
    for n, path in paths.items():
        obs = pd.DataFrame(index=pd.Index([f"cell_{i}" for i in range(n)], name="cell"))
        ad.AnnData(obs=obs, var=reference.var[[]].copy()).write_h5ad(path)
    written = 0
    while written < max(sizes):
        n_chunk = min(BUILD_CHUNK, max(sizes) - written)
        chunk = counts[rng.integers(0, counts.shape[0], n_chunk)]
        scale = np.repeat(rng.lognormal(np.log(0.9), 0.25, n_chunk), np.diff(chunk.indptr))
        chunk.data = rng.poisson(chunk.data * scale).astype(np.float32)
        chunk.eliminate_zeros()
        empty = np.flatnonzero(np.diff(chunk.indptr) == 0)
        if empty.size:  # keep every cell non-empty: one count in gene 0
            chunk = chunk.tolil()
            chunk[empty, 0] = 1
            chunk = chunk.tocsr()
        for n, path in paths.items():
            if written >= n:
                continue
            part = chunk[: n - written]
            with h5py.File(path, "a") as f:
                if "X" in f:
                    sparse_dataset(f["X"]).append(part)
                else:
                    write_elem(f, "X", part)
        written += n_chunk
    return paths


def embed_in_child(path: Path, model_dir: Path) -> dict:
    """Run the embedding step in a fresh Python process; returns its measurements."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path), str(model_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(path: str, model_dir: str) -> None:
    """Load the model, open ``path`` backed, embed it; print one JSON line."""
    import gc

    import anndata as ad
    import torch

    import bioformers as bf

    model = bf.BioFormer.load(model_dir, adata=ad.read_h5ad(Path(model_dir) / "adata.h5ad"))
    backed = ad.read_h5ad(path, backed="r")
    gc.collect()
    peak_before = _max_rss_gib()
    baseline = _status_gib("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    bf.tl.embed(backed, model, batch_size=BATCH_SIZE, chunk_size=CHUNK_SIZE)
    seconds = time.perf_counter() - start
    step_peak = _status_gib("VmHWM") if reset else _max_rss_gib()
    embedding = backed.obsm["X_bioformers"]
    print(
        json.dumps(
            {
                "n_cells": backed.n_obs,
                "seconds": seconds,
                "peak_rss_gib": max(peak_before, step_peak),
                "baseline_rss_gib": baseline,
                "embed_peak_rss_gib": step_peak,
                "peak_reset": reset,
                "output_gib": embedding.nbytes / 2**30,
                "threads": torch.get_num_threads(),
                "device": str(model.device),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2k, 5k and 10k cells, one training epoch")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="numbers of cells to embed")
    parser.add_argument("--max-epochs", type=int, default=None, help="training epochs (default 2; 1 with --quick)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write (the .md goes next to it)")
    parser.add_argument("--child", nargs=2, metavar=("H5AD", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    import bioformers as bf

    sizes = sorted(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    epochs = args.max_epochs or (1 if args.quick else 2)
    reference = pbmc_hvg()
    with tempfile.TemporaryDirectory(prefix="embed_large_") as tmp:
        directory = Path(tmp)
        start = time.perf_counter()
        paths = build_files(reference, sizes, directory)
        build_seconds = time.perf_counter() - start
        print(
            f"built {len(paths)} files up to {max(sizes):,} cells x {N_GENES} genes in {build_seconds:.0f} s",
            flush=True,
        )

        start = time.perf_counter()
        model = bf.tl.pretrain(reference, max_epochs=epochs, enable_progress_bar=False)
        train_seconds = time.perf_counter() - start
        model.save(directory / "model", save_anndata=True)
        print(f"trained {epochs} epoch(s) on PBMC 3k in {train_seconds:.0f} s", flush=True)

        runs = []
        for n in sizes:
            run = embed_in_child(paths[n], directory / "model")
            runs.append(run)
            print(
                f"{n:>7,} cells: {run['seconds']:.1f} s, {n / run['seconds']:.0f} cells/s, RSS before embedding "
                f"{run['baseline_rss_gib']:.3f} GiB, peak during it {run['embed_peak_rss_gib']:.3f} GiB",
                flush=True,
            )

    module = model.module
    result = {
        "n_cells": [r["n_cells"] for r in runs],
        "seconds": [round(r["seconds"], 2) for r in runs],
        "cells_per_s": [round(r["n_cells"] / r["seconds"], 1) for r in runs],
        "peak_rss_gib": [round(r["peak_rss_gib"], 3) for r in runs],
        "baseline_rss_gib": [round(r["baseline_rss_gib"], 3) for r in runs],
        "embed_peak_rss_gib": [round(r["embed_peak_rss_gib"], 3) for r in runs],
        "embed_rss_gib": [round(r["embed_peak_rss_gib"] - r["baseline_rss_gib"], 3) for r in runs],
        "output_gib": [round(r["output_gib"], 4) for r in runs],
        "n_genes": N_GENES,
        "n_hidden": module.cls_token.numel(),
        "n_layers": len(module.encoder.blocks),
        "max_seq_len": module.max_seq_len,
        "chunk_size": CHUNK_SIZE,
        "batch_size": BATCH_SIZE,
        "train_epochs": epochs,
        "train_seconds": round(train_seconds, 1),
        "build_seconds": round(build_seconds, 1),
        "quick": bool(args.quick),
        "peak_reset": all(r["peak_reset"] for r in runs),
        "machine": (
            f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {runs[0]['threads']} threads, device {runs[0]['device']}"
        ),
    }
    out = args.out or RESULTS / ("embed_large_quick.json" if args.quick else "embed_large.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"Backed embedding (`bf.tl.embed` on `read_h5ad(path, backed='r')`), {N_GENES} genes, "
        f"model d={result['n_hidden']}, {result['n_layers']} layers, max_seq_len {result['max_seq_len']}, "
        f"chunks of {CHUNK_SIZE} cells, batches of {BATCH_SIZE}. {result['machine']}.",
        "",
        "| cells | seconds | cells/s | peak RSS, whole child (GiB) | RSS before embedding (GiB) "
        "| peak RSS during embedding (GiB) | added by embedding (GiB) | embedding output (GiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, seconds, per_s, peak, baseline, step, added, output in zip(*(result[k] for k in KEYS), strict=True):
        lines.append(
            f"| {n:,} | {seconds:.1f} | {per_s:.0f} | {peak:.3f} | {baseline:.3f} | {step:.3f} | {added:.3f} "
            f"| {output:.4f} |"
        )
    table = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
