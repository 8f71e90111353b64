"""PBMC 3k: bioformers cell embedding vs. PCA on the same 2,000 highly variable genes.

Prints, from one run: AvgBIO (mean of NMI, ARI and ASW on cell types) for both embeddings under two
clusterings (KMeans with k = number of cell types; Leiden at the resolution with the best NMI),
training seconds per epoch, inference cells/s and the process's peak memory. Writes the table to
``benchmarks/results/pbmc3k_embedding.md`` (and ``.json``).

    python benchmarks/pbmc3k_embedding.py [--max-epochs N] [--n-hidden D] ...
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import scanpy as sc

import bioformers as bf

RESULTS = Path(__file__).parent / "results"


def pca_baseline(adata) -> None:
    """Scanpy's standard PBMC 3k recipe: normalise, log, scale, 50 principal components."""
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.scale(lognorm, max_value=10)
    sc.pp.pca(lognorm, n_comps=50, random_state=0)
    adata.obsm["X_pca"] = lognorm.obsm["X_pca"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--n-hidden", type=int, default=None)
    parser.add_argument("--n-layers", type=int, default=None)
    parser.add_argument("--n-heads", type=int, default=None)
    parser.add_argument("--max-seq-len", type=int, default=None)
    parser.add_argument("--binning", default="value")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args()

    adata = bf.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=2000)
    adata = adata[:, adata.var["highly_variable"]].copy()
    pca_baseline(adata)

    overrides = {
        k: v
        for k, v in {
            "max_epochs": args.max_epochs,
            "n_hidden": args.n_hidden,
            "n_layers": args.n_layers,
            "n_heads": args.n_heads,
            "max_seq_len": args.max_seq_len,
        }.items()
        if v is not None
    }
    start = time.perf_counter()
    model = bf.tl.pretrain(adata, binning=args.binning, seed=args.seed, **overrides)
    train_seconds = time.perf_counter() - start
    epochs = len(model.loss_history()["train_loss"])

    start = time.perf_counter()
    model.get_latent_representation()
    infer_seconds = time.perf_counter() - start

    rows = {}
    for name, rep in [("PCA (50 PCs, log-normalised, scaled)", "X_pca"), ("bioformers (CLS)", "X_bioformers")]:
        for cluster in ("kmeans", "leiden"):
            rows[(name, cluster)] = bf.metrics.avg_bio(adata, label_key="cell_type", use_rep=rep, cluster=cluster)

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    lines = [
        f"PBMC 3k, {adata.n_obs} cells x {adata.n_vars} HVGs (seurat_v3), seed {args.seed}, "
        f"settings {overrides or 'defaults'}",
        "",
        "| embedding | clustering | NMI | ARI | ASW | AvgBIO |",
        "|---|---|---|---|---|---|",
    ]
    for (name, cluster), m in rows.items():
        label = cluster if cluster == "kmeans" else f"leiden (res {m['resolution']:.1f})"
        lines.append(f"| {name} | {label} | {m['nmi']:.3f} | {m['ari']:.3f} | {m['asw']:.3f} | {m['avg_bio']:.3f} |")
    lines += [
        "",
        f"training: {train_seconds:.0f} s for {epochs} epochs = {train_seconds / epochs:.1f} s/epoch "
        f"({epochs * adata.n_obs / train_seconds:.0f} cells/s incl. validation)",
        f"inference: {adata.n_obs / infer_seconds:.0f} cells/s",
        f"peak memory (process RSS): {peak_gib:.2f} GiB",
        f"final loss: train {model.loss_history()['train_loss'][-1]:.3f}, "
        f"validation {model.loss_history()['validation_loss'][-1]:.3f}",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"pbmc3k_embedding{args.tag}.md").write_text(text + "\n")
    (RESULTS / f"pbmc3k_embedding{args.tag}.json").write_text(
        json.dumps(
            {
                "settings": overrides,
                "metrics": {f"{n} | {c}": m for (n, c), m in rows.items()},
                "train_seconds": train_seconds,
                "epochs": epochs,
                "inference_cells_per_s": adata.n_obs / infer_seconds,
                "peak_rss_gib": peak_gib,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
