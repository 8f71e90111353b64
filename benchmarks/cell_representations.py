"""Cell representations: bioformers' defaults next to PCA, scVI and logistic regression, in one run.

Every task of issue 22, seeds 0-2, the baselines and bioformers trained in the same process on the
same cells:

* ``pbmc3k``: PBMC 3k (bundled, 2,638 cells, 8 types), 2,000 ``seurat_v3`` HVGs. Clustering
  (AvgBIO with KMeans k = #types and with Leiden at the best resolution) of PCA (Scanpy's recipe:
  normalise, log, scale, 50 PCs), scVI (``scvi.model.SCVI`` defaults, ``train()`` defaults) and
  ``bf.tl.pretrain(adata)``. Predicted expression: per gene, Pearson r across cells between
  log1p of the prediction and the observed ``log1p(normalize_total(1e4))``; median over the genes
  (scVI: ``get_normalized_expression(library_size=1e4)``; bioformers: ``bf.tl.predict`` defaults).
* ``chemistries``: PBMCs from three 10x chemistries (1,500 cells, 1,764 genes, Symphony's 9 types).
  Clustering without a batch key (PCA on log-normalised genes, scVI, bioformers) and integration
  with ``batch_key="batch"`` (scVI, bioformers) scored with :func:`bioformers.metrics.integration_scores`.
* ``annotation``: the same data; reference = two chemistries, query = the third, all three folds.
  Logistic regression on log-normalised genes (class-balanced, as scikit-learn users run it) vs.
  ``bf.tl.pretrain(reference)`` then ``bf.tl.annotate(reference, model, query=query)`` defaults.

Writes ``results/cell_representations.{md,json}`` (``--tag``: a suffix). ``--set key=value`` passes
an option to ``bf.tl.pretrain`` (exploration only: the report names it; the defaults are what ships).

    python benchmarks/cell_representations.py [--seeds 0 1 2] [--sections pbmc3k chemistries annotation]
"""

from __future__ import annotations

import argparse
import ast
import json
import time
import warnings
from pathlib import Path

import numpy as np
import scanpy as sc
import scvi
from _tables import mean_sd
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

import bioformers as bf

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
QUIET = {"enable_progress_bar": False}
SECTIONS = ("pbmc3k", "chemistries", "annotation")


def log_normalized(X) -> np.ndarray:
    """``log1p`` of counts scaled to 1e4 per cell, dense."""
    X = sparse.csr_matrix(X, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    return np.log1p(np.asarray(sparse.diags(1e4 / totals) @ X.todense()))


def pca(adata, *, scale: bool) -> np.ndarray:
    """50 principal components of log-normalised counts (scaled to max 10 first with ``scale``)."""
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    if scale:
        sc.pp.scale(lognorm, max_value=10)
    sc.pp.pca(lognorm, n_comps=50, random_state=0)
    return lognorm.obsm["X_pca"]


def scvi_model(adata, seed: int, batch_key: str | None = None) -> tuple[scvi.model.SCVI, float]:
    """scVI as a user runs it: default model, default training."""
    scvi.settings.seed = seed
    data = adata.copy()
    scvi.model.SCVI.setup_anndata(data, batch_key=batch_key)
    model = scvi.model.SCVI(data)
    start = time.perf_counter()
    model.train(**QUIET)
    return model, time.perf_counter() - start


def bioformers(adata, seed: int, options: dict, **kwargs) -> tuple[bf.BioFormer, float]:
    """``bf.tl.pretrain`` with its defaults (plus the exploration ``options``)."""
    start = time.perf_counter()
    model = bf.tl.pretrain(adata, seed=seed, **options, **kwargs, **QUIET)
    return model, time.perf_counter() - start


def clustering(adata, rep: np.ndarray, labels: str, seed: int) -> dict[str, float]:
    """KMeans and best-Leiden AvgBIO of one representation."""
    scored = sc.AnnData(obs=adata.obs[[labels]].copy(), obsm={"rep": np.asarray(rep, dtype=np.float32)})
    out = {}
    for method in ("kmeans", "leiden"):
        out[method] = bf.metrics.avg_bio(scored, label_key=labels, use_rep="rep", cluster=method, seed=seed)["avg_bio"]
    return out


def median_gene_r(predicted: np.ndarray, observed: np.ndarray) -> float:
    """Median over genes of Pearson r across cells (genes constant in either matrix left out)."""
    p = predicted - predicted.mean(axis=0)
    o = observed - observed.mean(axis=0)
    denominator = np.sqrt((p**2).sum(axis=0) * (o**2).sum(axis=0))
    keep = denominator > 0
    return float(np.median((p * o).sum(axis=0)[keep] / denominator[keep]))


def run_pbmc3k(seed: int, options: dict, baselines: bool) -> dict:
    """Clustering and predicted expression on PBMC 3k."""
    adata = bf.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=2000)
    adata = adata[:, adata.var["highly_variable"]].copy()
    observed = log_normalized(adata.X)
    out: dict = {"clustering": {}, "predicted_r": {}, "seconds": {}}
    if baselines:
        out["clustering"]["PCA"] = clustering(adata, pca(adata, scale=True), "cell_type", seed)
        model, out["seconds"]["scVI"] = scvi_model(adata, seed)
        out["clustering"]["scVI"] = clustering(adata, model.get_latent_representation(), "cell_type", seed)
        normalized = model.get_normalized_expression(library_size=1e4, return_numpy=True)
        out["predicted_r"]["scVI"] = median_gene_r(np.log1p(normalized), observed)
    model, out["seconds"]["bioformers"] = bioformers(adata, seed, options)
    out["clustering"]["bioformers"] = clustering(adata, adata.obsm["X_bioformers"], "cell_type", seed)
    bf.tl.predict(adata, model)
    out["predicted_r"]["bioformers"] = median_gene_r(np.log1p(adata.layers["bioformers_predicted"]), observed)
    return out


def run_chemistries(seed: int, options: dict, baselines: bool) -> dict:
    """Clustering without a batch key, integration with one, on the three PBMC chemistries."""
    adata = sc.read_h5ad(DATA / "pbmc_3chemistries_raw_labeled.h5ad")
    out: dict = {"clustering": {}, "integration": {}, "seconds": {}}
    reps = {}
    if baselines:
        reps["PCA"] = pca(adata, scale=False)
        model, out["seconds"]["scVI"] = scvi_model(adata, seed)
        reps["scVI"] = model.get_latent_representation()
        model, out["seconds"]["scVI (batch_key)"] = scvi_model(adata, seed, batch_key="batch")
        reps["scVI (batch_key)"] = model.get_latent_representation()
    _, out["seconds"]["bioformers"] = bioformers(adata, seed, options)
    reps["bioformers"] = adata.obsm["X_bioformers"]
    _, out["seconds"]["bioformers (batch_key)"] = bioformers(adata, seed, options, batch_key="batch")
    reps["bioformers (batch_key)"] = adata.obsm["X_bioformers"]
    for name, rep in reps.items():
        out["clustering"][name] = clustering(adata, rep, "cell_type", seed)
        if name != "PCA":
            scored = sc.AnnData(adata.X, obs=adata.obs[["batch", "cell_type"]].copy())
            scored.obsm["rep"] = np.asarray(rep, np.float32)
            scores = bf.metrics.integration_scores(
                scored, use_rep="rep", batch_key="batch", label_key="cell_type", seed=seed
            )
            out["integration"][name] = {k: scores[k] for k in ("bio_conservation", "batch_correction", "overall")}
    return out


def run_annotation(seed: int, options: dict, baselines: bool) -> dict:
    """Cross-chemistry annotation: macro-F1 per held-out chemistry."""
    adata = sc.read_h5ad(DATA / "pbmc_3chemistries_raw_labeled.h5ad")
    out: dict = {"macro_f1": {}, "seconds": {}}
    for chemistry in adata.obs["batch"].cat.categories:
        is_query = (adata.obs["batch"] == chemistry).to_numpy()
        ref, query = adata[~is_query].copy(), adata[is_query].copy()
        truth = query.obs["cell_type"].astype(str).to_numpy()
        # classes with a single reference cell cannot be learned (nor validated): unlabelled, for every method
        counts = ref.obs["cell_type"].value_counts()
        ref.obs["reference_label"] = (
            ref.obs["cell_type"].astype(str).mask(ref.obs["cell_type"].isin(counts.index[counts < 2]))
        )
        labelled = ref.obs["reference_label"].notna().to_numpy()
        fold = out["macro_f1"].setdefault(chemistry, {})
        if baselines:
            fit = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
            fit.fit(log_normalized(ref.X[labelled]), ref.obs["reference_label"][labelled])
            fold["LogReg"] = float(f1_score(truth, fit.predict(log_normalized(query.X)), average="macro"))
        model, seconds = bioformers(ref, seed, options)
        start = time.perf_counter()
        bf.tl.annotate(ref, model, labels_key="reference_label", query=query, seed=seed, **QUIET)
        out["seconds"][chemistry] = seconds + time.perf_counter() - start
        fold["bioformers"] = float(f1_score(truth, query.obs["bioformers_label"].astype(str), average="macro"))
    return out


def report(runs: dict, args, options: dict) -> str:
    """Markdown tables, mean ± sd over seeds."""
    seeds = sorted(runs)
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; bioformers options: {options or 'defaults'}; mean ± sd over seeds.",
        "",
    ]

    def collect(section: str, *path: str) -> list[float]:
        values = []
        for seed in seeds:
            node = runs[seed].get(section)
            for key in path:
                node = None if node is None else node.get(key)
            if node is not None:
                values.append(node)
        return values

    if any("pbmc3k" in run for run in runs.values()):
        lines += [
            "## PBMC 3k",
            "",
            "| method | KMeans AvgBIO | best-Leiden AvgBIO | predicted expression, median gene r |",
        ]
        lines += ["|---|---|---|---|"]
        for name in ("PCA", "scVI", "bioformers"):
            kmeans, leiden = (
                collect("pbmc3k", "clustering", name, "kmeans"),
                collect("pbmc3k", "clustering", name, "leiden"),
            )
            r = collect("pbmc3k", "predicted_r", name)
            if kmeans:
                lines.append(f"| {name} | {mean_sd(kmeans)} | {mean_sd(leiden)} | {mean_sd(r) if r else ''} |")
        lines.append("")
    if any("chemistries" in run for run in runs.values()):
        lines += [
            "## Three PBMC chemistries",
            "",
            "| method | KMeans AvgBIO | best-Leiden AvgBIO | bio | batch | overall |",
        ]
        lines += ["|---|---|---|---|---|---|"]
        for name in ("PCA", "scVI", "bioformers", "scVI (batch_key)", "bioformers (batch_key)"):
            kmeans = collect("chemistries", "clustering", name, "kmeans")
            if not kmeans:
                continue
            cells = [mean_sd(kmeans), mean_sd(collect("chemistries", "clustering", name, "leiden"))]
            for score in ("bio_conservation", "batch_correction", "overall"):
                values = collect("chemistries", "integration", name, score)
                cells.append(mean_sd(values) if values else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if any("annotation" in run for run in runs.values()):
        folds = list(next(run for run in runs.values() if "annotation" in run)["annotation"]["macro_f1"])
        lines += ["## Annotation across chemistries (macro-F1; query = the named chemistry)", ""]
        lines += ["| method | " + " | ".join(folds) + " | mean |", "|---" * (len(folds) + 2) + "|"]
        for name in ("LogReg", "bioformers"):
            per_fold = [collect("annotation", "macro_f1", f, name) for f in folds]
            if not per_fold[0]:
                continue
            means = [float(np.mean([v[i] for v in per_fold])) for i in range(len(per_fold[0]))]
            lines.append(f"| {name} | " + " | ".join(mean_sd(v) for v in per_fold) + f" | {mean_sd(means)} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a bf.tl.pretrain option")
    parser.add_argument("--no-baselines", action="store_true", help="bioformers only (exploration)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    options = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    runners = {"pbmc3k": run_pbmc3k, "chemistries": run_chemistries, "annotation": run_annotation}
    runs: dict = {}
    for seed in args.seeds:
        runs[seed] = {}
        for section in args.sections:
            start = time.perf_counter()
            runs[seed][section] = runners[section](seed, options, not args.no_baselines)
            print(f"seed {seed} {section} ({time.perf_counter() - start:.0f} s): {json.dumps(runs[seed][section])}")
            write(runs, args, options)  # after every section: an interrupted run keeps what it measured
    print(write(runs, args, options))


def write(runs: dict, args, options: dict) -> str:
    """Write ``results/cell_representations[_tag].{md,json}``; return the markdown."""
    text = report(runs, args, options)
    RESULTS.mkdir(exist_ok=True)
    name = "cell_representations" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{name}.md").write_text(text + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"options": options, "runs": runs}, indent=1) + "\n")
    return text


if __name__ == "__main__":
    main()
