"""PBMCs from three 10x chemistries: batch integration of bioformers vs. PCA and scVI (scIB metrics).

Data: ``../shared/data/pbmc_3chemistries_raw_labeled.h5ad`` (1,500 cells x 1,764 genes, raw
counts; ``batch`` = 10x 3' v1 / 3' v2 / 5', ``cell_type`` = 9 Symphony labels). All 1,764 genes
are used: they are the variable genes Symphony kept, so no further gene selection is made.

Embeddings, each on the same AnnData, timed from raw counts to embedding:

* **PCA**: ``sc.pp.normalize_total`` (1e4, over the 1,764 genes) + ``sc.pp.log1p`` + ``sc.pp.pca``
  (50 components, no scaling); no batch correction, the reference for "unintegrated".
* **scVI**: ``scvi.model.SCVI`` with ``batch_key="batch"``, default architecture (10 latent,
  1 x 128 hidden), ``max_epochs=400`` (scvi-tools' own default for 1,500 cells), ``obsm["X_scVI"]``.
* **bioformers**: ``bf.tl.pretrain(adata)``, the demo's model (package defaults: 4 layers, d=64,
  2 heads, max_seq_len 256, epochs chosen by data size).
* **bioformers + batch**: ``bf.tl.pretrain(adata, batch_key="batch", key_added="bioformers_batch")``.

Scores: :func:`bioformers.metrics.integration_scores` (scIB: NMI/ARI at the best Leiden
resolution, cell-type ASW, batch ASW, graph connectivity, scaled iLISI, their means and the
0.6/0.4 overall score). When scib-metrics is installed (``pip install bioformers[integration]``;
it needs JAX) the same embeddings are also scored with scib-metrics and printed next to ours.
Everything is seeded (seed 0). Writes ``results/pbmc_integration.{md,json}``, the UMAPs
``results/pbmc_integration_umap.png`` and the embeddings ``results/pbmc_integration_embeddings.h5ad``
(``--quick``: the same names with ``_quick``).

    python benchmarks/pbmc_integration.py [--quick] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # writes files, never opens a window

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
import scvi

import bioformers as bf

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc_3chemistries_raw_labeled.h5ad"
RESULTS = Path(__file__).parent / "results"
BATCH, LABELS = "batch", "cell_type"
SCVI_EPOCHS = 400  # scvi-tools' default for 1,500 cells: min(round(20,000 / n_cells * 400), 400)
COLUMNS = {
    "nmi": "NMI",
    "ari": "ARI",
    "asw_label": "ASW cell type",
    "batch_asw": "batch ASW",
    "graph_connectivity": "graph conn.",
    "ilisi": "iLISI",
    "bio_conservation": "bio",
    "batch_correction": "batch",
    "overall": "overall (0.6 bio + 0.4 batch)",
}


def pca(adata: ad.AnnData, *, seed: int) -> None:
    """Log-normalised PCA of all genes -> ``obsm['X_pca']``."""
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.pca(lognorm, n_comps=50, random_state=seed)
    adata.obsm["X_pca"] = lognorm.obsm["X_pca"]


def scvi_embedding(adata: ad.AnnData, *, max_epochs: int, seed: int) -> dict:
    """scVI with the batch registered -> ``obsm['X_scVI']``; returns its last ELBOs (to judge convergence)."""
    scvi.settings.seed = seed
    work = adata.copy()  # setup_anndata writes its bookkeeping into the AnnData
    scvi.model.SCVI.setup_anndata(work, batch_key=BATCH)
    model = scvi.model.SCVI(work)
    # validation every 10 epochs: the held-out ELBO shows whether max_epochs was enough
    model.train(max_epochs=max_epochs, enable_progress_bar=False, check_val_every_n_epoch=min(10, max_epochs))
    adata.obsm["X_scVI"] = model.get_latent_representation()
    elbo = model.history["elbo_validation"]["elbo_validation"]
    return {
        "epochs": len(model.history["elbo_train"]),
        "elbo_validation": {int(epoch) + 1: float(value) for epoch, value in elbo.items()},
    }


def scib_metrics_scores(adata: ad.AnnData, use_rep: str, *, seed: int) -> dict[str, float] | None:
    """The same scores from scib-metrics (if installed), on 15/50/90-neighbour graphs as its Benchmarker builds."""
    try:
        import scib_metrics
        from scib_metrics.nearest_neighbors import pynndescent
    except ImportError:
        return None
    rep = np.asarray(adata.obsm[use_rep], dtype=np.float32)
    labels, batches = adata.obs[LABELS].to_numpy(), adata.obs[BATCH].to_numpy()
    neighbours = pynndescent(rep, n_neighbors=90, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joblib/jax chatter
        clusters = scib_metrics.nmi_ari_cluster_labels_leiden(neighbours.subset_neighbors(15), labels, seed=seed)
        return {
            "nmi": float(clusters["nmi"]),
            "ari": float(clusters["ari"]),
            "asw_label": float(scib_metrics.silhouette_label(rep, labels)),
            "batch_asw": float(scib_metrics.silhouette_batch(rep, labels, batches)),
            "graph_connectivity": float(scib_metrics.graph_connectivity(neighbours.subset_neighbors(15), labels)),
            "ilisi": float(scib_metrics.ilisi_knn(neighbours, batches)),
            "kbet_per_label": float(scib_metrics.kbet_per_label(neighbours.subset_neighbors(50), batches, labels)),
        }


def umap_figure(adata: ad.AnnData, methods: dict[str, str], *, seed: int) -> plt.Figure:
    """One row per method, coloured by batch and by cell type."""
    fig, axes = plt.subplots(len(methods), 2, figsize=(10, 4.2 * len(methods)), squeeze=False)
    for row, (name, rep) in enumerate(methods.items()):
        sc.pp.neighbors(adata, use_rep=rep, key_added=f"nn_{rep}", random_state=seed)
        sc.tl.umap(adata, neighbors_key=f"nn_{rep}", key_added=f"X_umap_{rep}", random_state=seed)
        for col, color in enumerate((BATCH, LABELS)):
            ax = axes[row, col]
            sc.pl.embedding(adata, basis=f"X_umap_{rep}", color=color, ax=ax, show=False, frameon=False, size=12)
            ax.set_title(f"{name}: {color}")
    fig.tight_layout()
    return fig


def markdown(adata, rows, times, scib_rows, notes) -> str:
    header = "| method | time (s) | " + " | ".join(COLUMNS.values()) + " |"
    lines = [
        f"PBMC 3 chemistries, {adata.n_obs} cells x {adata.n_vars} genes, batches "
        + ", ".join(f"{b} {n}" for b, n in adata.obs[BATCH].value_counts().sort_index().items())
        + f", {adata.obs[LABELS].nunique()} cell types",
        "",
        header,
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for name, scores in rows.items():
        cells = " | ".join(f"{scores[k]:.3f}" for k in COLUMNS)
        lines.append(f"| {name} | {times[name]:.0f} | {cells} |")
    if scib_rows:
        lines += [
            "",
            "Cross-check with scib-metrics on the same embeddings (its own neighbour graphs; kBET per label is "
            "scib-metrics' only, not in our scores):",
            "",
            "| method | source | " + " | ".join(COLUMNS[k] for k in list(COLUMNS)[:6]) + " | kBET |",
            "|---|---|" + "---|" * 7,
        ]
        for name, theirs in scib_rows.items():
            ours = rows[name]
            lines.append(f"| {name} | bioformers | " + " | ".join(f"{ours[k]:.3f}" for k in list(COLUMNS)[:6]) + " | |")
            lines.append(
                f"| {name} | scib-metrics | "
                + " | ".join(f"{theirs[k]:.3f}" for k in list(COLUMNS)[:6])
                + f" | {theirs['kbet_per_label']:.3f} |"
            )
    lines += ["", *notes]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run (1 bioformers epoch, 5 scVI epochs), results in *_quick.*"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    seed = args.seed
    bf_epochs = 1 if args.quick else None  # None: the package default for the data size
    scvi_epochs = 5 if args.quick else SCVI_EPOCHS

    adata = ad.read_h5ad(args.data)
    times, notes = {}, []

    start = time.perf_counter()
    pca(adata, seed=seed)
    times["PCA"] = time.perf_counter() - start

    start = time.perf_counter()
    scvi_record = scvi_embedding(adata, max_epochs=scvi_epochs, seed=seed)
    times["scVI (batch_key)"] = time.perf_counter() - start

    start = time.perf_counter()
    bf.tl.pretrain(adata, max_epochs=bf_epochs, seed=seed)
    times["bioformers"] = time.perf_counter() - start

    start = time.perf_counter()
    bf.tl.pretrain(adata, batch_key=BATCH, max_epochs=bf_epochs, seed=seed, key_added="bioformers_batch")
    times["bioformers (batch_key)"] = time.perf_counter() - start

    methods = {
        "PCA": "X_pca",
        "scVI (batch_key)": "X_scVI",
        "bioformers": "X_bioformers",
        "bioformers (batch_key)": "X_bioformers_batch",
    }
    rows, scib_rows = {}, {}
    for name, rep in methods.items():
        rows[name] = bf.metrics.integration_scores(adata, use_rep=rep, batch_key=BATCH, label_key=LABELS, seed=seed)
        theirs = scib_metrics_scores(adata, rep, seed=seed)
        if theirs is not None:
            scib_rows[name] = theirs

    bf_epochs_run = adata.uns["bioformers"]["params"]["max_epochs"]
    elbo = scvi_record["elbo_validation"]
    best_epoch = min(elbo, key=elbo.get)
    notes += [
        f"Seed {seed}{' (--quick smoke run)' if args.quick else ''}. Times are wall-clock from raw counts to "
        "embedding (binning, training and embedding for bioformers) on this machine.",
        f"scVI: {scvi_record['epochs']} epochs; held-out ELBO per cell lowest at epoch {best_epoch} "
        f"({elbo[best_epoch]:.1f}), at the last checks "
        + ", ".join(f"{epoch}: {value:.1f}" for epoch, value in list(elbo.items())[-5:]),
        f"bioformers: package defaults (as in `python -m bioformers.demo`), {bf_epochs_run} epoch(s).",
    ]
    if np.array_equal(adata.obsm["X_bioformers"], adata.obsm["X_bioformers_batch"]):
        notes.append(
            "bioformers (batch_key) gave exactly the same embedding as bioformers: in this version `batch_key` "
            "is only registered, the model does not use it yet."
        )
    if not scib_rows:
        notes.append("scib-metrics is not installed: no cross-check (`pip install bioformers[integration]`).")
    text = markdown(adata, rows, times, scib_rows, notes)
    print(text)

    tag = "_quick" if args.quick else ""  # a smoke run never overwrites the real results
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"pbmc_integration{tag}.md").write_text(text + "\n")
    (RESULTS / f"pbmc_integration{tag}.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "quick": args.quick,
                "scores": rows,
                "scib_metrics": scib_rows,
                "seconds": times,
                "scvi": scvi_record,
            },
            indent=1,
        )
    )
    fig = umap_figure(adata, methods, seed=seed)
    fig.savefig(RESULTS / f"pbmc_integration{tag}_umap.png", dpi=110, bbox_inches="tight")
    keep = ad.AnnData(obs=adata.obs[[BATCH, LABELS]], obsm={rep: adata.obsm[rep] for rep in methods.values()})
    keep.write_h5ad(RESULTS / f"pbmc_integration{tag}_embeddings.h5ad", compression="gzip")


if __name__ == "__main__":
    main()
