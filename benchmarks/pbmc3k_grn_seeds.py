"""PBMC 3k: how much do attention GRNs change between training runs (seeds)?

Trains ``bf.tl.pretrain`` with the package defaults on 2,000 HVGs once per seed, computes the
attention GRN (last layer, heads averaged, all cells) and the gene-embedding similarity of each
run, and compares every pair of runs:

* ``spearman``: rank correlation of all off-diagonal gene-pair weights;
* ``top-k overlap``: the fraction of the k strongest gene pairs of one run that are also among
  the k strongest of the other (symmetrised weights, k = 1,000 of 1,999,000 pairs).

For scale, the same is computed for the Pearson-correlation GRN on two random halves of the cells:
how much a simple network moves when the data change, not the training.

    python benchmarks/pbmc3k_grn_seeds.py [--seeds 0 1 2] [--top 1000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from _tables import markdown
from scipy.stats import spearmanr

import bioformers as bf

RESULTS = Path(__file__).parent / "results"


def upper_pairs(matrix: np.ndarray) -> np.ndarray:
    """Symmetrised weights of every unordered gene pair (i < j)."""
    symmetric = (matrix + matrix.T) / 2
    return symmetric[np.triu_indices_from(symmetric, k=1)]


def compare(a: np.ndarray, b: np.ndarray, top: int) -> dict[str, float]:
    top_a = set(np.argpartition(-a, top)[:top])
    top_b = set(np.argpartition(-b, top)[:top])
    return {"spearman": float(spearmanr(a, b).statistic), "top_overlap": len(top_a & top_b) / top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--top", type=int, default=1000)
    args = parser.parse_args()

    adata = bf.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=2000)
    adata = adata[:, adata.var["highly_variable"]].copy()

    networks: dict[str, dict[int, np.ndarray]] = {"attention": {}, "gene-embedding similarity": {}}
    seconds = {}
    for seed in args.seeds:
        run = adata.copy()
        start = time.perf_counter()
        model = bf.tl.pretrain(run, seed=seed, enable_progress_bar=False)
        bf.tl.attention_grn(run, model)
        bf.tl.gene_programs(run, model, seed=seed)
        seconds[seed] = time.perf_counter() - start
        networks["attention"][seed] = upper_pairs(run.varp["bioformers_attention"])
        networks["gene-embedding similarity"][seed] = upper_pairs(run.varp["bioformers_similarity"])
        print(f"seed {seed}: trained and read out in {seconds[seed]:.0f} s", flush=True)

    rows = []
    for name, runs in networks.items():
        pairs = [compare(runs[s], runs[t], args.top) for s, t in itertools.combinations(args.seeds, 2)]
        rows.append(
            {
                "network": f"{name}, seed vs seed",
                "pairs": str(len(pairs)),
                "spearman (median)": float(np.median([p["spearman"] for p in pairs])),
                f"top-{args.top} overlap (median)": float(np.median([p["top_overlap"] for p in pairs])),
            }
        )

    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    halves = []
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(lognorm.n_obs)
        first, second = np.sort(order[: lognorm.n_obs // 2]), np.sort(order[lognorm.n_obs // 2 :])
        a = upper_pairs(np.abs(bf.metrics.correlation_grn(lognorm.X[first])))
        b = upper_pairs(np.abs(bf.metrics.correlation_grn(lognorm.X[second])))
        halves.append(compare(a, b, args.top))
    rows.append(
        {
            "network": "Pearson |r|, half of the cells vs the other half",
            "pairs": str(len(halves)),
            "spearman (median)": float(np.median([h["spearman"] for h in halves])),
            f"top-{args.top} overlap (median)": float(np.median([h["top_overlap"] for h in halves])),
        }
    )

    header = (
        f"PBMC 3k, {adata.n_obs} cells x {adata.n_vars} HVGs; seeds {args.seeds}; package defaults; "
        f"training + read-out {np.median(list(seconds.values())):.0f} s per seed (median)\n\n"
    )
    table = markdown(pd.DataFrame(rows).set_index("network"))
    print(header + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pbmc3k_grn_seeds.md").write_text(header + table + "\n")
    (RESULTS / "pbmc3k_grn_seeds.json").write_text(json.dumps({"rows": rows, "seconds": seconds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
