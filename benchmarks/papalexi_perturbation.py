"""Papalexi 2021 CRISPR-KO screen: perturbation response of bioformers vs. the baselines that usually win.

Data: ``../shared/data/papalexi2021_thp1_crispr_sceptre_subset.h5ad`` (20,729 THP-1 cells x 299
genes, 25 knocked-out targets + control; 9 targets are measured genes).

* **Unseen perturbations, leave one target out**: each of the 9 measured targets is held out in
  turn; the model and every baseline train on all other cells (the other 24 perturbations and the
  controls). Seeds 0-2 by default.
* **Unseen cells** (``split="cells"``, first seed only): 20% of the cells of every perturbation are
  held out; all 25 perturbations are scored.

bioformers runs with the defaults of :func:`bioformers.tl.train_perturbation`, which first pretrains
on the control cells when no model is given. The controls are the same in every fold of a seed, so
that pretraining runs once per seed here (:func:`bioformers.tl.pretrain` on the training controls,
as the default does) and each fold fine-tunes it. ``max_seq_len=128`` holds every expressed gene
of almost every cell (299 genes) at half the default's cost. Every baseline is fitted on the same
training cells (:func:`bioformers.metrics.perturbation_baselines`): no change (control mean), the
mean of the training perturbations, the linear model of Ahlmann-Eltze et al. (2025) with gene
embeddings from PCA of the training cells and, separately, from the pretrained model (which knows
the held-out gene from the control cells), and an MLP. On the cells split, the perturbation's own
mean over its training cells is the ceiling. Scores (:func:`bioformers.metrics.perturbation_scores`)
compare predicted and observed mean log-normalised expression of the held-out cells, the top 20
DE genes of each perturbation from a t-test vs control on all its cells; centroid ranks are among
all 25 observed perturbations.

Writes ``results/papalexi_perturbation.{md,json}`` and ``results/papalexi_perturbation_*.png``.

    python benchmarks/papalexi_perturbation.py [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
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
MAX_SEQ_LEN = 128
METRICS = [
    "pearson_delta",
    "pearson_delta_top",
    "pearson_delta_perturbed",
    "centroid_accuracy",
    "centroid_rank",
    "direction_top",
    "mse_top",
    "l2_top",
]
#: the metrics on which bioformers is compared with each baseline, fold by fold
PAIRED = ["pearson_delta", "pearson_delta_perturbed", "centroid_accuracy"]
QUIET = {"enable_progress_bar": False}
PLOTTED = "STAT1"  # a knock-out that changes many genes: its predicted vs observed changes are plotted


def log_normalized(adata: ad.AnnData) -> ad.AnnData:
    """The scale the model predicts on (:func:`bioformers.data.log_normalize`), with the perturbation labels."""
    return ad.AnnData(log_normalize(adata.X), obs=adata.obs[[KEY]].copy(), var=pd.DataFrame(index=adata.var_names))


def predictions(counts, log, model, pretrained, train_cells, perturbations, seed: int, cells_split: bool) -> dict:
    """Every method's predicted mean profiles of ``perturbations``, fitted on ``train_cells``."""
    train = log[train_cells].copy()
    out = bf.metrics.perturbation_baselines(train, perturbations, seed=seed)
    bf.tl.gene_embeddings(train, pretrained)
    out["linear, model gene embedding"] = bf.metrics.perturbation_baselines(
        train, perturbations, methods="linear", gene_embedding="bioformers_genes"
    )["linear"]
    if cells_split:  # the reference a model should approach when every perturbation was seen
        out["perturbation_mean"] = bf.metrics.mean_profiles(train).loc[perturbations]
    predicted = bf.tl.predict_perturbation(model, counts[train_cells], perturbations, seed=seed)
    return {"bioformers": bf.metrics.mean_profiles(predicted).loc[perturbations]} | out, predicted


def score(profiles: dict, observed, top, **labels) -> list[dict]:
    rows = []
    for method, frame in profiles.items():
        scores = bf.metrics.perturbation_scores(frame.dropna(), observed, top_genes=top)
        scores["centroid_accuracy"] = (scores["centroid_rank"] == 1).astype(float)
        for perturbation, values in scores.iterrows():
            rows.append(labels | {"method": method, "perturbation": perturbation} | values.to_dict())
    return rows


def leave_one_out(
    counts, log, pretrained, target: str, seed: int, top, train: dict, plot: Path | None
) -> tuple[list[dict], float, dict]:
    labels = log.obs[KEY].astype(str).to_numpy()
    start = time.perf_counter()
    model = bf.tl.train_perturbation(
        counts,
        pretrained,
        perturbation_key=KEY,
        test_perturbations=[target],
        max_seq_len=MAX_SEQ_LEN,
        seed=seed,
        **train,
        **QUIET,
    )
    seconds = time.perf_counter() - start
    train_cells = np.flatnonzero(labels != target)
    profiles, predicted = predictions(counts, log, model, pretrained, train_cells, [target], seed, cells_split=False)
    if plot is not None:
        fig = bf.pl.perturbation(predicted, log, target, return_fig=True)
        fig.savefig(plot, dpi=120, bbox_inches="tight")
    return score(profiles, log, top, seed=seed, split="leave-one-out"), seconds, profiles


def seen_cells(counts, log, pretrained, seed: int, top, train: dict) -> tuple[list[dict], float]:
    start = time.perf_counter()
    model = bf.tl.train_perturbation(
        counts, pretrained, perturbation_key=KEY, split="cells", max_seq_len=MAX_SEQ_LEN, seed=seed, **train, **QUIET
    )
    seconds = time.perf_counter() - start
    test_cells = np.flatnonzero(counts.obs_names.isin(model.perturbation_["test_cells"]))
    train_cells = np.setdiff1d(np.arange(counts.n_obs), test_cells)
    perturbations = model.perturbation_["test_perturbations"]
    observed = log[np.union1d(test_cells, np.flatnonzero(log.obs[KEY] == CONTROL))]
    profiles, _ = predictions(counts, log, model, pretrained, train_cells, perturbations, seed, cells_split=True)
    return score(profiles, observed, top, seed=seed, split="cells"), seconds


# --- report ----------------------------------------------------------------------------------------------
def cell(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.3f}"


def over_seeds(frame: pd.DataFrame) -> str:
    """Mean over the held-out targets of each seed, then mean ± sd over seeds."""
    per_seed = frame.groupby(["method", "seed"], sort=False)[METRICS].mean()
    mean = per_seed.groupby(level="method", sort=False).mean()
    sd = per_seed.groupby(level="method", sort=False).std(ddof=0).fillna(0.0)
    lines = ["| method | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for method in mean.index:
        lines.append(
            f"| {method} | " + " | ".join(cell(mean.loc[method, m], sd.loc[method, m]) for m in METRICS) + " |"
        )
    return "\n".join(lines)


def paired(frame: pd.DataFrame) -> str:
    """bioformers minus each baseline, target by target within a seed: mean over targets, then ± sd over seeds."""
    lines = ["| baseline | " + " | ".join(f"Δ {m}" for m in PAIRED) + " |", "|---" * (len(PAIRED) + 1) + "|"]
    wide = frame.pivot_table(index=["seed", "perturbation"], columns="method", values=PAIRED, dropna=False)
    for method in frame["method"].unique():
        if method == "bioformers":
            continue
        cells = []
        for metric in PAIRED:
            difference = (wide[(metric, "bioformers")] - wide[(metric, method)]).groupby(level="seed").mean()
            cells.append(cell(difference.mean(), difference.std(ddof=0)) if difference.notna().any() else "n/a")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_target(frame: pd.DataFrame, metric: str) -> str:
    table = frame.pivot_table(index="perturbation", columns="method", values=metric, sort=False)
    head = "| held-out target | " + " | ".join(table.columns) + " |"
    rows = [f"| {i} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for i, row in table.iterrows()]
    return "\n".join([head, "|---" * (table.shape[1] + 1) + "|", *rows])


def per_perturbation(frame: pd.DataFrame) -> str:
    """Mean ± sd over perturbations of every metric, one line per method."""
    lines = ["| method | " + " | ".join(METRICS) + " | perturbations |", "|---" * (len(METRICS) + 2) + "|"]
    for method, values in frame.groupby("method", sort=False):
        cells = " | ".join(cell(values[m].mean(), values[m].std(ddof=0)) for m in METRICS)
        lines.append(f"| {method} | {cells} | {len(values)} |")
    return "\n".join(lines)


def report(loo: pd.DataFrame, cells: pd.DataFrame, seconds: dict, collapse: dict, measured: list[str]) -> str:
    sections = [
        f"## Unseen perturbations: leave one target out, seeds {', '.join(map(str, sorted(set(loo['seed']))))}\n\n"
        "Mean over the held-out targets of each seed, then mean ± sd over seeds. `centroid_accuracy`: the share "
        "of targets whose prediction is closer to their own observed profile than to any other perturbation's "
        "(rank 1 of 25). `pearson_delta_perturbed` is NaN for train_mean: its prediction is the mean of the "
        "other perturbations, which that metric subtracts.\n\n" + over_seeds(loo),
        "### bioformers minus each baseline, paired by fold\n\n" + paired(loo),
        "### corr(Δ vs control) per held-out target, mean over seeds\n\n" + per_target(loo, "pearson_delta"),
        "### corr(Δ vs the other perturbations' mean) per held-out target, mean over seeds\n\n"
        + per_target(loo, "pearson_delta_perturbed"),
    ]
    if len(cells):
        sections.append(
            f"## Unseen cells: 20% of every perturbation's cells held out (seed {int(cells['seed'].iloc[0])})\n\n"
            "Mean ± sd over perturbations; all 25 (the linear models: the 9 measured targets only).\n\n"
            + per_perturbation(cells)
            + f"\n\nThe {len(measured)} perturbations of measured targets, all methods:\n\n"
            + per_perturbation(cells[cells["perturbation"].isin(measured)])
        )
    sections.append(
        f"Mean pairwise correlation of the predicted deltas of the {loo['perturbation'].nunique()} held-out targets "
        "(mean collapse near 1):\n\n"
        + "\n".join(f"* seed {s}: " + ", ".join(f"{m} {c:.2f}" for m, c in v.items()) for s, v in collapse.items())
    )
    sections.append(
        "Time (2 cores): "
        + "; ".join(f"seed {s}: {', '.join(f'{k} {v:.0f} s' for k, v in seconds[s].items())}" for s in seconds)
    )
    return "\n\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", default=None, help="held-out targets (default: every measured one)")
    parser.add_argument("--no-cells-split", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 targets, 1 epoch: checks the script runs")
    parser.add_argument("--append", action="store_true", help="keep the other seeds' results from the last run's JSON")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    RESULTS.mkdir(exist_ok=True)

    counts = ad.read_h5ad(args.data)
    counts.obs = counts.obs[[KEY]].copy()
    log = log_normalized(counts)
    labels = counts.obs[KEY].astype(str).to_numpy()
    measured = sorted({t for t in labels if t != CONTROL} & set(counts.var_names))
    targets = args.targets or measured
    train = {}
    if args.quick:
        args.seeds, targets, train = args.seeds[:1], targets[:2], {"max_epochs": 1}
    top = bf.metrics.top_de_genes(log, perturbations=[p for p in dict.fromkeys(labels) if p != CONTROL])
    name = "papalexi_perturbation" + ("_quick" if args.quick else "")
    plotted = PLOTTED if PLOTTED in targets else targets[-1]

    rows, cells, seconds, collapse = [], [], {}, {}
    if args.append and (RESULTS / f"{name}.json").exists():
        # a long run can be split over sessions: seeds run now replace their old rows, the others stay
        old = json.loads((RESULTS / f"{name}.json").read_text())
        rows = [r for r in old["leave_one_out"] if r["seed"] not in args.seeds]
        cells = old["cells"]
        seconds = {int(s): v for s, v in old.get("seconds", {}).items() if int(s) not in args.seeds}
        collapse = {int(s): v for s, v in old.get("collapse", {}).items() if int(s) not in args.seeds}
    first_seed = min([r["seed"] for r in rows] + args.seeds)
    for seed in args.seeds:
        seconds[seed] = {}
        start = time.perf_counter()
        pretrained = bf.tl.pretrain(
            counts[labels == CONTROL].copy(), max_seq_len=MAX_SEQ_LEN, seed=seed, **train, **QUIET
        )
        seconds[seed]["pretraining"] = time.perf_counter() - start
        held_out = {}
        for target in targets:
            fold, seconds[seed][target], profiles = leave_one_out(
                counts,
                log,
                pretrained,
                target,
                seed,
                top,
                train,
                plot=RESULTS / f"{name}_{target}.png" if target == plotted and seed == first_seed else None,
            )
            rows += fold
            held_out[target] = profiles
            print(f"seed {seed} {target}: fine-tuned in {seconds[seed][target]:.0f} s", flush=True)
        control_mean = bf.metrics.mean_profiles(log).loc[CONTROL]
        collapse[seed] = {
            method: bf.metrics.mean_collapse(
                pd.concat([held_out[t][method] for t in targets]), control_mean, warn=False
            )
            for method in held_out[targets[0]]
            if len(targets) > 1
        }
        if seed == first_seed and not args.no_cells_split:
            cells, seconds[seed]["cells split"] = seen_cells(counts, log, pretrained, seed, top, train)
        loo_frame, cells_frame = pd.DataFrame(rows), pd.DataFrame(cells)
        text = report(loo_frame, cells_frame, seconds, collapse, measured)
        header = "# Papalexi 2021 perturbation response\n\n" + __doc__.split("\n\n")[1]
        (RESULTS / f"{name}.md").write_text(header + "\n\n" + text + "\n")
        (RESULTS / f"{name}.json").write_text(
            json.dumps({"leave_one_out": rows, "cells": cells, "seconds": seconds, "collapse": collapse}, indent=1)
            + "\n"
        )
        fig = bf.pl.perturbation_scores(loo_frame[loo_frame["seed"] == first_seed], return_fig=True)
        fig.savefig(RESULTS / f"{name}_unseen.png", dpi=120, bbox_inches="tight")
    print(text)


if __name__ == "__main__":
    main()
