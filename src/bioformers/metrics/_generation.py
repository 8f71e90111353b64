"""Generated cells against held-out real cells: scores, and the baselines a generator has to beat.

* :func:`generation_scores`: per cell type (or over all cells), how close generated cells come
  to real ones: correlation of per-gene means and variances, MMD and a classifier two-sample test
  on a shared PCA, and agreement of the top marker genes.
* :func:`generation_baselines`: cells made without a model from training cells: resampled
  cells (the ceiling), genes sampled independently, and the mean plus Gaussian noise.

Both work on whatever scale the caller passes (log-normalised expression, or bins); real and
generated cells must be on the same one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse
from sklearn.base import ClassifierMixin, clone
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import r2_score
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.utils.sparsefuncs import mean_variance_axis

from .._validation import check_anndata, check_dtype, check_obs_key, get_matrix, matrix_name, shown
from ._checks import _check_int, _check_methods
from ._perturbation import _pearson

_Baseline = Literal["resample", "independent_genes", "mean_noise"]
_BASELINES: tuple[_Baseline, ...] = ("resample", "independent_genes", "mean_noise")
_SCORE_COLUMNS = ("n_real", "n_generated", "pearson_mean", "r2_mean", "pearson_var", "mmd", "c2st_auc", "de_overlap")
_ALL = "all"
_CV_FOLDS = 5
_GENE_CHUNK = 512  # genes densified at a time when sampling genes independently from a sparse matrix


def generation_scores(
    real: ad.AnnData,
    generated: ad.AnnData,
    *,
    groupby: str | None = None,
    groups: Sequence[str] | None = None,
    layer: str | None = None,
    n_top_genes: int = 20,
    n_pcs: int = 30,
    max_cells: int = 1000,
    classifier: ClassifierMixin | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Score generated cells against held-out real cells, per group (e.g. cell type) or over all cells.

    Real and generated cells are compared on the matrix given by `layer` in both, which must be
    on a common scale: log-normalised expression (``sc.pp.normalize_total`` then ``sc.pp.log1p``)
    for both, or bins for both. Neither AnnData is modified.

    Within each group, ``min(n_real, n_generated, max_cells)`` cells are drawn from each side
    (without replacement), so that the two classes are balanced, and projected on the top
    `n_pcs` principal components of these pooled cells. The PCA is fitted on both sides alike:
    a PCA of the real cells alone fits their noise and so sets them apart from any fresh
    sample, even one from the same distribution. The PCA and the MMD bandwidth therefore
    depend on the generated cells too; MMD values of different generators are comparable
    only roughly, ``c2st_auc`` is on an absolute scale.

    Parameters
    ----------
    real
        Held-out real cells.
    generated
        Generated cells, with the same genes as `real` (matched by name, in any order).
    groupby
        Column of ``obs`` in both AnnData with the group of each cell (e.g. ``"cell_type"``);
        `None`: one group, ``"all"``.
    groups
        Groups to score; `None`: every group with real cells, each of which must have
        generated cells and the other way around. Marker genes are ranked among these groups.
    layer
        Layer of both AnnData with the values to compare; `None`: ``X``.
    n_top_genes
        Number of marker genes per group for ``de_overlap``.
    n_pcs
        Number of principal components of the shared PCA (fewer if there are fewer cells or genes).
    max_cells
        Cells drawn from each side of a group for the PCA, MMD and classifier (at least 2).
    classifier
        Scikit-learn classifier with ``predict_proba`` for the two-sample test; `None`: a
        :class:`~sklearn.ensemble.RandomForestClassifier` (100 trees), which, unlike a linear
        model, also tells apart samples that differ in spread or in gene–gene covariance but not
        in mean.
    seed
        Seed of the cells drawn, the PCA, the cross-validation folds and the default classifier.

    Returns
    -------
    :class:`~pandas.DataFrame`
        One row per group (index named `groupby`, or ``"group"``; in category order), columns

        ``n_real`` / ``n_generated``
            Number of real / generated cells of the group.
        ``pearson_mean``
            Pearson correlation of the per-gene means of real and generated cells (all cells).
        ``r2_mean``
            Coefficient of determination of the real per-gene means by the generated ones
            (:func:`sklearn.metrics.r2_score`): 1 when equal; unlike ``pearson_mean``, shifts
            and scalings count.
        ``pearson_var``
            Pearson correlation of the per-gene variances.
        ``mmd``
            Squared maximum mean discrepancy, unbiased estimator (Gretton et al., 2012), with the
            Gaussian kernel ``exp(-d² / (2 σ²))`` on the shared PCA, σ the median distance between
            the pooled cells (median heuristic). About 0 for samples of one distribution (slightly
            negative values happen), larger the more they differ.
        ``c2st_auc``
            Classifier two-sample test: ROC AUC of `classifier` telling real from generated cells on
            the shared PCA, averaged over stratified 5-fold cross-validation (fewer folds for fewer
            than 5 cells per side). 0.5: indistinguishable (ideal); 1: fully separable.
        ``de_overlap``
            Share of the group's top `n_top_genes` marker genes in the real cells (Scanpy's
            :func:`~scanpy.tl.rank_genes_groups`, t-test against the other scored groups, ranked by
            the t statistic, so up-regulated genes) found among its top markers in the generated
            cells. NaN without `groupby` or with fewer than 2 groups.

    Examples
    --------
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=300, n_vars=50)
    >>> sc.pp.normalize_total(adata, target_sum=1e4)
    >>> sc.pp.log1p(adata)
    >>> train, test = adata[::2].copy(), adata[1::2].copy()
    >>> baselines = bf.metrics.generation_baselines(train, groupby="cell_type", seed=0)
    >>> scores = bf.metrics.generation_scores(test, baselines["resample"], groupby="cell_type", n_top_genes=10)
    >>> scores.columns.tolist()
    ['n_real', 'n_generated', 'pearson_mean', 'r2_mean', 'pearson_var', 'mmd', 'c2st_auc', 'de_overlap']
    >>> scores.index.tolist()
    ['type_0', 'type_1', 'type_2']
    """
    check_anndata(real, name="real", writes=False)
    check_anndata(generated, name="generated", writes=False)
    _check_int(n_top_genes, "n_top_genes", 1)
    _check_int(n_pcs, "n_pcs", 1)
    _check_int(max_cells, "max_cells", 2)
    _check_int(seed, "seed", 0)
    if classifier is not None and not hasattr(classifier, "predict_proba"):
        raise TypeError(
            f"`classifier` must be a scikit-learn classifier with `predict_proba`, not {type(classifier).__name__}; "
            "e.g. `sklearn.linear_model.LogisticRegression(max_iter=1000)`, or `None` for a random forest."
        )
    if real.n_vars < 2:
        raise ValueError(f"`real` has {real.n_vars} gene; correlations over genes and a PCA need at least 2.")
    order = _gene_order(real.var_names, generated.var_names)
    X_real = _values(real, layer, "real")
    X_generated = _values(generated, layer, "generated")
    if not np.array_equal(order, np.arange(order.size)):
        X_generated = X_generated[:, order]
    labels_real, order_real = _group_labels(real, groupby, "real")
    labels_generated, order_generated = _group_labels(generated, groupby, "generated")
    groups = _scored_groups(order_real, order_generated, groups, groupby)

    cells = {
        group: (np.flatnonzero(labels_real == group), np.flatnonzero(labels_generated == group)) for group in groups
    }
    small = {group: (r.size, g.size) for group, (r, g) in cells.items() if min(r.size, g.size) < 2}
    if small:
        detail = ", ".join(f"{group!r} ({r} real, {g} generated)" for group, (r, g) in small.items())
        raise ValueError(
            f"Every scored group needs at least 2 real and 2 generated cells (for variances, the PCA and the "
            f"two-sample test); {detail} has fewer. Generate more cells, or leave it out with `groups=`."
        )

    overlap = dict.fromkeys(groups, np.nan)
    if groupby is not None and len(groups) >= 2:
        top_real = _top_markers(X_real, labels_real, groups, real.var_names, n_top_genes)
        top_generated = _top_markers(X_generated, labels_generated, groups, real.var_names, n_top_genes)
        overlap = {
            group: len(set(top_real[group]) & set(top_generated[group])) / len(top_real[group]) for group in groups
        }

    classifier = RandomForestClassifier(n_estimators=100, random_state=seed) if classifier is None else classifier
    rows = []
    for index, group in enumerate(groups):
        rows_real, rows_generated = cells[group]
        scores = _score_group(
            X_real[rows_real],
            X_generated[rows_generated],
            n_pcs=n_pcs,
            max_cells=max_cells,
            classifier=classifier,
            seed=[seed, index],
        )
        rows.append(scores | {"de_overlap": overlap[group]})
    index = pd.Index(groups, name=groupby if groupby is not None else "group")
    return pd.DataFrame(rows, index=index, columns=list(_SCORE_COLUMNS))


def generation_baselines(
    train: ad.AnnData,
    *,
    groupby: str | None = None,
    n_per_group: int | Mapping[str, int] | None = None,
    methods: _Baseline | Sequence[_Baseline] = _BASELINES,
    layer: str | None = None,
    seed: int = 0,
) -> dict[str, ad.AnnData]:
    """Cells generated without a model from training cells, per group: what a generator has to beat.

    ``"resample"``
        Training cells of the group drawn at random without replacement: real cells, but not the
        held-out ones, so the scores a perfect generator could reach (the ceiling). At most the
        group's training cells, since the two-sample test recognises duplicated cells (on PBMC
        3k B cells, 10 % duplicates raised its AUC from 0.53 to 0.63).
    ``"independent_genes"``
        Each gene of a new cell drawn on its own from the group's training values of that gene
        (with replacement): keeps every gene's distribution, loses gene–gene covariance.
    ``"mean_noise"``
        The group's mean plus Gaussian noise with each gene's standard deviation (population
        sd), clipped at 0 when the training values are non-negative: keeps means and, before
        clipping, variances; loses covariance and the shape of each distribution (e.g. zeros).
        Values are not rounded, even for bins.

    Parameters
    ----------
    train
        Training cells, on the scale the generated cells are compared on (log-normalised
        expression or bins; see :func:`generation_scores`).
    groupby
        Column of `train.obs` with the group of each cell (e.g. ``"cell_type"``); `None`: one group.
    n_per_group
        Number of cells to make per group: one number for every group, or group -> number (e.g.
        ``test.obs["cell_type"].value_counts().to_dict()``, to mirror held-out cells; groups
        left out or mapped to 0 get none); `None`: as many as the group has training cells.
        ``"resample"`` makes at most as many as the group has training cells.
    methods
        The baselines to make (one name or several), of ``"resample"``, ``"independent_genes"``
        and ``"mean_noise"``.
    layer
        Layer of `train` with the values; `None`: `train.X`.
    seed
        Random seed. Each method and group draws from its own stream, so a method's cells do not
        depend on which other methods are requested.

    Returns
    -------
    dict
        Method -> AnnData of its cells, group after group, with

        `X` : CSR matrix (if the training values are sparse) or ndarray (n_cells, n_genes)
            The generated values (also in ``layers[layer]`` when `layer` is given, the same matrix,
            so that :func:`generation_scores` reads both AnnData with one `layer`).
        `obs[groupby]` : categorical
            The group of each cell (with `groupby`).

        `obs_names` are ``"<method>_0"``, …; `var_names` are those of `train`.

    Examples
    --------
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=300, n_vars=50)
    >>> sc.pp.normalize_total(adata, target_sum=1e4)
    >>> sc.pp.log1p(adata)
    >>> baselines = bf.metrics.generation_baselines(adata, groupby="cell_type", n_per_group=20, seed=0)
    >>> sorted(baselines)
    ['independent_genes', 'mean_noise', 'resample']
    >>> baselines["mean_noise"].obs["cell_type"].value_counts().tolist()
    [20, 20, 20]
    """
    check_anndata(train, name="train", writes=False)
    methods = _check_methods(methods, _BASELINES, what="baseline")
    _check_int(seed, "seed", 0)
    X = _values(train, layer, "train")
    labels, order = _group_labels(train, groupby, "train")
    counts = _check_n_per_group(n_per_group, labels, order, groupby)
    non_negative = float(X.min()) >= 0  # a sparse matrix's min counts its implicit zeros
    made = [group for group in order if group in counts]

    baselines = {}
    for method in methods:
        blocks, names = [], []
        for group_index, group in enumerate(order):
            if group not in counts:
                continue
            rng = np.random.default_rng([seed, _BASELINES.index(method), group_index])
            block = X[np.flatnonzero(labels == group)]
            if method == "resample":
                # without replacement: a duplicated cell is one a two-sample classifier recognises
                size = min(counts[group], block.shape[0])
                blocks.append(block[np.sort(rng.choice(block.shape[0], size=size, replace=False))])
            elif method == "independent_genes":
                blocks.append(_independent_genes(block, counts[group], rng))
            else:
                blocks.append(_mean_noise(block, counts[group], rng, clip=non_negative))
            names.extend([group] * blocks[-1].shape[0])
        values = sparse.vstack(blocks, format="csr") if sparse.issparse(X) else np.vstack(blocks)
        obs = pd.DataFrame(index=pd.Index([f"{method}_{i}" for i in range(len(names))]))
        if groupby is not None:
            obs[groupby] = pd.Categorical(names, categories=made)
        baselines[method] = ad.AnnData(
            X=values,
            obs=obs,
            var=pd.DataFrame(index=train.var_names.copy()),
            layers={} if layer is None else {layer: values},
        )
    return baselines


def _score_group(real, generated, *, n_pcs: int, max_cells: int, classifier: ClassifierMixin, seed: list[int]) -> dict:
    """Every score of one group but ``de_overlap``."""
    mean_real, var_real = _moments(real)
    mean_generated, var_generated = _moments(generated)
    rng = np.random.default_rng(seed)
    n = min(real.shape[0], generated.shape[0], max_cells)
    sample_real = real[np.sort(rng.choice(real.shape[0], size=n, replace=False))]
    sample_generated = generated[np.sort(rng.choice(generated.shape[0], size=n, replace=False))]
    if sparse.issparse(real) or sparse.issparse(generated):
        pooled = sparse.vstack([sparse.csr_matrix(sample_real), sparse.csr_matrix(sample_generated)], format="csr")
    else:
        pooled = np.vstack([sample_real, sample_generated])
    n_components = max(1, min(n_pcs, min(pooled.shape) - 1))
    random_state = int(rng.integers(2**31))
    if _moments(pooled)[1].any():
        embedded = PCA(n_components=n_components, random_state=random_state).fit_transform(pooled.astype(np.float64))
    else:  # every cell alike (e.g. all zero): no axis to project on, and nothing to tell apart
        embedded = np.zeros((2 * n, 1))
    return {
        "n_real": real.shape[0],
        "n_generated": generated.shape[0],
        "pearson_mean": _pearson(mean_real, mean_generated),
        "r2_mean": float(r2_score(mean_real, mean_generated)),
        "pearson_var": _pearson(var_real, var_generated),
        "mmd": _mmd(embedded[:n], embedded[n:]),
        "c2st_auc": _c2st(embedded, n, classifier, random_state),
    }


def _moments(X) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and (population) variance, a sparse matrix never densified."""
    if sparse.issparse(X):
        return mean_variance_axis(sparse.csr_matrix(X, dtype=np.float64), axis=0)
    X = np.asarray(X, dtype=np.float64)
    return X.mean(axis=0), X.var(axis=0)


def _mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with a Gaussian kernel whose width is the median pairwise distance of the pooled points."""
    squared = euclidean_distances(np.vstack([x, y]), squared=True)
    median = float(np.median(squared[np.triu_indices(squared.shape[0], k=1)]))  # median of d² = (median of d)²
    kernel = np.exp(-squared / (2 * median)) if median > 0 else np.ones_like(squared)
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = kernel[:m, :m], kernel[m:, m:], kernel[:m, m:]
    # the diagonal (a point with itself) is left out of the within-sample means: that makes it unbiased
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def _c2st(embedded: np.ndarray, n: int, classifier: ClassifierMixin, random_state: int) -> float:
    """Cross-validated ROC AUC of telling the first `n` rows (real) from the other `n` (generated)."""
    is_generated = np.repeat([0, 1], n)
    folds = StratifiedKFold(n_splits=min(_CV_FOLDS, n), shuffle=True, random_state=random_state)
    return float(cross_val_score(clone(classifier), embedded, is_generated, cv=folds, scoring="roc_auc").mean())


def _top_markers(X, labels: np.ndarray, groups: list[str], genes: pd.Index, n_top_genes: int) -> dict[str, list[str]]:
    """Top up-regulated genes of each group against the other groups, by Scanpy's t-test, on a new AnnData."""
    cells = np.flatnonzero(np.isin(labels, groups))
    # Indexing copies the cells, so Scanpy's in-place `eliminate_zeros` never reaches the caller's matrix.
    subset = ad.AnnData(
        X=X[cells].astype(np.float64),
        obs=pd.DataFrame(
            {"group": pd.Categorical(labels[cells], categories=groups)},
            index=pd.Index(np.arange(cells.size).astype(str)),
        ),
        var=pd.DataFrame(index=genes.copy()),
    )
    sc.tl.rank_genes_groups(
        subset, "group", method="t-test", reference="rest", n_genes=min(n_top_genes, len(genes)), use_raw=False
    )
    ranked = subset.uns["rank_genes_groups"]["names"]
    return {group: [str(gene) for gene in ranked[group]] for group in groups}


def _independent_genes(block, n: int, rng: np.random.Generator):
    """`n` cells whose every gene is an independent draw from that gene's values in `block`."""
    chunks = []
    for start in range(0, block.shape[1], _GENE_CHUNK):
        values = block[:, start : start + _GENE_CHUNK]
        values = values.toarray() if sparse.issparse(values) else np.asarray(values)
        rows = rng.integers(block.shape[0], size=(n, values.shape[1]))
        drawn = np.take_along_axis(values, rows, axis=0)
        chunks.append(sparse.csr_matrix(drawn) if sparse.issparse(block) else drawn)
    return sparse.hstack(chunks, format="csr") if sparse.issparse(block) else np.hstack(chunks)


def _mean_noise(block, n: int, rng: np.random.Generator, *, clip: bool):
    """`n` cells: the mean of `block` plus Gaussian noise with each gene's standard deviation."""
    mean, variance = _moments(block)
    values = mean + np.sqrt(variance) * rng.standard_normal((n, block.shape[1]))
    if clip:
        values = np.maximum(values, 0.0)
    values = values.astype(np.result_type(block.dtype, np.float32))
    return sparse.csr_matrix(values) if sparse.issparse(block) else values


def _values(adata: ad.AnnData, layer: str | None, name: str):
    """The matrix of `layer`, checked to hold finite real numbers."""
    X = get_matrix(adata, layer, name=name)
    where = matrix_name(layer, name=name)
    if not (sparse.issparse(X) or isinstance(X, np.ndarray)):
        raise TypeError(
            f"`{where}` is a {type(X).__name__}; pass an in-memory NumPy array or SciPy sparse matrix "
            f"(e.g. `{name} = {name}.to_memory()`)."
        )
    values = X.data if sparse.issparse(X) else X
    check_dtype(values, where=f"`{where}`")
    if not np.isfinite(values).all():
        raise ValueError(f"`{where}` contains NaN or infinite values. Remove or fill them first.")
    return X


def _gene_order(real_genes: pd.Index, generated_genes: pd.Index) -> np.ndarray:
    """Column of each real gene in `generated`; a ValueError if the gene sets differ."""
    missing, extra = real_genes.difference(generated_genes), generated_genes.difference(real_genes)
    if len(missing) or len(extra):
        raise ValueError(
            f"`real` and `generated` must have the same genes (matched by name, any order): missing from "
            f"`generated`: {shown(missing)}; not in `real`: {shown(extra)}. Subset both to the shared genes, e.g. "
            "`genes = real.var_names.intersection(generated.var_names)` then `real[:, genes].copy()` and "
            "`generated[:, genes].copy()`."
        )
    return generated_genes.get_indexer(real_genes)


def _group_labels(adata: ad.AnnData, groupby: str | None, name: str) -> tuple[np.ndarray, list[str]]:
    """Group of each cell as strings (all ``"all"`` without `groupby`), and the groups with cells in category order.

    A column that is not categorical has its groups sorted.
    """
    if groupby is None:
        return np.full(adata.n_obs, _ALL, dtype=object), [_ALL]
    check_obs_key(adata, groupby, argument="groupby", name=name)
    column = adata.obs[groupby]
    labels = column.astype(str).to_numpy(dtype=object)
    present = set(labels)
    if isinstance(column.dtype, pd.CategoricalDtype):
        return labels, [group for group in map(str, column.cat.categories) if group in present]
    return labels, sorted(present)


def _scored_groups(order_real: list[str], order_generated: list[str], groups, groupby: str | None) -> list[str]:
    present_real, present_generated = set(order_real), set(order_generated)
    if groups is None:
        only_real = [group for group in order_real if group not in present_generated]
        only_generated = [group for group in order_generated if group not in present_real]
        if only_real or only_generated:
            missing = [
                f"no {side} cells of {shown(absent)}"
                for side, absent in (("generated", only_real), ("real", only_generated))
                if absent
            ]
            raise ValueError(
                f"`real` and `generated` must have the same groups in `obs[{groupby!r}]`: {'; '.join(missing)}. "
                "Generate cells of every group, or pass `groups=` with the groups to score."
            )
        return order_real
    groups = [groups] if isinstance(groups, str) else [str(group) for group in groups]
    if groupby is None:
        raise ValueError("`groups=` needs `groupby=`, the obs column that holds the groups.")
    if not groups or len(set(groups)) < len(groups):
        raise ValueError(f"`groups` must list at least one group, each once; got {groups}.")
    absent = {
        group: [
            side for side, present in (("real", present_real), ("generated", present_generated)) if group not in present
        ]
        for group in groups
    }
    absent = {group: sides for group, sides in absent.items() if sides}
    if absent:
        detail = "; ".join(f"{group!r} has no {' and no '.join(sides)} cells" for group, sides in absent.items())
        raise ValueError(f"In `obs[{groupby!r}]`: {detail}. Pass groups that both AnnData have cells of.")
    return groups


def _check_n_per_group(n_per_group, labels: np.ndarray, known: list[str], groupby: str | None) -> dict[str, int]:
    """Cells to make per group, only groups with more than 0, in the order of `known`."""
    sizes = pd.Series(labels).value_counts()
    if n_per_group is None:
        return {group: int(sizes[group]) for group in known}
    if isinstance(n_per_group, Mapping):
        if groupby is None:
            raise ValueError("`n_per_group` as a mapping needs `groupby=`; without it pass one number of cells.")
        counts = {str(group): n for group, n in n_per_group.items()}
        for group, n in counts.items():
            _check_int(n, f"n_per_group[{group!r}]", 0)
        unknown = [group for group, n in counts.items() if n > 0 and group not in sizes.index]
        if unknown:
            raise ValueError(
                f"`n_per_group` asks for cells of {shown(unknown)}, which have no training cells in "
                f"`train.obs[{groupby!r}]` (groups: {shown(known)}). Leave them out or map them to 0."
            )
    else:
        _check_int(n_per_group, "n_per_group", 1)
        counts = dict.fromkeys(known, n_per_group)
    if not any(counts.values()):
        raise ValueError("`n_per_group` asks for no cells at all; give at least one group a positive number.")
    return {group: int(counts[group]) for group in known if counts.get(group, 0) > 0}
