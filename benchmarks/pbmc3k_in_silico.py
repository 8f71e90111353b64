"""PBMC 3k: in-silico deletion of cell-type markers and overexpression toward a cell type, against random genes.

One run: 2,000 HVGs (``seurat_v3`` on raw counts, as in ``bioformers.demo``), ``bf.tl.pretrain`` with the
package defaults and a fixed seed, then ``bf.tl.in_silico_perturb`` with its random-gene baseline
(``n_random`` genes drawn among those closest in expression frequency, within the perturbed cells, to the
perturbed genes; perturbed the same way):

1. **Deletion of markers.** Per cell type, the top 5 marker genes (Scanpy ``rank_genes_groups``, t-test,
   log-normalised counts, up-regulated) are deleted in that type's cells. Reported: the markers' mean
   embedding shift (1 - cos) against the random genes' (ratio) and each marker's percentile among them.
2. **Overexpression toward a target.** CD8A/CD8B in CD4 T cells toward "CD8 T cells" (not among the HVGs:
   replaced by the top 2 DE genes of CD8 T vs CD4 T cells), MS4A1/CD79A in CD14+ Monocytes toward
   "B cells": the fraction of cells whose cosine similarity to the target's centroid rises and the mean
   change, against random genes.

    python benchmarks/pbmc3k_in_silico.py [--seed 0] [--n-random 20] [--max-epochs N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the benchmark writes files; it never opens a window

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc

import bioformers as bf

RESULTS = Path(__file__).parent / "results"
N_MARKERS = 5
#: (genes, cells perturbed, target); genes that are not among the model's (HVGs) are replaced by the
#: top DE genes of the target against the perturbed cells' type (CD8A/CD8B are not among the 2,000 HVGs)
OVEREXPRESS = [
    (["CD8A", "CD8B"], "CD4 T cells", "CD8 T cells"),
    (["MS4A1", "CD79A"], "CD14+ Monocytes", "B cells"),
]
RECORD = "bioformers_in_silico"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-random", type=int, default=20)
    parser.add_argument("--max-epochs", type=int, default=None, help="default: chosen by data size")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)

    adata = bf.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", subset=True)
    start = time.perf_counter()
    model = bf.tl.pretrain(adata, max_epochs=args.max_epochs, seed=args.seed)
    train_seconds = time.perf_counter() - start

    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.tl.rank_genes_groups(lognorm, "cell_type", method="t-test")
    types = adata.obs["cell_type"].cat.categories.tolist()
    markers = {kind: sc.get.rank_genes_groups_df(lognorm, kind)["names"].head(N_MARKERS).tolist() for kind in types}

    start = time.perf_counter()
    deletion, deletion_rows = {}, []
    for kind in types:
        bf.tl.in_silico_perturb(
            adata, model, markers[kind], groupby="cell_type", groups=kind, n_random=args.n_random, seed=args.seed
        )
        table, random = adata.uns[RECORD]["genes"], adata.uns[RECORD]["random"]
        deletion[kind] = {
            "n_cells": int((adata.obs["cell_type"] == kind).sum()),
            "markers": markers[kind],
            "marker_mean_shift": float(table["mean_shift"].mean()),
            "random_mean_shift": float(random["mean_shift"].mean()),
            "ratio": float(table["mean_shift"].mean() / random["mean_shift"].mean()),
            "median_percentile": float(table["shift_percentile"].median()),
            "n_markers_above_all_random": int((table["shift_percentile"] == 100).sum()),
            "marker_frequency": float(table["frequency"].mean()),
            "random_frequency": float(random["frequency"].mean()),
        }
        deletion_rows.append(table.assign(cell_type=kind))
        if kind == "B cells":
            fig_deletion = bf.pl.in_silico(adata, kind="shift", return_fig=True, show=False)
            fig_deletion.savefig(RESULTS / "pbmc3k_in_silico_delete_B.png", dpi=120, bbox_inches="tight")
    deletion_seconds = time.perf_counter() - start

    start = time.perf_counter()
    overexpression, figures = {}, []
    for wanted, cells, target in OVEREXPRESS:
        genes = _model_genes(wanted, lognorm, cells, target)
        if genes != wanted:
            print(f"{', '.join(g for g in wanted if g not in genes)} not among the HVGs: using {', '.join(genes)}")
        bf.tl.in_silico_perturb(
            adata,
            model,
            genes,
            mode="overexpress",
            groupby="cell_type",
            groups=cells,
            target=target,
            n_random=args.n_random,
            seed=args.seed,
        )
        table, random = adata.uns[RECORD]["genes"], adata.uns[RECORD]["random"]
        for gene, row in table.iterrows():
            overexpression[f"{gene} in {cells} -> {target}"] = {
                "n_cells": int(row["n_cells"]),
                "frequency": float(row["frequency"]),
                "fraction_toward": float(row["fraction_toward"]),
                "mean_toward": float(row["mean_toward"]),
                "random_fraction_toward": float(row["random_fraction_toward"]),
                "random_mean_toward": float(row["random_mean_toward"]),
                "toward_percentile": float(row["toward_percentile"]),
                "mean_shift": float(row["mean_shift"]),
                "shift_percentile": float(row["shift_percentile"]),
            }
        figures.append(adata.copy())
    overexpression_seconds = time.perf_counter() - start

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2), layout="constrained")
    for ax, result in zip(axes, figures, strict=True):
        bf.pl.in_silico(result, kind="toward", ax=ax, show=False)
    fig.savefig(RESULTS / "pbmc3k_in_silico_overexpress.png", dpi=120)
    plt.close("all")

    lines = [
        f"PBMC 3k, {adata.n_obs} cells x {adata.n_vars} HVGs; `bf.tl.pretrain` defaults, seed {args.seed} "
        f"({train_seconds:.0f} s); {args.n_random} random genes per call, matched in expression frequency",
        "",
        f"### Deletion of each type's top {N_MARKERS} markers in its own cells",
        "",
        "| cell type | cells | markers | marker mean shift | random mean shift | ratio | median percentile "
        "| markers above every random gene | expressed in (markers / random) |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {kind} | {r['n_cells']} | {', '.join(r['markers'])} | {r['marker_mean_shift']:.2e} | "
            f"{r['random_mean_shift']:.2e} | {r['ratio']:.2f} | {r['median_percentile']:.0f} | "
            f"{r['n_markers_above_all_random']}/{N_MARKERS} | "
            f"{r['marker_frequency']:.2f} / {r['random_frequency']:.2f} |"
            for kind, r in deletion.items()
        ),
        "",
        "### Overexpression toward a target cell type",
        "",
        "| perturbation | cells | fraction toward | random genes' fraction toward | mean Δcos to target "
        "| random genes' mean Δcos | percentile of Δcos | mean shift (percentile) |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {r['n_cells']} | {r['fraction_toward']:.2f} | {r['random_fraction_toward']:.2f} | "
            f"{r['mean_toward']:+.2e} | {r['random_mean_toward']:+.2e} | {r['toward_percentile']:.0f} | "
            f"{r['mean_shift']:.2e} ({r['shift_percentile']:.0f}) |"
            for name, r in overexpression.items()
        ),
        "",
        f"deletion {deletion_seconds:.0f} s, overexpression {overexpression_seconds:.0f} s (2-core CPU); "
        "plots: `pbmc3k_in_silico_delete_B.png`, `pbmc3k_in_silico_overexpress.png`",
    ]
    text = "\n".join(lines)
    print(text)
    (RESULTS / "pbmc3k_in_silico.md").write_text(text + "\n")
    (RESULTS / "pbmc3k_in_silico.json").write_text(
        json.dumps(
            {
                "seed": args.seed,
                "n_random": args.n_random,
                "deletion": deletion,
                "overexpression": overexpression,
                "deletion_per_gene": pd.concat(deletion_rows).reset_index().to_dict(orient="records"),
            },
            indent=1,
            default=lambda value: value.item() if isinstance(value, np.generic) else str(value),
        )
    )


def _model_genes(wanted: list[str], lognorm, cells: str, target: str) -> list[str]:
    """``wanted`` where they are the model's genes, the rest replaced by the top DE genes of ``target`` vs ``cells``."""
    kept = [gene for gene in wanted if gene in lognorm.var_names]
    if len(kept) == len(wanted):
        return wanted
    de = sc.tl.rank_genes_groups(
        lognorm, "cell_type", groups=[target], reference=cells, method="t-test", key_added="vs", copy=True
    )
    ranked = sc.get.rank_genes_groups_df(de, target, key="vs")["names"]
    return kept + [gene for gene in ranked if gene not in kept][: len(wanted) - len(kept)]


if __name__ == "__main__":
    main()
