"""Papalexi 2021 CRISPR-KO screen: perturbation response of bioformers vs. the baselines that usually win.

Data: ``../shared/data/papalexi2021_thp1_crispr_sceptre_subset.h5ad`` (20,729 THP-1 cells x 299
genes, 25 knocked-out targets + control; 9 targets are measured genes).

* **Unseen perturbations** (``split="simulation"``): the 9 measured targets are shuffled (seeded)
  into 3 folds of 3; each split holds one fold out entirely and trains on all other cells (the
  other 22 perturbations + control).
* **Unseen cells** (``split="cells"``): 20% of the cells of every perturbation are held out; all 25
  perturbations are scored.

bioformers is pretrained once by masked gene modelling on the control cells only (never on a
perturbed cell, so no held-out perturbation leaks into it), then fine-tuned on each split with
:func:`bioformers.tl.train_perturbation`. Every baseline is fitted on the same training cells of
the same split (:func:`bioformers.metrics.perturbation_baselines`): no change (control mean), the
mean of the training perturbations, the linear model of Ahlmann-Eltze et al. (2025) and an MLP.
On the cells split, the perturbation's own mean over its training cells is the reference a model
should approach. Scores (:func:`bioformers.metrics.perturbation_scores`) compare predicted and
observed mean log-normalised expression of the held-out cells, on the top 20 DE genes of each
perturbation (t-test vs control on all its cells).

Writes ``results/papalexi_perturbation.{md,json}`` and ``results/papalexi_perturbation_*.png``.

    python benchmarks/papalexi_perturbation.py [--max-epochs 10] [--quick]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd

import bioformers as bf
from bioformers.data import log_normalize

matplotlib.use("Agg")

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "papalexi2021_thp1_crispr_sceptre_subset.h5ad"
KEY, CONTROL = "perturbation", "control"
METRICS = [
    "pearson_delta",
    "pearson_delta_top",
    "pearson_delta_perturbed",
    "centroid_rank",
    "direction_top",
    "mse_top",
    "pearson",
    "pearson_top",
    "l2_top",
]


def log_normalized(adata: ad.AnnData) -> ad.AnnData:
    """The scale the model predicts on (:func:`bioformers.data.log_normalize`), with the perturbation labels."""
    return ad.AnnData(log_normalize(adata.X), obs=adata.obs[[KEY]].copy(), var=pd.DataFrame(index=adata.var_names))


def score_split(name, counts, log, model, train_cells, test_cells, perturbations, args) -> tuple[list[dict], dict]:
    """All methods' scores for the held-out ``perturbations`` of one split, one row per (method, perturbation)."""
    observed = log[np.union1d(test_cells, np.flatnonzero(log.obs[KEY] == CONTROL))]
    top = bf.metrics.top_de_genes(log, perturbations=perturbations, n_top_genes=20)
    start = time.perf_counter()
    predictions = bf.metrics.perturbation_baselines(log[train_cells], perturbations, seed=args.seed)
    baseline_seconds = time.perf_counter() - start
    if name == "cells":
        # the reference a model should approach when every perturbation was seen
        predictions["perturbation_mean"] = bf.metrics.mean_profiles(log[train_cells]).loc[perturbations]
    pred = bf.tl.predict_perturbation(model, counts[train_cells], perturbations, n_cells=args.n_cells, seed=args.seed)
    predictions = {"bioformers": bf.metrics.mean_profiles(pred).loc[perturbations]} | predictions
    if name == "unseen_0":
        fig = bf.pl.perturbation(pred, observed, perturbations[0], return_fig=True)
        fig.savefig(RESULTS / f"papalexi_perturbation_{perturbations[0]}.png", dpi=120, bbox_inches="tight")
    control_mean = bf.metrics.mean_profiles(log[train_cells]).loc[CONTROL]
    collapse = {m: bf.metrics.mean_collapse(p, control_mean, warn=False) for m, p in predictions.items()}
    rows = []
    for method, profiles in predictions.items():
        scores = bf.metrics.perturbation_scores(profiles.dropna(), observed, top_genes=top)
        for perturbation, values in scores.iterrows():
            rows.append({"split": name, "method": method, "perturbation": perturbation} | values.to_dict())
    print(
        f"  {name}: baselines {baseline_seconds:.0f} s; mean pairwise corr of predicted deltas: "
        + ", ".join(f"{m} {c:.2f}" for m, c in collapse.items())
    )
    return rows, collapse


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over perturbations within each split, then mean and sd over splits."""
    per_split = frame.groupby(["method", "split"], sort=False)[METRICS].mean()
    mean = per_split.groupby(level="method", sort=False).mean()
    sd = per_split.groupby(level="method", sort=False).std(ddof=0)
    return mean, sd


def table(mean: pd.DataFrame, sd: pd.DataFrame, n: dict) -> str:
    lines = ["| method | " + " | ".join(METRICS) + " | perturbations |", "|---" * (len(METRICS) + 2) + "|"]
    for method in mean.index:
        cells = [f"{mean.loc[method, m]:.3f} ± {sd.loc[method, m]:.3f}" for m in METRICS]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {n[method]} |")
    return "\n".join(lines)


def markdown(frame: pd.DataFrame) -> str:
    """A numeric DataFrame as a markdown table (3 decimals)."""
    head = "| " + " | ".join([str(frame.index.name or ""), *map(str, frame.columns)]) + " |"
    rows = ["| " + " | ".join([str(i), *(f"{v:.3f}" for v in row)]) + " |" for i, row in frame.iterrows()]
    return "\n".join([head, "|---" * (frame.shape[1] + 1) + "|", *rows])


def per_perturbation_table(rows: pd.DataFrame) -> str:
    """Mean ± sd over perturbations of every metric, one line per method."""
    lines = ["| method | " + " | ".join(METRICS) + " | perturbations |", "|---" * (len(METRICS) + 2) + "|"]
    for method, values in rows.groupby("method", sort=False):
        cells = " | ".join(f"{values[m].mean():.3f} ± {values[m].std(ddof=0):.3f}" for m in METRICS)
        lines.append(f"| {method} | {cells} | {len(values)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--max-seq-len", type=int, default=128, help="all expressed genes of almost every cell")
    parser.add_argument("--n-cells", type=int, default=300, help="control cells per predicted perturbation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--no-cells-split", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1 split, 1 epoch: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.splits, args.max_epochs, args.pretrain_epochs = 1, 1, 1
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    quiet = {"enable_progress_bar": False}

    counts = ad.read_h5ad(args.data)
    counts.obs = counts.obs[[KEY]].copy()
    log = log_normalized(counts)
    labels = counts.obs[KEY].astype(str).to_numpy()
    measured = sorted({t for t in labels if t != CONTROL} & set(counts.var_names))
    folds = np.array_split(np.random.default_rng(args.seed).permutation(measured), 3)[: args.splits]

    start = time.perf_counter()
    controls = counts[labels == CONTROL].copy()
    pretrained = bf.tl.pretrain(
        controls, max_seq_len=args.max_seq_len, max_epochs=args.pretrain_epochs, seed=args.seed, **quiet
    )
    pretrain_seconds = time.perf_counter() - start
    print(f"pretrained on {controls.n_obs} control cells in {pretrain_seconds:.0f} s")

    rows, collapse, seconds = [], {}, {}
    for k, fold in enumerate(folds):
        test = fold.tolist()
        start = time.perf_counter()
        model = bf.tl.train_perturbation(
            counts,
            pretrained,
            perturbation_key=KEY,
            test_perturbations=test,
            max_epochs=args.max_epochs,
            max_seq_len=args.max_seq_len,
            seed=args.seed,
            **quiet,
        )
        seconds[f"unseen_{k}"] = time.perf_counter() - start
        train_cells = np.flatnonzero(~np.isin(labels, test))
        split_rows, collapse[f"unseen_{k}"] = score_split(
            f"unseen_{k}", counts, log, model, train_cells, np.flatnonzero(np.isin(labels, test)), test, args
        )
        rows += split_rows
        print(f"split unseen_{k} {test}: trained in {seconds[f'unseen_{k}']:.0f} s")

    if not args.no_cells_split:
        start = time.perf_counter()
        model = bf.tl.train_perturbation(
            counts,
            pretrained,
            perturbation_key=KEY,
            split="cells",
            max_epochs=args.max_epochs,
            max_seq_len=args.max_seq_len,
            seed=args.seed,
            **quiet,
        )
        seconds["cells"] = time.perf_counter() - start
        test_cells = np.flatnonzero(counts.obs_names.isin(model.perturbation_["test_cells"]))
        train_cells = np.setdiff1d(np.arange(counts.n_obs), test_cells)
        perturbations = model.perturbation_["test_perturbations"]
        rows_cells, collapse["cells"] = score_split(
            "cells", counts, log, model, train_cells, test_cells, perturbations, args
        )
        print(f"split cells: trained in {seconds['cells']:.0f} s")

    RESULTS.mkdir(exist_ok=True)
    suffix = "_quick" if args.quick else ("" if args.seed == 0 else f"_seed{args.seed}")
    frame = pd.DataFrame(rows)
    sections = []
    if len(frame):
        mean, sd = summary(frame)
        n = frame.groupby("method", sort=False).size().to_dict()
        sections.append(
            f"## Unseen perturbations: {len(folds)} splits of the 9 measured targets\n\n"
            "Mean over the held-out perturbations of each split, then mean ± sd over splits.\n\n" + table(mean, sd, n)
        )
        per_target = frame.pivot_table(index="perturbation", columns="method", values="pearson_delta", sort=False)
        sections.append("### corr(delta) per held-out perturbation\n\n" + markdown(per_target))
        fig = bf.pl.perturbation_scores(frame, return_fig=True)
        fig.savefig(RESULTS / f"papalexi_perturbation_unseen{suffix}.png", dpi=120, bbox_inches="tight")
    if not args.no_cells_split:
        cells = pd.DataFrame(rows_cells)
        # the linear model cannot represent the 16 unmeasured targets: also compare on the 9 measured ones
        measured_rows = cells[cells["perturbation"].isin(measured)]
        sections.append(
            "## Unseen cells: 20% of every perturbation's cells held out\n\n"
            "Mean ± sd over perturbations; all 25 (the linear model: the 9 measured targets only).\n\n"
            + per_perturbation_table(cells)
            + "\n\nThe 9 perturbations of measured targets, all methods:\n\n"
            + per_perturbation_table(measured_rows)
        )
        fig = bf.pl.perturbation_scores(cells, return_fig=True)
        fig.savefig(RESULTS / f"papalexi_perturbation_cells{suffix}.png", dpi=120, bbox_inches="tight")
        frame = pd.concat([frame, cells])
    sections.append(
        "Mean pairwise correlation of predicted deltas between perturbations (mean collapse near 1):\n\n"
        + "\n".join(
            f"* {split}: " + ", ".join(f"{m} {c:.2f}" for m, c in values.items()) for split, values in collapse.items()
        )
    )
    sections.append(
        f"Time: pretraining {pretrain_seconds:.0f} s; fine-tuning "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + f" ({args.max_epochs} epochs, max_seq_len {args.max_seq_len})."
    )
    header = f"# Papalexi 2021 perturbation response (seed {args.seed})\n\n" + __doc__.split("\n\n")[1]
    text = header + "\n\n" + "\n\n".join(sections) + "\n"
    print(text)
    (RESULTS / f"papalexi_perturbation{suffix}.md").write_text(text)
    frame.to_json(RESULTS / f"papalexi_perturbation{suffix}.json", orient="records", indent=1)


if __name__ == "__main__":
    main()
