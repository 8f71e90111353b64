"""PBMCs from three 10x chemistries: cell-type annotation by bioformers vs. logistic regression.

Data: ``../shared/data/pbmc_3chemistries_raw_labeled.h5ad`` (1,500 cells x 1,764 genes, raw
counts; ``batch`` = chemistry 3pv1 / 3pv2 / 5p, ``cell_type`` with 9 Symphony labels).

Settings:

* **held-out cells**: a stratified 80/20 split of all cells (all chemistries), seed ``--seed``;
* **cross-technology**: for each chemistry, the reference is the other two, the query is it.

For each setting bioformers is pretrained on the reference cells only (:func:`bioformers.tl.pretrain`,
d=64, 2 layers, 2 heads, ``--pretrain-epochs``), then :func:`bioformers.tl.annotate` trains on the
reference labels and annotates the query: ``fine_tune="head"`` (frozen network) and ``"all"``
(a copy of the whole network trained with the head). The baselines are scikit-learn's
``LogisticRegression`` fitted on the same reference cells and labels, on the same 1,764 genes,
log-normalised (counts per 10,000, ``log1p``; :func:`bioformers.data.log_normalize`): on the genes
themselves, and on the top 50 principal components of the reference (scaled genes, PCA fitted on the
reference, applied to the query); each with ``class_weight="balanced"`` (as bioformers) and without.

A class with fewer than 2 reference cells cannot be trained on by ``bf.tl.annotate``; its reference
cells are unlabelled for every method alike (HSC in the 3pv1 fold: 1 reference cell). Accuracy
and macro-F1 (:mod:`sklearn.metrics`, macro over the classes in the true or predicted labels) are
computed on the query cells.

Writes ``results/pbmc_annotation.{md,json}``.

    flock /tmp/bench.lock python benchmarks/pbmc_annotation.py [--pretrain-epochs 25] [--seed 0] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import bioformers as bf
from bioformers.data import log_normalize

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pbmc_3chemistries_raw_labeled.h5ad"
LABELS, BATCH, TRAIN_LABELS = "cell_type", "batch", "reference_label"
MODEL = {"n_hidden": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 256}
QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}


def settings(adata: ad.AnnData, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, reference cells, query cells)`` of every setting."""
    cells = np.arange(adata.n_obs)
    ref, query = train_test_split(cells, test_size=0.2, random_state=seed, stratify=adata.obs[LABELS])
    out = [("held-out 20% (all chemistries)", np.sort(ref), np.sort(query))]
    for chemistry in adata.obs[BATCH].cat.categories:
        is_query = (adata.obs[BATCH] == chemistry).to_numpy()
        out.append((f"query {chemistry} (reference: other two)", cells[~is_query], cells[is_query]))
    return out


def reference_labels(ref: ad.AnnData) -> list[str]:
    """Unlabel the reference cells of classes with fewer than 2 cells (for every method); return those classes."""
    counts = ref.obs[LABELS].value_counts()
    rare = [str(c) for c, n in counts.items() if 0 < n < 2]
    ref.obs[TRAIN_LABELS] = ref.obs[LABELS].astype(str).mask(ref.obs[LABELS].isin(rare))
    return rare


def baselines(ref: ad.AnnData, query: ad.AnnData, seed: int) -> dict[str, tuple[np.ndarray, float]]:
    """Logistic regression on log-normalised genes and on 50 reference PCs: predictions and seconds."""
    labelled = ref.obs[TRAIN_LABELS].notna().to_numpy()
    y = ref.obs[TRAIN_LABELS][labelled].to_numpy()
    x_ref, x_query = log_normalize(ref.X)[labelled], log_normalize(query.X)
    scaler = StandardScaler().fit(x_ref.toarray())
    pca = PCA(n_components=50, random_state=seed).fit(scaler.transform(x_ref.toarray()))
    pcs_ref, pcs_query = (pca.transform(scaler.transform(x.toarray())) for x in (x_ref, x_query))
    out = {}
    for weight in ("balanced", None):
        for features, train, test in (("genes", x_ref, x_query), ("50 PCs", pcs_ref, pcs_query)):
            start = time.perf_counter()
            fit = LogisticRegression(max_iter=2000, class_weight=weight, random_state=seed).fit(train, y)
            name = f"LogReg, log-norm {features}" + (", balanced" if weight else "")
            out[name] = (fit.predict(test), time.perf_counter() - start)
    return out


def pretrained(ref: ad.AnnData, args, name: str) -> tuple[bf.BioFormer, float]:
    """A BioFormer pretrained on the reference cells (loaded from ``--cache`` when it holds one)."""
    path = Path(args.cache) / f"seed{args.seed}_e{args.pretrain_epochs}_{name.split()[0]}_{name.split()[1]}"
    if args.cache and path.exists():
        return bf.BioFormer.load(str(path)), float("nan")
    start = time.perf_counter()
    model = bf.tl.pretrain(ref, **MODEL, max_epochs=args.pretrain_epochs, seed=args.seed, **QUIET)
    seconds = time.perf_counter() - start
    if args.cache:
        model.save(str(path), save_anndata=True)
    return model, seconds


def annotated(ref, query, model, fine_tune: str, args, **kwargs) -> tuple[np.ndarray, float]:
    """bioformers' predictions for the query and the seconds of the call."""
    start = time.perf_counter()
    bf.tl.annotate(
        ref, model, labels_key=TRAIN_LABELS, query=query, fine_tune=fine_tune, seed=args.seed, **QUIET, **kwargs
    )
    return query.obs["bioformers_label"].astype(str).to_numpy(), time.perf_counter() - start


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 of one method on one query."""
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
    }


def run_setting(adata, name, ref_cells, query_cells, args) -> tuple[list[dict], dict]:
    """Every method on one setting: rows of scores and a note of what was trained."""
    ref, query = adata[ref_cells].copy(), adata[query_cells].copy()
    rare = reference_labels(ref)
    truth = query.obs[LABELS].astype(str).to_numpy()
    predictions = baselines(ref, query, args.seed)
    model, pretrain_seconds = pretrained(ref, args, name)
    for fine_tune in ("head", "all"):
        predictions[f"bioformers, fine_tune={fine_tune!r}"] = annotated(ref, query.copy(), model, fine_tune, args)
    rows = [
        {"setting": name, "method": method, **scores(truth, predicted), "seconds": seconds}
        for method, (predicted, seconds) in predictions.items()
    ]
    per_class = {
        method: dict(
            zip(
                sorted(set(truth) | set(predicted)),
                f1_score(truth, predicted, average=None, labels=sorted(set(truth) | set(predicted)), zero_division=0)
                .round(3)
                .tolist(),
                strict=True,
            )
        )
        for method, (predicted, _) in predictions.items()
    }
    note = {
        "setting": name,
        "reference_cells": int(ref.n_obs),
        "query_cells": int(query.n_obs),
        "unlabelled_rare_classes": rare,
        "query_classes_absent_from_reference": sorted(set(truth) - set(ref.obs[TRAIN_LABELS].dropna())),
        "pretrain_seconds": pretrain_seconds,
        "per_class_f1": per_class,
    }
    return rows, note


def table(rows: list[dict]) -> str:
    """Markdown: per setting and method, then the mean over the three cross-chemistry folds."""
    frame = pd.DataFrame(rows)
    lines = ["| setting | method | accuracy | macro-F1 | seconds |", "|---|---|---|---|---|"]
    for row in frame.itertuples():
        lines.append(f"| {row.setting} | {row.method} | {row.accuracy:.3f} | {row.macro_f1:.3f} | {row.seconds:.1f} |")
    cross = frame[frame["setting"].str.startswith("query")]
    mean = cross.groupby("method", sort=False)[["accuracy", "macro_f1"]].mean()
    lines += ["", "Mean over the three cross-chemistry folds:", "", "| method | accuracy | macro-F1 |", "|---|---|---|"]
    lines += [f"| {method} | {r.accuracy:.3f} | {r.macro_f1:.3f} |" for method, r in mean.iterrows()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="", help="directory to keep (and reuse) pretrained models")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args()
    sc.settings.verbosity = 1

    adata = ad.read_h5ad(DATA)
    rows, notes = [], []
    for name, ref_cells, query_cells in settings(adata, args.seed):
        setting_rows, note = run_setting(adata, name, ref_cells, query_cells, args)
        rows += setting_rows
        notes.append(note)
        print(table(setting_rows).split("\n\nMean")[0], flush=True)
    text = table(rows)
    header = (
        f"PBMC 3 chemistries, {adata.n_obs} cells x {adata.n_vars} genes; seed {args.seed}; bioformers pretrained "
        f"on each reference ({MODEL}, {args.pretrain_epochs} epochs)\n\n"
    )
    print(header + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"pbmc_annotation{args.tag}.md").write_text(header + text + "\n")
    (RESULTS / f"pbmc_annotation{args.tag}.json").write_text(
        json.dumps({"args": vars(args), "model": MODEL, "rows": rows, "settings": notes}, indent=1)
    )


if __name__ == "__main__":
    main()
