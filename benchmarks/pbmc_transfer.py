"""Transfer: a model pretrained on PBMC 3k (10x v1), used on PBMCs of three other 10x chemistries.

Source: PBMC 3k (bundled; 2,638 cells) on the 1,287 genes it shares with the target. Target:
``../shared/data/pbmc_3chemistries_raw_labeled.h5ad`` (1,500 cells x 1,764 genes; ``batch`` = 10x
3' v1 / 3' v2 / 5', ``cell_type`` = 9 labels); no cell of it is in PBMC 3k. For each seed:

* **zero-shot**: ``bf.tl.pretrain(source)`` (defaults), saved and loaded without data
  (``BioFormer.load(dir)``), then ``bf.tl.embed(target, model)``: the target's genes matched by name
  (the 477 it has that the model does not know are ignored).
* **fine-tuned**: ``bf.tl.pretrain(target, init=model)`` with the defaults (learning rate 1e-4, the
  usual epochs for 1,500 cells).
* **from scratch**: ``bf.tl.pretrain(target)`` on all 1,764 genes, the defaults.
* **PCA**: log-normalised (1e4), 50 components, all 1,764 genes.

Scores: :func:`bioformers.metrics.integration_scores` with the cell types and chemistries (NMI/ARI
at the best Leiden resolution, cell-type ASW, batch ASW, graph connectivity, iLISI, the 0.6/0.4
overall score); mean ± sd over seeds, and fine-tuned minus the others paired by seed. No batch key
anywhere. Writes ``results/pbmc_transfer.{md,json}``.

    python benchmarks/pbmc_transfer.py [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

import bioformers as bf

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc_3chemistries_raw_labeled.h5ad"
RESULTS = Path(__file__).parent / "results"
BATCH, LABELS = "batch", "cell_type"
SCORES = ("nmi", "ari", "asw_label", "bio_conservation", "batch_asw", "ilisi", "batch_correction", "overall")
METHODS = ("zero-shot", "fine-tuned", "from scratch", "PCA")
QUIET = {"enable_progress_bar": False}


def pca(adata: ad.AnnData, seed: int) -> np.ndarray:
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.pca(lognorm, n_comps=50, random_state=seed)
    return lognorm.obsm["X_pca"]


def one_seed(source: ad.AnnData, target: ad.AnnData, seed: int, epochs: int | None, tmp: Path) -> tuple[dict, dict]:
    """Every method's embedding of the target and its scores, and the seconds each took."""
    embeddings, seconds = {}, {}
    start = time.perf_counter()
    pretrained = bf.tl.pretrain(source.copy(), seed=seed, max_epochs=epochs, **QUIET)
    pretrained.save(str(tmp / f"model_{seed}"), overwrite=True)
    seconds["pretraining on the source"] = time.perf_counter() - start
    model = bf.BioFormer.load(str(tmp / f"model_{seed}"))  # as a shared model arrives: a directory, no data

    query = target.copy()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the coverage note: 1,287 of the target's 1,764 genes
        bf.tl.embed(query, model)
    embeddings["zero-shot"], seconds["zero-shot"] = query.obsm["X_bioformers"], time.perf_counter() - start

    query = target.copy()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        bf.tl.pretrain(query, init=model, seed=seed, max_epochs=epochs, **QUIET)
    embeddings["fine-tuned"], seconds["fine-tuned"] = query.obsm["X_bioformers"], time.perf_counter() - start

    query = target.copy()
    start = time.perf_counter()
    bf.tl.pretrain(query, seed=seed, max_epochs=epochs, **QUIET)
    embeddings["from scratch"], seconds["from scratch"] = query.obsm["X_bioformers"], time.perf_counter() - start

    start = time.perf_counter()
    embeddings["PCA"], seconds["PCA"] = pca(target, seed), time.perf_counter() - start

    scored = target.copy()
    scores = {}
    for name, embedding in embeddings.items():
        scored.obsm["X_method"] = embedding
        result = bf.metrics.integration_scores(scored, use_rep="X_method", batch_key=BATCH, label_key=LABELS, seed=seed)
        scores[name] = {key: float(result[key]) for key in SCORES}
    return scores, seconds


def markdown(frame: pd.DataFrame, seconds: dict, seeds: list[int]) -> str:
    per_method = frame.groupby("method", sort=False)[list(SCORES)]
    mean, sd = per_method.mean(), per_method.std(ddof=0)
    header = "| method | " + " | ".join(SCORES) + " |"
    lines = [header, "|---|" + "---:|" * len(SCORES)]
    for method in METHODS:
        cells = [f"{mean.loc[method, s]:.3f} ± {sd.loc[method, s]:.3f}" for s in SCORES]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    wide = frame.pivot(index="seed", columns="method", values=list(SCORES))
    paired = ["| fine-tuned minus | " + " | ".join(SCORES) + " |", "|---|" + "---:|" * len(SCORES)]
    for other in ("zero-shot", "from scratch", "PCA"):
        diffs = [wide[(s, "fine-tuned")] - wide[(s, other)] for s in SCORES]
        paired.append(f"| {other} | " + " | ".join(f"{d.mean():+.3f} ± {d.std(ddof=0):.3f}" for d in diffs) + " |")
    times = "; ".join(f"{name} {np.median(values):.0f} s" for name, values in seconds.items())
    return (
        "\n".join(
            [
                "# Transfer between PBMC datasets",
                "",
                __doc__.split("\n\n")[1],
                "",
                f"Mean ± sd over seeds {', '.join(map(str, seeds))} (2 cores, CPU):",
                "",
                *lines,
                "",
                "Paired by seed:",
                "",
                *paired,
                "",
                f"Median time per seed: {times}.",
            ]
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch per training: checks the script runs")
    args = parser.parse_args()
    seeds, epochs = (args.seeds[:1], 1) if args.quick else (args.seeds, None)
    target = ad.read_h5ad(args.data)
    target = ad.AnnData(X=target.X, obs=target.obs[[BATCH, LABELS]].copy(), var=target.var[[]].copy())
    reference = bf.datasets.pbmc3k()
    source = reference[:, [g for g in target.var_names if g in set(reference.var_names)]].copy()
    rows, seconds = [], {}
    with tempfile.TemporaryDirectory(prefix="pbmc_transfer_") as tmp:
        for seed in seeds:
            scores, times = one_seed(source, target, seed, epochs, Path(tmp))
            rows += [{"seed": seed, "method": method} | values for method, values in scores.items()]
            for name, value in times.items():
                seconds.setdefault(name, []).append(value)
            print(f"seed {seed}: " + ", ".join(f"{m} NMI {v['nmi']:.3f}" for m, v in scores.items()), flush=True)
    frame = pd.DataFrame(rows)
    name = "pbmc_transfer" + ("_quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"rows": rows, "seconds": seconds}, indent=1) + "\n")
    text = markdown(frame, seconds, seeds)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
