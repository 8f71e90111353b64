"""Gene regulatory networks from the model against correlation and model-free rankings, in one run (issue 23).

Every readout is a genes x genes matrix, rows = regulators, columns = targets, larger = stronger
(signed readouts are ranked by absolute value). Model readouts come from ``bf.tl.pretrain``
defaults, trained once per seed; baselines are computed on the same cells.

* ``trrust`` (PBMC 3k, 2,000 ``seurat_v3`` HVGs): EPR and AUPRC ratio against TRRUST over the rows of
  its TFs (:func:`bioformers.metrics.score_grn`).
* ``knockout`` (Papalexi 2021 THP-1 CRISPR screen, 299 genes): the model is trained on the control
  cells only; for each knocked-out gene that is measured, the genes that respond to its knockout
  (the top 50 by |Welch t| of log-normalised expression, knockout cells vs control, the target
  itself left out) should rank high in its row. AUROC and precision at 50 of each row, next to
  Pearson |r| on the control cells and to ranking genes by their mean expression, which knows
  nothing of the regulator.
* ``stability``: top-1,000 edge overlap and Spearman of every readout between seeds (PBMC 3k, the
  rows of TRRUST's TFs); correlation's on two random halves of the cells for scale.

Readouts measured:

* ``attention, last layer``: what ``bf.tl.attention_grn`` writes (heads averaged, all cells), as
  "a target attends to its regulator";
* ``bf.tl.grn(method="attention")``: every layer and head, corrected for the attention every gene pays
  the regulator on average, then averaged (``--n-cells`` cells);
* ``knockout, raw effects``: ``BioFormer.get_knockout_effects``, in-silico knockout through the count
  decoder (``--n-cells`` cells; on PBMC 3k only the rows of TRRUST's TFs, the rows scored);
* ``bf.tl.grn(method="knockout")``, the default: the same with the shift shared by every knockout
  removed (the projection on the mean effect of knocking out 50 random commonly expressed genes);
* ``denoised correlation``: Pearson r of log1p of the count decoder's expression of the same cells;
* ``gene-embedding similarity``: cosine of the learned gene embeddings (``bf.tl.gene_programs``).

    python benchmarks/grn.py [--seeds 0 1 2] [--sections trrust knockout] [--n-cells 500]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
from _tables import mean_sd
from scipy import sparse, stats
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

import bioformers as bf
from bioformers.data import log_normalize
from bioformers.tl._genes import _subsample

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
QUIET = {"enable_progress_bar": False}
SECTIONS = ("trrust", "knockout")
N_RESPONDERS = 50
#: A clear responder to a knockout has |Welch t| at least this; knockouts with fewer are left out of that score.
SIGNIFICANT_T, MIN_SIGNIFICANT = 5.0, 3
TOP_EDGES = 1000


# --- model readouts ------------------------------------------------------------------------------
def attention_last(model) -> np.ndarray:
    """``bf.tl.attention_grn`` as it is: last layer, heads averaged; regulator rows."""
    return model.get_attention().T


def gene_similarity(adata, model) -> np.ndarray:
    """Cosine of the learned gene embeddings, as ``bf.tl.gene_programs`` writes it."""
    work = adata.copy()
    bf.tl.gene_programs(work, model)
    return work.varp["bioformers_similarity"]


def denoised_correlation(adata, model, cells: np.ndarray) -> np.ndarray:
    """Pearson r of log1p of the count decoder's expression of the read cells: an association through the model."""
    decoded = np.log1p(model.get_normalized_expression(adata, indices=cells))
    return bf.metrics.correlation_grn(decoded)


def model_readouts(
    adata, model, n_cells: int, seed: int, regulators: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every model readout, regulator rows, diagonal 0; and the seconds each took."""
    names = adata.var_names[regulators].tolist()
    cells, _ = _subsample(adata.n_obs, {}, n_cells, seed)  # the cells bf.tl.grn reads, for the raw knockout
    out, seconds = {}, {}

    def tool(method: str) -> np.ndarray:
        work = adata.copy()
        bf.tl.grn(work, model, method=method, regulators=names, n_cells=n_cells, seed=seed)
        return work.varp["bioformers_grn"]

    for name, compute in (
        ("attention, last layer (attention_grn)", lambda: attention_last(model)),
        ("attention, corrected (grn method='attention')", lambda: tool("attention")),
        (
            "knockout, raw effects (get_knockout_effects)",
            lambda: model.get_knockout_effects(adata, indices=cells, regulators=regulators),
        ),
        ("knockout, shared shift removed (grn default)", lambda: tool("knockout")),
        ("denoised correlation (count decoder)", lambda: denoised_correlation(adata, model, cells)),
        ("gene-embedding similarity", lambda: gene_similarity(adata, model)),
    ):
        start = time.perf_counter()
        out[name] = np.array(compute(), dtype=np.float32)
        np.fill_diagonal(out[name], 0)  # no self-loops (a gene attends to itself)
        seconds[name] = time.perf_counter() - start
    return out, seconds


# --- baselines -------------------------------------------------------------------------------------
def baselines(counts, seed: int) -> dict[str, np.ndarray]:
    """Model-free GRNs of the same cells: correlations, partial correlation, mean expression, random."""
    log = log_normalize(counts)
    dense = log.toarray() if sparse.issparse(log) else np.asarray(log)
    n_genes = dense.shape[1]
    precision = LedoitWolf().fit(dense).precision_
    scale = np.sqrt(np.diag(precision))
    partial = -precision / scale[:, None] / scale[None, :]
    np.fill_diagonal(partial, 0)
    mean = np.broadcast_to(dense.mean(axis=0), (n_genes, n_genes)).copy()
    np.fill_diagonal(mean, 0)
    return {
        "Pearson |r|": np.abs(bf.metrics.correlation_grn(log)),
        "Spearman |r|": np.abs(bf.metrics.correlation_grn(dense, method="spearman")),
        "partial correlation (Ledoit-Wolf)": np.abs(partial).astype(np.float32),
        "mean expression of the target": mean.astype(np.float32),
        "random": np.random.default_rng(seed).random((n_genes, n_genes)).astype(np.float32),
    }


# --- sections ------------------------------------------------------------------------------------------
def pbmc3k() -> ad.AnnData:
    adata = bf.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=2000)
    return adata[:, adata.var["highly_variable"]].copy()


def run_trrust(seed: int, args, networks: dict) -> dict:
    adata = pbmc3k()
    genes = adata.var_names.tolist()
    start = time.perf_counter()
    model = bf.tl.pretrain(adata, seed=seed, **args.train, **QUIET)
    train_seconds = time.perf_counter() - start
    reference = bf.datasets.trrust()
    # only the rows of TRRUST's TFs are scored: the knockout readout computes those alone
    regulators = np.flatnonzero(adata.var_names.isin(reference["source"]))
    grns, seconds = model_readouts(adata, model, args.n_cells, seed, regulators)
    model_grns = set(grns)
    grns |= baselines(adata.X, seed)
    scores = {}
    for name, matrix in grns.items():
        edges = bf.metrics.grn_edges(np.abs(matrix), genes)
        scores[name] = {k: float(v) for k, v in bf.metrics.score_grn(edges, reference, genes=genes).items()}
        if name in model_grns:  # the baselines do not depend on the seed
            networks.setdefault(name, {})[seed] = np.abs(matrix)[regulators]
    if seed == args.seeds[0]:  # correlation on two halves of the cells: how much a simple network moves
        halves = np.random.default_rng(seed).permutation(adata.n_obs)
        networks["Pearson |r|, two halves of the cells"] = {
            i: np.abs(bf.metrics.correlation_grn(log_normalize(adata.X[part])))[regulators]
            for i, part in enumerate(np.array_split(halves, 2))
        }
    return {"scores": scores, "seconds": seconds | {"training": train_seconds}}


def responders(log: np.ndarray, knocked: np.ndarray, control: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the top genes by |Welch t|, knockout vs control, the target left out; and of those with |t| >= 5."""
    t = stats.ttest_ind(log[knocked], log[control], equal_var=False).statistic
    t = np.nan_to_num(np.abs(t))
    t[target] = -1
    return np.argsort(-t)[:N_RESPONDERS], np.flatnonzero(t >= SIGNIFICANT_T)


def run_knockout(seed: int, args, networks: dict) -> dict:
    adata = sc.read_h5ad(DATA / "papalexi2021_thp1_crispr_sceptre_subset.h5ad")
    adata.obs_names_make_unique()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    log = log_normalize(adata.X)
    log = log.toarray() if sparse.issparse(log) else np.asarray(log)
    control = np.flatnonzero(labels == "control")
    targets = [g for g in dict.fromkeys(labels) if g in adata.var_names and g != "control"]
    controls = adata[control].copy()
    start = time.perf_counter()
    model = bf.tl.pretrain(controls, seed=seed, **args.train, **QUIET)
    train_seconds = time.perf_counter() - start
    grns, seconds = model_readouts(controls, model, args.n_cells, seed, np.arange(controls.n_vars))
    grns |= baselines(controls.X, seed)
    genes = adata.var_names
    out: dict = {"auroc": {}, "precision": {}, "seconds": seconds | {"training": train_seconds}}
    for target in targets:
        row = genes.get_loc(target)
        hit, significant = np.zeros(genes.size, bool), np.zeros(genes.size, bool)
        top_responders, clear_responders = responders(log, np.flatnonzero(labels == target), control, row)
        hit[top_responders] = True
        significant[clear_responders] = True
        others = np.arange(genes.size) != row
        for name, matrix in grns.items():
            score = np.abs(matrix[row])[others]
            out["auroc"].setdefault(name, {})[target] = float(roc_auc_score(hit[others], score))
            top = np.argsort(-score)[:N_RESPONDERS]
            out["precision"].setdefault(name, {})[target] = float(hit[others][top].mean())
            if significant.sum() >= MIN_SIGNIFICANT:  # knockouts that change something clearly
                auroc = float(roc_auc_score(significant[others], score))
                out.setdefault("auroc_significant", {}).setdefault(name, {})[target] = auroc
    return out


# --- report ----------------------------------------------------------------------------------------------
def stability(networks: dict) -> dict[str, dict[str, float]]:
    out = {}
    for name, runs in networks.items():
        pairs = []
        for a, b in itertools.combinations(sorted(runs), 2):
            x, y = runs[a].ravel(), runs[b].ravel()
            top_x = set(np.argpartition(-x, TOP_EDGES)[:TOP_EDGES])
            top_y = set(np.argpartition(-y, TOP_EDGES)[:TOP_EDGES])
            pairs.append((len(top_x & top_y) / TOP_EDGES, float(stats.spearmanr(x, y).statistic)))
        if pairs:
            out[name] = {
                "top_overlap": float(np.mean([p[0] for p in pairs])),
                "spearman": float(np.mean([p[1] for p in pairs])),
            }
    return out


def report(runs: dict, networks: dict) -> str:
    seeds = sorted(runs)
    lines = [f"Seeds {', '.join(map(str, seeds))}; `bf.tl.pretrain` defaults; mean ± sd over seeds.", ""]
    trrust = [runs[s]["trrust"] for s in seeds if "trrust" in runs[s]]
    if trrust:
        lines += ["## PBMC 3k against TRRUST", "", "| GRN | EPR | AUPRC ratio |", "|---|---|---|"]
        for name in trrust[0]["scores"]:
            epr = [run["scores"][name]["epr"] for run in trrust]
            auprc = [run["scores"][name]["auprc_ratio"] for run in trrust]
            lines.append(f"| {name} | {mean_sd(epr)} | {mean_sd(auprc)} |")
        lines += [""]
    knockout = [runs[s]["knockout"] for s in seeds if "knockout" in runs[s]]
    if knockout:
        lines += [
            f"## Papalexi knockouts: do a knocked-out gene's top targets respond? (top {N_RESPONDERS} by |Welch t|)",
            "",
            f"The last column scores only the clear responders (|t| >= {SIGNIFICANT_T:g}) of the knockouts "
            f"that have at least {MIN_SIGNIFICANT}.",
            "",
            "| GRN (row of the knocked-out gene) | AUROC, mean of targets | precision at 50 "
            "| AUROC, clear responders |",
            "|---|---|---|---|",
        ]
        for name in knockout[0]["auroc"]:
            auroc = [np.mean(list(run["auroc"][name].values())) for run in knockout]
            precision = [np.mean(list(run["precision"][name].values())) for run in knockout]
            clear = [
                np.mean(list(run["auroc_significant"][name].values())) for run in knockout if "auroc_significant" in run
            ]
            lines.append(f"| {name} | {mean_sd(auroc)} | {mean_sd(precision)} | {mean_sd(clear) if clear else ''} |")
        lines += [""]
    stable = stability(networks)
    if stable:
        lines += [
            f"## Stability between seeds (PBMC 3k; top {TOP_EDGES:,} edges)",
            "",
            "| GRN | top overlap | Spearman |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {s['top_overlap']:.3f} | {s['spearman']:.3f} |" for name, s in stable.items()]
        lines += [""]
    for section in SECTIONS:
        timed = [runs[s][section]["seconds"] for s in seeds if section in runs[s]]
        if timed:
            lines.append(
                f"{section}, seconds (median over seeds): "
                + ", ".join(f"{name} {np.median([t[name] for t in timed]):.0f}" for name in timed[0])
            )
    return "\n".join(lines), stable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--n-cells", type=int, default=500, help="cells read by the knockout readout")
    parser.add_argument("--tag", default="")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 50 cells read: checks the script runs")
    args = parser.parse_args()
    args.train = {"max_epochs": 1} if args.quick else {}
    if args.quick:
        args.n_cells, args.tag = 50, args.tag or "quick"
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    runners = {"trrust": run_trrust, "knockout": run_knockout}
    runs: dict = {}
    networks: dict = {}
    name = "grn" + (f"_{args.tag}" if args.tag else "")
    for seed in args.seeds:
        runs[seed] = {}
        for section in args.sections:
            start = time.perf_counter()
            runs[seed][section] = runners[section](seed, args, networks)
            print(f"seed {seed} {section} ({time.perf_counter() - start:.0f} s)", flush=True)
            text, stable = report(runs, networks)
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"{name}.md").write_text(text + "\n")
            (RESULTS / f"{name}.json").write_text(json.dumps({"runs": runs, "stability": stable}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
