"""PBMC 3k: cell embedding pretrained on rank tokens (Geneformer-style) vs. value bins, same model and seed.

Pretrains ``bf.tl.pretrain`` twice on the same 2,000 highly variable genes with the same size,
epochs and seed, once with ``binning="value"`` and once with ``binning="rank"`` (``bf.pp.rank``,
``n_ranks=255``), and prints AvgBIO (mean of NMI, ARI and ASW on cell types) under two
clusterings (KMeans with k = number of cell types; Leiden at the resolution with the best NMI),
with training time and final losses. Writes the table to ``benchmarks/results/pbmc3k_rank.md``
(and ``.json``).

    python benchmarks/pbmc3k_rank.py [--max-epochs N] [--seed S] [--n-ranks R] [--tag T]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scanpy as sc
from scipy import sparse

import bioformers as bf

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=None, help="default: chosen by data size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-ranks", type=int, default=255)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args()

    # the data and gene selection of benchmarks/pbmc3k_embedding.py, so its value row is comparable
    data = bf.datasets.pbmc3k()
    sc.pp.highly_variable_genes(data, flavor="seurat_v3", n_top_genes=2000)
    data = data[:, data.var["highly_variable"]].copy()
    expressed = np.diff(sparse.csr_matrix(data.X).indptr)

    runs = {}
    for binning in ("value", "rank"):
        adata = data.copy()
        start = time.perf_counter()
        model = bf.tl.pretrain(
            adata,
            binning=binning,
            n_bins=args.n_ranks if binning == "rank" else None,
            max_epochs=args.max_epochs,
            seed=args.seed,
        )
        seconds = time.perf_counter() - start
        history = model.loss_history()
        runs[binning] = {
            "metrics": {
                cluster: bf.metrics.avg_bio(adata, label_key="cell_type", use_rep="X_bioformers", cluster=cluster)
                for cluster in ("kmeans", "leiden")
            },
            "n_tokens": int(adata.uns["bioformers_binned"]["n_tokens"]),
            "train_seconds": seconds,
            "epochs": len(history["train_loss"]),
            "final_train_loss": history["train_loss"][-1],
            "final_validation_loss": history["validation_loss"][-1],
        }

    lines = [
        f"PBMC 3k, {data.n_obs} cells x {data.n_vars} HVGs (seurat_v3), seed {args.seed}, pretrain defaults "
        f"(4 layers, d=64, 2 heads, max_seq_len 256), epochs {runs['value']['epochs']}",
        f"expressed genes per cell: median {np.median(expressed):.0f}, "
        f"{(expressed > args.n_ranks).mean():.1%} of cells have more than n_ranks={args.n_ranks}",
        "",
        "| binning | tokens | clustering | NMI | ARI | ASW | AvgBIO |",
        "|---|---|---|---|---|---|---|",
    ]
    for binning, run in runs.items():
        name = f"rank (n_ranks={args.n_ranks})" if binning == "rank" else "value (c=8, 3 bins/octave)"
        for cluster, m in run["metrics"].items():
            label = cluster if cluster == "kmeans" else f"leiden (res {m['resolution']:.1f})"
            lines.append(
                f"| {name} | {run['n_tokens']} | {label} | {m['nmi']:.3f} | {m['ari']:.3f} | {m['asw']:.3f} "
                f"| {m['avg_bio']:.3f} |"
            )
    lines.append("")
    for binning, run in runs.items():
        lines.append(
            f"{binning}: training {run['train_seconds']:.0f} s for {run['epochs']} epochs; final loss train "
            f"{run['final_train_loss']:.3f}, validation {run['final_validation_loss']:.3f} (losses are over "
            "different token vocabularies: not comparable)"
        )
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"pbmc3k_rank{args.tag}.md").write_text(text + "\n")
    (RESULTS / f"pbmc3k_rank{args.tag}.json").write_text(
        json.dumps({"seed": args.seed, "n_ranks": args.n_ranks, "max_epochs": args.max_epochs, "runs": runs}, indent=1)
    )


if __name__ == "__main__":
    main()
