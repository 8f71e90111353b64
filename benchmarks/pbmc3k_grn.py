"""PBMC 3k: attention and gene-embedding GRNs vs. a Pearson-correlation GRN, scored against TRRUST.

One run: 2,000 HVGs, value binning, ``bf.tl.pretrain`` with the package defaults on all cells, then
``bf.tl.attention_grn`` (last layer, heads averaged, all cells) and ``bf.tl.gene_programs``
(cosine similarity of gene embeddings). Every GRN is scored with BEELINE's early precision ratio
(EPR) and AUPRC ratio over the edges out of the TRRUST transcription factors among the HVGs
(``bf.metrics.score_grn``; 1 = random). Attention is read as "a target attends to its regulator":
the regulator -> target weight is ``attention[target, regulator]``. Correlation and similarity are
symmetric; correlation is scored by its absolute value (TRRUST holds repression as well).

    python benchmarks/pbmc3k_grn.py [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scanpy as sc

import bioformers as bf

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    adata = bf.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=2000)
    adata = adata[:, adata.var["highly_variable"]].copy()
    genes = adata.var_names.tolist()
    reference = bf.datasets.trrust()

    start = time.perf_counter()
    model = bf.tl.pretrain(adata, seed=args.seed)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    bf.tl.attention_grn(adata, model)
    attention_seconds = time.perf_counter() - start
    bf.tl.gene_programs(adata, model, seed=args.seed)

    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    attention = adata.varp["bioformers_attention"]
    grns = {
        "attention (target attends to regulator)": attention.T,
        "attention, both directions": (attention + attention.T) / 2,
        "gene-embedding cosine similarity": adata.varp["bioformers_similarity"],
        "Pearson |r| (log-normalised)": np.abs(bf.metrics.correlation_grn(lognorm.X)),
    }
    rng = np.random.default_rng(args.seed)
    grns["random"] = rng.random(attention.shape).astype(np.float32)

    rows = {
        name: bf.metrics.score_grn(bf.metrics.grn_edges(m, genes), reference, genes=genes) for name, m in grns.items()
    }
    first = next(iter(rows.values()))
    lines = [
        f"PBMC 3k, {adata.n_obs} cells x {adata.n_vars} HVGs; TRRUST (human): {first['n_reference_edges']} edges "
        f"out of TFs among the HVGs, {first['n_candidates']} candidate pairs (density {first['density']:.4f}); "
        f"seed {args.seed}",
        "",
        "| GRN | EPR | AUPRC ratio |",
        "|---|---|---|",
        *(f"| {name} | {r['epr']:.2f} | {r['auprc_ratio']:.2f} |" for name, r in rows.items()),
        "",
        f"pretraining {train_seconds:.0f} s; attention GRN over {adata.n_obs} cells {attention_seconds:.0f} s; "
        f"{adata.uns['bioformers_program']['params']['n_programs']} gene programs",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pbmc3k_grn.md").write_text(text + "\n")
    (RESULTS / "pbmc3k_grn.json").write_text(
        json.dumps({name: {k: float(v) for k, v in r.items()} for name, r in rows.items()}, indent=1)
    )


if __name__ == "__main__":
    main()
