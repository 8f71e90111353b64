"""The README's demo: pretrain on the bundled PBMC 3k data and write the results.

python -m bioformers.demo --out output/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the demo writes files; it never opens a window

import matplotlib.pyplot as plt
import scanpy as sc

import bioformers as bf


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
    seconds = time.perf_counter() - start
    print(f"gene-level results (predicted expression, attention GRNs, gene programs) in {seconds:.0f} s")
    regulator = adata.var["bioformers_attention_received"].idxmax()

    plots = {
        "umap_bioformers.png": bf.pl.embedding(adata, color="cell_type", return_fig=True, show=False),
        "loss_history.png": bf.pl.history(model, return_fig=True, show=False),
        "binning.png": bf.pl.binning(adata, return_fig=True, show=False),
        "predicted_vs_observed.png": bf.pl.predicted_vs_observed(adata, return_fig=True, show=False),
        "attention.png": bf.pl.attention(adata, regulator, return_fig=True, show=False),
        "grn.png": bf.pl.grn(adata, regulator, return_fig=True, show=False),
        "gene_program_0.png": bf.pl.gene_programs(adata, "0", return_fig=True, show=False),
    }
    for name, fig in plots.items():
        fig.savefig(out / name, dpi=150, bbox_inches="tight")
    plt.close("all")
    adata.write_h5ad(out / "pbmc3k_bioformers.h5ad", compression="gzip")
    model.save(str(out / "model"), overwrite=True)
    for name in [*plots, "pbmc3k_bioformers.h5ad", "model"]:
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
