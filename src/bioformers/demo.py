"""The README's demo: pretrain on the bundled PBMC 3k data and write the results.

python -m bioformers.demo --out output/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # the demo writes files; it never opens a window

import matplotlib.pyplot as plt
import scanpy as sc

import bioformers as bf

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.figure import Figure

#: Marker genes of the PBMC 3k cell types (B, T, NK cells, monocytes, dendritic cells, platelets);
#: the demo shows those among the highly variable genes.
MARKERS = [
    "CD79A",
    "MS4A1",
    "CD3E",
    "CD3D",
    "IL7R",
    "CD8A",
    "NKG7",
    "GNLY",
    "LYZ",
    "CD14",
    "S100A8",
    "FCGR3A",
    "MS4A7",
    "CST3",
    "FCER1A",
    "PPBP",
]
#: A marker and the cell type it marks, for the network of one gene in its own cells; the first present is used.
EXAMPLES = [("CD79A", "B cells"), ("MS4A1", "B cells"), ("LYZ", "CD14+ Monocytes"), ("CD3E", "CD4 T cells")]
#: Transcription factors of the PBMC cell types, for the knockout GRN's example; the first with a row is used.
REGULATORS = ["SPI1", "CEBPB", "PAX5", "TCF7", "IRF8"]


def figures(adata: AnnData) -> dict[str, Figure]:
    """The demo's figures, from what the demo wrote into ``adata`` (or the h5ad it saved), by file name.

    Example genes are markers a reader knows, not the top of an attention ranking: attention is a
    view of the model, and the genes it ranks first are not thereby regulators. The gene program
    shown is the one that holds the first marker (the largest programs of PBMC 3k gather genes
    expressed in few cells, whose embeddings are barely trained).
    """
    markers = [gene for gene in MARKERS if gene in adata.var_names]
    gene, group = next(((g, c) for g, c in EXAMPLES if g in adata.var_names), (markers[0], None))
    programs = adata.var["bioformers_program"].astype(str)
    holder = next((g for g in markers if programs[g] != "unassigned"), None)
    grn = adata.varp["bioformers_grn"]
    computed = adata.var_names[abs(grn).sum(axis=1) > 0]
    regulator = next((g for g in REGULATORS if g in computed), computed[0])
    attention = {"group": group} if group is not None else {"key": "bioformers_attention"}
    program = "0" if holder is None else programs[holder]
    print(f"example genes (known PBMC markers among the HVGs): {', '.join(markers)}")
    print(
        f"knockout GRN of {regulator}; attention network of {gene} in {group or 'all cells'}; gene program {program}"
        + (f" (holds {holder})" if holder else "")
    )
    return {
        "umap_bioformers.png": bf.pl.embedding(adata, color="cell_type", return_fig=True, show=False),
        "loss_history.png": bf.pl.history(adata, return_fig=True, show=False),
        "binning.png": bf.pl.binning(adata, return_fig=True, show=False),
        "predicted_vs_observed.png": bf.pl.predicted_vs_observed(adata, return_fig=True, show=False),
        "attention.png": bf.pl.attention(adata, markers, return_fig=True, show=False),
        "grn.png": bf.pl.grn(adata, regulator, return_fig=True, show=False),
        "attention_network.png": bf.pl.grn(adata, gene, **attention, return_fig=True, show=False),
        "gene_program.png": bf.pl.gene_programs(adata, program, return_fig=True, show=False),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the demo."""
    parser = argparse.ArgumentParser(description="Pretrain a BioFormer on PBMC 3k and write its results.")
    parser.add_argument("--out", default="output", help="folder for the plots and the h5ad")
    parser.add_argument("--max-epochs", type=int, default=None, help="default: chosen by data size")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    adata = bf.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", subset=True)
    print(f"PBMC 3k: {adata.n_obs} cells x {adata.n_vars} highly variable genes")

    start = time.perf_counter()
    model = bf.tl.pretrain(adata, max_epochs=args.max_epochs)
    print(f"trained in {time.perf_counter() - start:.0f} s")

    scores = bf.metrics.avg_bio(adata, label_key="cell_type", use_rep="X_bioformers")
    print(
        "cell-type AvgBIO of the embedding (KMeans): "
        "{avg_bio:.3f} (NMI {nmi:.3f}, ARI {ari:.3f}, ASW {asw:.3f})".format(**scores)
    )

    start = time.perf_counter()
    bf.tl.predict(adata, model)
    bf.tl.attention_grn(adata, model, groupby="cell_type", n_cells=300)
    bf.tl.gene_programs(adata, model)
    tfs = sorted(set(bf.datasets.trrust()["source"]) & set(adata.var_names))
    bf.tl.grn(adata, model, regulators=tfs)  # in-silico knockouts of the known transcription factors
    seconds = time.perf_counter() - start
    print(
        "gene-level results (predicted expression, attention GRNs, gene programs, knockout GRN of "
        f"{len(tfs)} TFs) in {seconds:.0f} s"
    )
    plots = figures(adata)
    for name, fig in plots.items():
        fig.savefig(out / name, dpi=150, bbox_inches="tight")
    plt.close("all")
    adata.write_h5ad(out / "pbmc3k_bioformers.h5ad", compression="gzip")
    model.save(str(out / "model"), overwrite=True)
    for name in [*plots, "pbmc3k_bioformers.h5ad", "model"]:
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
