"""Conditional cell generation: latent diffusion (``bf.CellDiffusion``) vs. scVI and model-free baselines.

Two datasets, one table each; every method is scored against held-out real cells on log1p(CP10k)
with :func:`bioformers.metrics.generation_scores`, per condition, and summarised as the mean over
conditions weighted by held-out cells.

* ``pbmc3k``: the bundled PBMC 3k (2,638 cells, 8 cell types), 2,000 HVGs (``seurat_v3`` on raw
  counts, all cells). 20% of each cell type held out (stratified, seeded). Condition: ``cell_type``.
* ``papalexi``: the Papalexi 2021 THP-1 CRISPR-KO screen (``../shared/data``, 20,729 cells x 299
  genes, 25 targets + ``control``). 20% of the cells of each perturbation held out (stratified,
  seeded). Condition: ``perturbation`` (a set-valued condition, ``control`` = the empty set;
  ``--bio-rep`` adds ``bio_rep`` as a categorical condition of the diffusion model). All 26
  conditions are scored (control included); the summary is over the 25 perturbations.

Methods, each making as many cells per condition as were held out:

* ``scVI posterior predictive``: :class:`scvi.model.SCVI` on the training cells' counts (PBMC: no
  batch; Papalexi: ``batch_key="bio_rep"``), scvi-tools' default epochs
  (``min(round(20000 / n_cells * 400), 400)``, i.e. 400 here; 10% of the training cells for
  validation, no early stopping). For each condition, n training cells of that condition are
  drawn with replacement (seeded) and one sample of ``posterior_predictive_sample`` is taken for
  each (z ~ q(z | x), counts ~ NB(library of that cell)), then log1p(CP10k).
* ``mean + noise`` and ``resample`` (the ceiling: real training cells, not the held-out ones) from
  :func:`bioformers.metrics.generation_baselines` on the training cells' log1p(CP10k).
* ``control cells`` (Papalexi only): control training cells, drawn without replacement, labelled
  as each perturbation: the score of a method that ignores the perturbation.
* ``bioformers CellDiffusion``: ``bf.CellDiffusion`` trained on the training cells' counts, then
  ``bf.tl.generate`` for each condition, once per ``--guidance`` value from the one trained model.

Results are merged into ``results/diffusion_generate.json`` by dataset and method (so a dataset,
or one method with ``--methods``, can be re-run alone on the same split), and the markdown
``results/diffusion_generate.md`` is rendered from the whole JSON. ``--quick`` (2 epochs
everywhere) prints and writes nothing.

    python benchmarks/diffusion_generate.py [--dataset pbmc3k|papalexi|both] [--seed 0]
        [--max-epochs N] [--n-steps 50] [--guidance 1.0 2.0] [--methods scvi baselines diffusion]
        [--skip-diffusion] [--bio-rep] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from _tables import markdown
from scipy import sparse
from sklearn.model_selection import train_test_split

import bioformers as bf
from bioformers.data import log_normalize

RESULTS = Path(__file__).parent / "results"
PAPALEXI = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "papalexi2021_thp1_crispr_sceptre_subset.h5ad"
)
CONTROL = "control"
SCORES = ["pearson_mean", "r2_mean", "pearson_var", "mmd", "c2st_auc", "de_overlap"]
COLUMNS = [*SCORES, "train s", "generate s", "genes / cell"]
METHOD_ORDER = ["scVI posterior predictive", "mean + noise", "resample", "control cells"]


# ----------------------------------------------------------------------------------------------- data


def load(name: str, seed: int) -> dict:
    """Raw counts split into training and held-out cells, and what the condition is."""
    if name == "pbmc3k":
        adata = bf.datasets.pbmc3k()
        sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", subset=True)
        adata.obs = adata.obs[["cell_type"]].copy()
        spec = {"groupby": "cell_type", "perturbation": False, "batch_key": None, "summary_skip": []}
        description = "PBMC 3k (bundled), 2,000 HVGs (seurat_v3 on counts); condition `cell_type`"
    else:
        adata = ad.read_h5ad(PAPALEXI)
        adata.obs = adata.obs[["perturbation", "bio_rep"]].copy()
        for key in adata.obs:
            adata.obs[key] = adata.obs[key].astype(str).astype("category")
        spec = {"groupby": "perturbation", "perturbation": True, "batch_key": "bio_rep", "summary_skip": [CONTROL]}
        description = (
            "Papalexi 2021 THP-1 CRISPR-KO (sceptre subset), 299 genes; condition `perturbation` "
            "(25 KO targets + control)"
        )
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    key = spec["groupby"]
    train_idx, test_idx = train_test_split(
        np.arange(adata.n_obs), test_size=0.2, stratify=adata.obs[key], random_state=seed
    )
    train, test = adata[np.sort(train_idx)].copy(), adata[np.sort(test_idx)].copy()
    return spec | {"name": name, "description": description, "train": train, "test": test}


def log_cp10k(counts: ad.AnnData, groupby: str) -> ad.AnnData:
    """log1p(counts per 10k) as CSR float32, with the condition column."""
    return ad.AnnData(
        log_normalize(counts.X), obs=counts.obs[[groupby]].copy(), var=pd.DataFrame(index=counts.var_names.copy())
    )


def labelled(X, groups: list[str], sizes: dict[str, int], groupby: str, var_names, prefix: str) -> ad.AnnData:
    """Generated cells (rows in the order of ``groups``, ``sizes[g]`` each) as an AnnData for scoring."""
    names = np.repeat(groups, [sizes[g] for g in groups])
    obs = pd.DataFrame(
        {groupby: pd.Categorical(names, categories=groups)}, index=[f"{prefix}_{i}" for i in range(len(names))]
    )
    X = sparse.csr_matrix(X, dtype=np.float32)
    X.eliminate_zeros()
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=pd.Index(var_names)))


# -------------------------------------------------------------------------------------------- methods


def run_scvi(data: dict, sizes: dict[str, int], args) -> tuple[dict, dict]:
    """scVI posterior predictive: train on the training counts, sample from training cells of each condition."""
    import scvi

    scvi.settings.seed = args.seed
    train, groupby = data["train"].copy(), data["groupby"]
    scvi.model.SCVI.setup_anndata(train, batch_key=data["batch_key"])
    model = scvi.model.SCVI(train)
    start = time.perf_counter()
    model.train(max_epochs=2 if args.quick else args.scvi_max_epochs, enable_progress_bar=False)
    train_seconds = time.perf_counter() - start
    epochs = len(model.history["train_loss"])

    start = time.perf_counter()
    rng = np.random.default_rng([args.seed, 1])
    labels = train.obs[groupby].astype(str).to_numpy()
    groups = list(sizes)
    indices = np.concatenate([rng.choice(np.flatnonzero(labels == g), size=sizes[g], replace=True) for g in groups])
    samples = model.posterior_predictive_sample(train, indices=indices.tolist(), batch_size=1024)
    counts = samples.to_scipy_sparse().tocsr()
    cells = labelled(log_normalize(counts), groups, sizes, groupby, train.var_names, "scvi")
    generate_seconds = time.perf_counter() - start
    info = {"train s": train_seconds, "generate s": generate_seconds, "epochs": epochs}
    print(f"  scVI: {epochs} epochs in {train_seconds:.0f} s; {cells.n_obs} cells sampled in {generate_seconds:.1f} s")
    return {"scVI posterior predictive": cells}, {"scVI posterior predictive": info}


def run_baselines(data: dict, sizes: dict[str, int], args) -> tuple[dict, dict]:
    """mean + noise and resample (generation_baselines), and control cells for a perturbation screen."""
    groupby = data["groupby"]
    train_log = log_cp10k(data["train"], groupby)
    made, infos = {}, {}
    for method in ["mean_noise", "resample"]:
        start = time.perf_counter()
        cells = bf.metrics.generation_baselines(
            train_log, groupby=groupby, n_per_group=sizes, methods=method, seed=args.seed
        )[method]
        name = method.replace("_", " + ") if method == "mean_noise" else method
        made[name], infos[name] = cells, {"generate s": time.perf_counter() - start}
    if data["perturbation"]:
        start = time.perf_counter()
        rng = np.random.default_rng([args.seed, 2])
        controls = np.flatnonzero(train_log.obs[groupby].astype(str).to_numpy() == CONTROL)
        groups = list(sizes)
        rows = np.concatenate([rng.choice(controls, size=sizes[g], replace=False) for g in groups])
        made["control cells"] = labelled(train_log.X[rows], groups, sizes, groupby, train_log.var_names, "control")
        infos["control cells"] = {"generate s": time.perf_counter() - start}
    return made, infos


def run_diffusion(data: dict, sizes: dict[str, int], args) -> tuple[dict, dict]:
    """bioformers CellDiffusion: train once on the training counts, generate each condition per guidance value."""
    train, groupby = data["train"].copy(), data["groupby"]
    if data["perturbation"]:
        categorical = ["bio_rep"] if args.bio_rep else None
        bf.CellDiffusion.setup_anndata(
            train, categorical_covariate_keys=categorical, perturbation_key=groupby, control=CONTROL
        )
    else:
        bf.CellDiffusion.setup_anndata(train, categorical_covariate_keys=[groupby])
    model = bf.CellDiffusion(train)
    start = time.perf_counter()
    model.train(
        max_epochs=2 if args.quick else args.max_epochs,
        autoencoder_epochs=2 if args.quick else args.autoencoder_epochs,
        schedule=args.schedule,
        enable_progress_bar=False,
    )
    train_seconds = time.perf_counter() - start
    epochs = dict(model.training_stages_)
    print(f"  CellDiffusion ({args.schedule}): epochs {epochs}, trained in {train_seconds:.0f} s")

    groups = list(sizes)
    made, infos = {}, {}
    for guidance in args.guidance:
        blocks = []
        start = time.perf_counter()
        for index, group in enumerate(groups):
            if args.bio_rep and data["perturbation"]:
                # as many cells of each replicate as the held-out cells of this perturbation have
                reps = data["test"].obs.loc[data["test"].obs[groupby] == group, "bio_rep"].astype(str).value_counts()
                parts = [
                    _generate(model, {groupby: group, "bio_rep": rep}, int(n), guidance, args, [index, j])
                    for j, (rep, n) in enumerate(reps.items())
                ]
                blocks.append(sparse.vstack(parts, format="csr"))
            else:
                blocks.append(_generate(model, {groupby: group}, sizes[group], guidance, args, [index]))
        seconds = time.perf_counter() - start
        name = f"bioformers CellDiffusion, guidance {guidance:g}"
        if args.schedule != "pretrain":
            name += f", {args.schedule}"
        made[name] = labelled(sparse.vstack(blocks, format="csr"), groups, sizes, groupby, train.var_names, "diffusion")
        infos[name] = {
            "train s": train_seconds,
            "generate s": seconds,
            "epochs": epochs,
            "schedule": args.schedule,
            "n_steps": args.n_steps,
            "guidance": guidance,
            "bio_rep": bool(args.bio_rep and data["perturbation"]),
        }
        print(f"  CellDiffusion guidance {guidance:g}: {made[name].n_obs} cells in {seconds:.1f} s")
    return made, infos


def _generate(model, condition: dict, n: int, guidance: float, args, stream: list[int]):
    """``n`` cells of one condition from ``bf.tl.generate``, as CSR log1p(CP10k) over the training genes."""
    seed = int(np.random.default_rng([args.seed, *stream]).integers(2**31))
    cells = bf.tl.generate(
        model,
        {key: [value] for key, value in condition.items()},
        n_per_condition=n,
        seed=seed,
        n_steps=args.n_steps,
        guidance=guidance,
    )
    if cells.n_obs != n:
        raise RuntimeError(f"bf.tl.generate returned {cells.n_obs} cells for {condition}, asked for {n}")
    return sparse.csr_matrix(cells[:, model.adata.var_names].X)


# ------------------------------------------------------------------------------------------- scoring


def score(test_log: ad.AnnData, cells: ad.AnnData, data: dict, seed: int) -> tuple[dict, pd.DataFrame]:
    groupby = data["groupby"]
    scores = bf.metrics.generation_scores(test_log, cells, groupby=groupby, seed=seed)
    kept = scores.drop(index=[g for g in data["summary_skip"] if g in scores.index])
    weights = kept["n_real"] / kept["n_real"].sum()
    row = {c: float((kept[c] * weights).sum()) for c in SCORES}
    row["genes / cell"] = float(np.mean((cells.X > 0).sum(axis=1)))
    return row, scores


def render(results: dict) -> str:
    lines = ["# Conditional generation: CellDiffusion vs scVI and baselines", ""]
    lines.append(
        "Scores (`bf.metrics.generation_scores`) on log1p(CP10k) of held-out cells, per condition, "
        "then the mean over conditions weighted by held-out cells. pearson_mean / r2_mean / pearson_var: "
        "per-gene means and variances of generated vs real; mmd and c2st_auc (0.5 = indistinguishable) on a "
        "shared PCA; de_overlap: share of each condition's top-20 markers recovered. `train s` / `generate s`: "
        "wall-clock seconds on the shared 2-core CPU; `genes / cell`: mean number of nonzero genes per cell. "
        "Per-condition scores are in `diffusion_generate.json`. Script: `benchmarks/diffusion_generate.py`."
    )
    for name in ["pbmc3k", "papalexi"]:
        if name not in results:
            continue
        entry = results[name]
        frame = pd.DataFrame.from_dict(entry["summary"], orient="index")
        order = [m for m in METHOD_ORDER if m in frame.index] + sorted(m for m in frame.index if m not in METHOD_ORDER)
        frame = frame.loc[order].reindex(columns=COLUMNS)
        frame.index.name = "method"
        shown = frame.astype(object).where(frame.notna(), "–")
        for column in ["train s", "generate s"]:
            shown[column] = [f"{v:.1f}" if isinstance(v, float) else v for v in shown[column]]
        shown["genes / cell"] = [f"{v:.1f}" if isinstance(v, float) else v for v in shown["genes / cell"]]
        lines += ["", f"## {entry['description']}", "", entry["setup"], "", markdown(shown)]
        if entry.get("notes"):
            lines += ["", *entry["notes"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main


def run_dataset(name: str, args) -> dict:
    data = load(name, args.seed)
    groupby, train, test = data["groupby"], data["train"], data["test"]
    counts = test.obs[groupby].value_counts()
    sizes = {str(g): int(counts[g]) for g in test.obs[groupby].cat.categories if counts[g] > 0}
    test_log = log_cp10k(test, groupby)
    real_nnz = float(np.mean((test_log.X > 0).sum(axis=1)))
    print(
        f"{name}: {train.n_obs} training / {test.n_obs} held-out cells x {train.n_vars} genes, {len(sizes)} conditions"
    )

    runners = {"scvi": run_scvi, "baselines": run_baselines, "diffusion": run_diffusion}
    summary, per_group, infos = {}, {}, {}
    for method in args.methods:
        made, info = runners[method](data, sizes, args)
        for label, cells in made.items():
            row, scores = score(test_log, cells, data, args.seed)
            summary[label] = row | {k: v for k, v in info[label].items() if k in ("train s", "generate s")}
            per_group[label] = scores.reset_index().to_dict(orient="records")
            infos[label] = info[label]
            print(
                f"  {label}: "
                + ", ".join(f"{c} {row[c]:.3f}" for c in SCORES)
                + f", genes/cell {row['genes / cell']:.1f}"
            )

    summary_over = (
        f"the {len(sizes) - len(data['summary_skip'])} perturbations (control scored too, in the JSON)"
        if data["perturbation"]
        else f"the {len(sizes)} cell types"
    )
    setup = (
        f"{train.n_obs:,} training / {test.n_obs:,} held-out cells (20% of each condition, stratified, seed "
        f"{args.seed}); every method makes as many cells per condition as were held out. Weighted mean over "
        f"{summary_over}. Held-out real cells: {real_nnz:.1f} genes / cell."
    )
    return {
        "description": data["description"],
        "setup": setup,
        "split": {"seed": args.seed, "n_train": train.n_obs, "n_test": test.n_obs, "n_genes": train.n_vars},
        "real_genes_per_cell": real_nnz,
        "summary": summary,
        "per_condition": per_group,
        "info": infos,
    }


def merge(old: dict, new: dict) -> dict:
    """New methods of a dataset replace old ones on the same split; a different split replaces the dataset."""
    for name, entry in new.items():
        previous = old.get(name)
        if previous is None or previous.get("split") != entry["split"]:
            old[name] = entry
            continue
        for part in ["summary", "per_condition", "info"]:
            previous[part] = previous[part] | entry[part]
        previous.update({k: entry[k] for k in ["description", "setup", "real_genes_per_cell"]})
    return old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["pbmc3k", "papalexi", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=None, help="CellDiffusion epochs (None: its default)")
    parser.add_argument(
        "--scvi-max-epochs", type=int, default=None, help="None: scvi-tools' rule, min(round(20000 / n * 400), 400)"
    )
    parser.add_argument("--autoencoder-epochs", type=int, default=None, help="CellDiffusion autoencoder epochs")
    parser.add_argument("--schedule", choices=["pretrain", "joint"], default="pretrain", help="CellDiffusion training")
    parser.add_argument("--n-steps", type=int, default=50, help="diffusion sampling steps")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--methods", nargs="+", choices=["scvi", "baselines", "diffusion"], default=None)
    parser.add_argument("--skip-diffusion", action="store_true", help="every method but CellDiffusion")
    parser.add_argument("--bio-rep", action="store_true", help="Papalexi: also condition CellDiffusion on bio_rep")
    parser.add_argument("--quick", action="store_true", help="2 epochs everywhere; prints, writes nothing")
    args = parser.parse_args()
    if args.methods is None:
        args.methods = ["scvi", "baselines"] + ([] if args.skip_diffusion else ["diffusion"])
    elif args.skip_diffusion:
        args.methods = [m for m in args.methods if m != "diffusion"]
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=pd.errors.PerformanceWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("scvi").setLevel(logging.WARNING)

    datasets = ["pbmc3k", "papalexi"] if args.dataset == "both" else [args.dataset]
    new = {}
    for name in datasets:
        new[name] = run_dataset(name, args)
        if not args.quick:  # written after each dataset, so a later failure loses nothing
            RESULTS.mkdir(exist_ok=True)
            path = RESULTS / "diffusion_generate.json"
            results = merge(json.loads(path.read_text()) if path.exists() else {}, {name: new[name]})
            path.write_text(json.dumps(results, indent=1, default=float))
            (RESULTS / "diffusion_generate.md").write_text(render(results))
    print(render(new))


if __name__ == "__main__":
    main()
