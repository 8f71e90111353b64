"""Perturbation response: score predicted mean expression after a perturbation, and baselines to compare with.

Everything works on log-normalised expression (``sc.pp.normalize_total(adata, target_sum=1e4)``
then ``sc.pp.log1p(adata)``) and on the mean profile of each perturbation, read from an
``obs`` column that holds the control label for control cells and the perturbed target gene
otherwise (a combination written ``"A+B"``).

* :func:`mean_profiles`: the mean expression of each group of cells.
* :func:`top_de_genes`: the genes that change most under each perturbation (Scanpy's t-test
  against the controls).
* :func:`perturbation_scores`: correlations and errors of predicted against observed mean
  profiles, on all genes and on the top DE genes, of the profiles and of their change from the
  control mean (the delta, the part a model has to predict).
* :func:`mean_collapse`: whether the predicted changes differ between perturbations at all.
* :func:`perturbation_baselines`: what a model has to beat: no change, the mean training
  response, the linear model of Ahlmann-Eltze et al. (2025) and an MLP on control cells.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse
from sklearn.decomposition import PCA
from sklearn.neural_network import MLPRegressor
from threadpoolctl import threadpool_limits

from .._validation import did_you_mean, get_matrix
from ..data import COMBINATION_SEPARATOR

_Method = Literal["no_change", "train_mean", "linear", "mlp"]
_METHODS: tuple[_Method, ...] = ("no_change", "train_mean", "linear", "mlp")
_SCORE_COLUMNS = (
    "pearson",
    "pearson_top",
    "pearson_delta",
    "pearson_delta_top",
    "mse_top",
    "l2_top",
    "direction_top",
)
# A vector whose spread is below this share of its size is constant up to rounding, e.g. the
# "no change" baseline's delta: its correlation is undefined (NaN), not the correlation of noise.
_CONSTANT_RTOL = 1e-10
_MLP_HIDDEN = (256,)
_MLP_MAX_PERTURBED = 3000  # perturbed training cells paired with a control cell, at most
_MLP_MAX_CONTROL = 1000  # control -> control training pairs, at most


def mean_profiles(
    adata: ad.AnnData, *, perturbation_key: str = "perturbation", layer: str | None = None
) -> pd.DataFrame:
    """Mean expression of each group of cells.

    The means are a sparse product of a group indicator with the expression matrix, so a sparse
    matrix is never densified. Cells with a missing label are left out.

    Parameters
    ----------
    adata
        Log-normalised expression, with the group of each cell in ``obs[perturbation_key]``.
    perturbation_key
        Column of `adata.obs` with the group labels (control or perturbation).
    layer
        Layer with the log-normalised expression; `None`: `adata.X`.

    Returns
    -------
    :class:`~pandas.DataFrame`
        One row per group with at least one cell (index ``perturbation_key``), in category order for
        a categorical column, in sorted order otherwise; one column per gene of `adata.var_names`.

    Examples
    --------
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic_perturbation(n_obs=300, n_vars=30)
    >>> sc.pp.normalize_total(adata, target_sum=1e4)
    >>> sc.pp.log1p(adata)
    >>> profiles = bf.metrics.mean_profiles(adata)
    >>> profiles.shape
    (11, 30)
    """
    labels = _labels(adata, perturbation_key)
    return _means(_expression(adata, layer), labels, adata.var_names, perturbation_key)


def top_de_genes(
    adata: ad.AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    n_top_genes: int = 20,
    layer: str | None = None,
    perturbations: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """The genes that change most under each perturbation, against the control cells.

    Runs Scanpy's :func:`scanpy.tl.rank_genes_groups` (``method="t-test"``,
    ``reference=control``, ``rankby_abs=True``) on a new AnnData holding only the control cells
    and the cells of the requested perturbations, so `adata` is never written to. Genes are ranked
    by the absolute t statistic, so genes going down count as much as genes going up; a
    knocked-out target that is measured is usually the first.

    Parameters
    ----------
    adata
        Log-normalised expression, with control and perturbed cells labelled in
        ``obs[perturbation_key]``.
    perturbation_key
        Column of `adata.obs` with the control label or the perturbation of each cell.
    control
        Label of the control cells.
    n_top_genes
        Number of genes per perturbation; all genes if there are fewer.
    layer
        Layer with the log-normalised expression; `None`: `adata.X`.
    perturbations
        Perturbations to rank genes for; `None`: every label with cells other than `control`.
        Each needs at least 2 cells, as does `control`.

    Returns
    -------
    dict
        Perturbation -> its `n_top_genes` gene names, most significant first.

    Examples
    --------
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic_perturbation(n_obs=400, n_vars=30)
    >>> sc.pp.normalize_total(adata, target_sum=1e4)
    >>> sc.pp.log1p(adata)
    >>> top = bf.metrics.top_de_genes(adata, n_top_genes=5, perturbations=["unmeasured_0"])
    >>> len(top["unmeasured_0"])
    5
    """
    _check_int(n_top_genes, "n_top_genes", 1)
    labels = _labels(adata, perturbation_key)
    counts = _group_sizes(labels)
    _check_control(counts, control, perturbation_key)
    perturbations = _check_perturbations(perturbations, counts, control, perturbation_key)
    _check_t_test_sizes(counts, [control, *perturbations])
    return _rank_genes(_expression(adata, layer), labels, adata.var_names, control, perturbations, n_top_genes)


def perturbation_scores(
    predicted: ad.AnnData | pd.DataFrame,
    observed: ad.AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    n_top_genes: int = 20,
    layer: str | None = None,
    top_genes: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Score predicted mean profiles of perturbations against the observed ones.

    The delta of a profile is its difference from the mean of the observed control cells;
    predicting it is the task, since a profile close to control already correlates highly with
    every observed profile. The top DE genes of a perturbation are those of :func:`top_de_genes`
    on `observed`.

    Parameters
    ----------
    predicted
        The predicted mean log-normalised expression of each perturbation: a DataFrame
        (perturbations x genes) such as a value of :func:`perturbation_baselines`, or an
        AnnData of predicted cells labelled in ``obs[perturbation_key]`` (its `X` is averaged
        per perturbation). Rows labelled `control` are skipped. A row with a missing value (e.g.
        the linear baseline's for an unmeasured target) scores NaN throughout.
    observed
        Observed log-normalised expression, including control cells, labelled in
        ``obs[perturbation_key]``; the same genes as `predicted`, in any order.
    perturbation_key
        Column of ``obs`` with the control label or the perturbation of each cell.
    control
        Label of the control cells.
    n_top_genes
        Number of top DE genes of each perturbation.
    layer
        Layer of `observed` with the log-normalised expression; `None`: `observed.X`.
    top_genes
        Precomputed :func:`top_de_genes` output (perturbation -> genes) to use instead, so that
        several predictors are scored on identical gene sets and the t-tests run once.

    Returns
    -------
    :class:`~pandas.DataFrame`
        One row per predicted perturbation (index ``"perturbation"``), columns

        ``pearson`` / ``pearson_top``
            Pearson correlation of the predicted and observed mean profiles, on all genes / on the
            top DE genes.
        ``pearson_delta`` / ``pearson_delta_top``
            Pearson correlation of the predicted and observed deltas, on all genes / on the top DE
            genes; NaN when either delta is constant (the "no change" prediction, for instance).
        ``mse_top``
            Mean squared error of the predicted mean profile on the top DE genes.
        ``l2_top``
            Euclidean distance between the predicted and observed mean profiles on the top DE genes.
        ``direction_top``
            Share of the top DE genes whose predicted delta has the sign of the observed one.

    Examples
    --------
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic_perturbation(n_obs=400, n_vars=30)
    >>> sc.pp.normalize_total(adata, target_sum=1e4)
    >>> sc.pp.log1p(adata)
    >>> train = adata[adata.obs["perturbation"] != "unmeasured_0"].copy()
    >>> predicted = bf.metrics.perturbation_baselines(train, ["unmeasured_0"], methods=["train_mean"])
    >>> scores = bf.metrics.perturbation_scores(predicted["train_mean"], adata)
    >>> scores.columns.tolist()[:3]
    ['pearson', 'pearson_top', 'pearson_delta']
    """
    _check_int(n_top_genes, "n_top_genes", 1)
    labels = _labels(observed, perturbation_key)
    counts = _group_sizes(labels)
    _check_control(counts, control, perturbation_key)
    profiles = _predicted_profiles(predicted, perturbation_key=perturbation_key, control=control)
    profiles = _align_genes(profiles, observed.var_names, "predicted", "observed")
    _check_perturbations(list(profiles.index), counts, control, perturbation_key, where="observed")
    if top_genes is None:
        _check_t_test_sizes(counts, [control, *profiles.index])
    else:
        top_genes = _check_top_genes(top_genes, profiles.index, observed.var_names)
    X = _expression(observed, layer)

    if top_genes is None:
        top_genes = _rank_genes(X, labels, observed.var_names, control, list(profiles.index), n_top_genes)
    observed_profiles = _means(X, labels, observed.var_names, perturbation_key)
    control_mean = observed_profiles.loc[control].to_numpy()
    rows = [
        _score_profile(
            profiles.loc[group].to_numpy(dtype=np.float64),
            observed_profiles.loc[group].to_numpy(),
            control_mean,
            observed.var_names.get_indexer(top_genes[group]),
        )
        for group in profiles.index
    ]
    return pd.DataFrame(rows, index=pd.Index(profiles.index, name="perturbation"), columns=list(_SCORE_COLUMNS))


def mean_collapse(
    predicted: pd.DataFrame | np.ndarray,
    control_mean: pd.Series | np.ndarray,
    *,
    threshold: float = 0.95,
    warn: bool = True,
) -> float:
    """Mean pairwise Pearson correlation of the predicted deltas of different perturbations.

    A model that has learnt the average response to a perturbation, not which perturbation
    does what, predicts nearly the same delta for every perturbation: its deltas correlate
    close to 1 with one another ("mean collapse"). Observed deltas of different perturbations
    rarely do.

    Parameters
    ----------
    predicted
        Predicted mean profiles, perturbations x genes (a DataFrame, e.g. from
        :func:`perturbation_baselines`, or an array). Rows with missing values or a constant
        delta (whose correlations are undefined) are left out.
    control_mean
        Mean control profile the deltas are taken from: a Series indexed by gene (aligned to the
        columns of a DataFrame `predicted` by name) or an array in the column order.
    threshold
        Mean correlation above which the predictions count as collapsed.
    warn
        Issue a `UserWarning` when the mean correlation is above `threshold`.

    Returns
    -------
    float
        The mean correlation over all pairs of perturbations; NaN with fewer than 2 usable rows.

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> control = np.zeros(4)
    >>> predicted = np.array([[1.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.5, -1.0]])
    >>> round(bf.metrics.mean_collapse(predicted, control), 3)
    -0.486
    """
    values, control_values = _profile_matrix(predicted, control_mean)
    delta = values - control_values
    usable = np.isfinite(delta).all(axis=1)
    centred = delta[usable] - delta[usable].mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    constant = norms <= _CONSTANT_RTOL * np.sqrt(delta.shape[1]) * np.maximum(np.abs(delta[usable]).max(axis=1), 1.0)
    unit = centred[~constant] / norms[~constant, None]
    if unit.shape[0] < 2:
        return float("nan")
    corr = np.clip(unit @ unit.T, -1.0, 1.0)
    value = float(corr[np.triu_indices(unit.shape[0], k=1)].mean())
    if warn and value > threshold:
        warnings.warn(
            f"The predicted changes of {unit.shape[0]} perturbations correlate {value:.3f} with one another on "
            f"average (above {threshold}): the predictions for different perturbations are nearly identical. This is "
            "mean collapse: the model predicts the average response to a perturbation, not perturbation-specific ones.",
            UserWarning,
            stacklevel=2,
        )
    return value


def perturbation_baselines(
    train: ad.AnnData,
    perturbations: Sequence[str],
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    methods: _Method | Sequence[_Method] = _METHODS,
    n_components: int = 10,
    ridge: float = 0.1,
    n_cells: int = 300,
    seed: int = 0,
    layer: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Predict the mean profiles of perturbations with simple baselines fitted on training cells.

    ``"no_change"``
        The control mean: nothing happens.
    ``"train_mean"``
        The control mean plus the mean delta of the training perturbations (a combination is a
        perturbation of its own), the "mean" baseline of Ahlmann-Eltze et al. (2025).
    ``"linear"``
        The linear model of Ahlmann-Eltze et al. (2025). The gene embedding ``G`` (genes x K) is
        the top K principal components of the genes, each gene an observation described by its
        expression in every training cell, centred per gene (so that ``G`` describes how genes
        vary together across cells rather than how highly they are expressed) and scaled by
        ``1 / sqrt(n_cells)`` (so that the size of ``G``, and so the effect of `ridge`, does not
        grow with the number of cells); a perturbation is the row of ``G`` of its target (the
        sum of the rows for a combination). With the training deltas ``Y`` (genes x
        perturbations) and their mean over perturbations ``b``, the ridge solution
        ``W = (GᵀG + λI)⁻¹ Gᵀ (Y − b) P (PᵀP + λI)⁻¹`` of ``min ||Y − b − G W Pᵀ||² + λ ||W||²``
        predicts ``control + b + G W pᵀ``. Only targets
        that are measured genes have an embedding: training perturbations of other targets are
        left out of the fit (and of ``b``), and a requested perturbation of such a target gets a
        row of NaN, since the model cannot represent it.
    ``"mlp"``
        The MLP baseline of the BioFormers paper: a scikit-learn
        :class:`~sklearn.neural_network.MLPRegressor` (one hidden layer of 256 units, early
        stopping) maps a control cell's expression and a multi-hot indicator of the perturbed
        targets to the expression of a perturbed cell. The indicator has one column per measured
        gene, then one per unmeasured training target. Training pairs: each training perturbed
        cell (at most 3,000, drawn at random) with a random control cell, plus up to 1,000
        control cells each with a random control cell and an all-zero indicator. A perturbation
        is predicted as the mean output over `n_cells` random control cells. A requested target
        outside the indicator's columns (unmeasured and not in training) has no column: it is
        predicted as if that target were not perturbed.

    Parameters
    ----------
    train
        Log-normalised training expression: the control cells and the training perturbations,
        labelled in ``obs[perturbation_key]``.
    perturbations
        Perturbations to predict: target gene names, combinations as ``"A+B"``. They may be
        among the training perturbations (a split of cells rather than of perturbations).
    perturbation_key
        Column of `train.obs` with the control label or the perturbation of each cell.
    control
        Label of the control cells.
    methods
        The baselines to compute (one name or several), of ``"no_change"``, ``"train_mean"``,
        ``"linear"`` and ``"mlp"``.
    n_components
        Dimension K of the linear model's gene embedding; capped at the rank of the centred
        genes x cells matrix (at most the number of genes, and of cells minus one).
    ridge
        Ridge penalty λ of the linear model; 0.1 as in Ahlmann-Eltze et al., whose embedding
        (from pseudobulk profiles) has a different scale, so the same λ is not the same penalty.
    n_cells
        Number of control cells the MLP's prediction is averaged over (all, if fewer).
    seed
        Seed of the MLP's initialisation and of every cell drawn at random.
    layer
        Layer of `train` with the log-normalised expression; `None`: `train.X`.

    Returns
    -------
    dict
        Method -> predicted mean profiles, one row per requested perturbation (index
        ``"perturbation"``), one column per gene of `train.var_names`.

    Examples
    --------
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic_perturbation(n_obs=400, n_vars=30)
    >>> sc.pp.normalize_total(adata, target_sum=1e4)
    >>> sc.pp.log1p(adata)
    >>> held_out = adata.obs["perturbation"].cat.categories[1]
    >>> train = adata[adata.obs["perturbation"] != held_out].copy()
    >>> predicted = bf.metrics.perturbation_baselines(train, [held_out], methods=["no_change", "linear"])
    >>> predicted["linear"].shape
    (1, 30)
    """
    methods = _check_methods(methods)
    labels = _labels(train, perturbation_key)
    counts = _group_sizes(labels)
    _check_control(counts, control, perturbation_key)
    perturbations = _check_requested(perturbations, control)
    _check_int(n_components, "n_components", 1)
    _check_int(n_cells, "n_cells", 1)
    if not isinstance(ridge, Real) or isinstance(ridge, bool) or not ridge >= 0:
        raise ValueError(f"`ridge={ridge!r}` must be a non-negative number (Ahlmann-Eltze et al. use 0.1).")
    training = [group for group in counts.index if group != control and counts[group] > 0]
    needs_training = [method for method in methods if method != "no_change"]
    if needs_training and not training:
        raise ValueError(
            f"`train` has no perturbed cells (only {control!r}), so {needs_training} cannot be fitted. "
            "Pass training cells of some perturbations, or `methods=['no_change']`."
        )
    gene_index = pd.Index(train.var_names)
    fitted = [group for group in training if _measured(group, gene_index)]
    if "linear" in methods and not fitted:
        raise ValueError(
            f"No training perturbation targets a measured gene (of {training}), so the linear baseline has no "
            "embedding to fit on. Leave out 'linear' from `methods=`."
        )
    X = _expression(train, layer)

    profiles = _means(X, labels, train.var_names, perturbation_key)
    control_mean = profiles.loc[control].to_numpy()
    index = pd.Index(perturbations, name="perturbation")
    predictions = {}
    for method in methods:
        if method == "no_change":
            values = np.tile(control_mean, (len(perturbations), 1))
        elif method == "train_mean":
            values = np.tile(profiles.loc[training].to_numpy().mean(axis=0), (len(perturbations), 1))
        elif method == "linear":
            delta = profiles.loc[fitted].to_numpy() - control_mean
            values = control_mean + _linear_deltas(
                X, gene_index, fitted, delta, perturbations, n_components=n_components, ridge=float(ridge)
            )
        else:
            values = _mlp_profiles(X, labels, gene_index, control, training, perturbations, n_cells=n_cells, seed=seed)
        predictions[method] = pd.DataFrame(values, index=index.copy(), columns=train.var_names.copy())
    return predictions


def _means(X, labels: pd.Categorical, genes: pd.Index, perturbation_key: str) -> pd.DataFrame:
    """Mean of each group with cells: a sparse group indicator times `X`, which is never densified."""
    codes = labels.codes
    counts = np.bincount(codes[codes >= 0], minlength=len(labels.categories))
    present = np.flatnonzero(counts > 0)
    cells = np.flatnonzero(codes >= 0)
    indicator = sparse.csr_matrix(
        (1.0 / counts[codes[cells]], (np.searchsorted(present, codes[cells]), cells)),
        shape=(present.size, codes.size),
        dtype=np.float64,
    )
    means = indicator @ X
    means = means.toarray() if sparse.issparse(means) else np.asarray(means)
    return pd.DataFrame(means, index=pd.Index(labels.categories[present], name=perturbation_key), columns=genes.copy())


def _rank_genes(
    X, labels: pd.Categorical, genes: pd.Index, control: str, perturbations: list[str], n_top_genes: int
) -> dict[str, list[str]]:
    """Top genes of each perturbation by Scanpy's t-test against `control`, on a new AnnData."""
    groups = [control, *perturbations]
    names = np.asarray(labels, dtype=object)
    cells = np.flatnonzero(np.isin(names, groups))
    # Indexing copies the cells, so Scanpy's in-place `eliminate_zeros` never reaches the caller's matrix.
    subset = ad.AnnData(
        X=X[cells],
        obs=pd.DataFrame(
            {"group": pd.Categorical(names[cells], categories=groups)},
            index=pd.Index(np.arange(cells.size).astype(str)),
        ),
        var=pd.DataFrame(index=genes.copy()),
    )
    # Scanpy fills its result table one column per group, and pandas warns (harmlessly) that such a
    # table is fragmented once there are a few dozen perturbations.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        sc.tl.rank_genes_groups(
            subset,
            "group",
            groups=perturbations,
            reference=control,
            method="t-test",
            rankby_abs=True,
            n_genes=min(n_top_genes, len(genes)),
            use_raw=False,
        )
    ranked = subset.uns["rank_genes_groups"]["names"]
    return {group: [str(gene) for gene in ranked[group]] for group in perturbations}


def _linear_deltas(
    X,
    genes: pd.Index,
    fitted: list[str],
    delta: np.ndarray,
    perturbations: list[str],
    *,
    n_components: int,
    ridge: float,
) -> np.ndarray:
    """Deltas of `perturbations` from the linear model fitted on the deltas (perturbations x genes) of `fitted`."""
    G = _gene_embedding(X, n_components)
    Y = delta.T  # genes x perturbations
    b = Y.mean(axis=1, keepdims=True)
    P = np.stack([_embed(G, genes, group) for group in fitted])
    identity = np.eye(G.shape[1])
    # pinv of a symmetric positive (semi)definite matrix: the inverse for ridge > 0, least squares for ridge = 0
    W = (
        np.linalg.pinv(G.T @ G + ridge * identity, hermitian=True)
        @ G.T
        @ (Y - b)
        @ P
        @ np.linalg.pinv(P.T @ P + ridge * identity, hermitian=True)
    )
    result = np.full((len(perturbations), G.shape[0]), np.nan)
    for row, group in enumerate(perturbations):
        if _measured(group, genes):
            result[row] = b[:, 0] + G @ W @ _embed(G, genes, group)
    return result


def _embed(G: np.ndarray, genes: pd.Index, group: str) -> np.ndarray:
    """A perturbation's embedding: the sum of the gene-embedding rows of its targets."""
    return G[genes.get_indexer(_targets(group))].sum(axis=0)


def _gene_embedding(X, n_components: int) -> np.ndarray:
    """Principal components of the genes: PCA loadings of `X` (cells x genes, centred per gene) x singular values.

    Each gene's row is its coordinates on the top principal axes of the cells, i.e. the gene described
    by its centred expression across the cells. Divided by ``sqrt(n_cells)`` (the standard deviation
    along each axis) so that a fixed ridge penalty does not fade on large data. scikit-learn's
    ``covariance_eigh`` solver centres a sparse `X` implicitly, through the genes x genes covariance.
    """
    n_cells, n_genes = X.shape
    limit = max(1, min(n_components, n_genes, n_cells - 1))
    pca = PCA(n_components=limit, svd_solver="covariance_eigh").fit(X.astype(np.float64))
    # the centred matrix has rank at most min(genes, cells - 1); further components are rounding noise
    keep = pca.explained_variance_ > _CONSTANT_RTOL * max(pca.explained_variance_[0], 0.0)
    keep[0] = True
    return pca.components_[keep].T * (pca.singular_values_[keep] / np.sqrt(n_cells))


def _mlp_profiles(
    X,
    labels: pd.Categorical,
    genes: pd.Index,
    control: str,
    training: list[str],
    perturbations: list[str],
    *,
    n_cells: int,
    seed: int,
) -> np.ndarray:
    """Mean MLP output over random control cells for each perturbation (see `perturbation_baselines`)."""
    unmeasured = list(dict.fromkeys(t for group in training for t in _targets(group) if t not in genes))
    vocabulary = pd.Index([*genes, *unmeasured])

    def indicator(group: str | None) -> np.ndarray:
        row = np.zeros(len(vocabulary), dtype=np.float32)
        if group is not None:
            columns = vocabulary.get_indexer(_targets(group))
            row[columns[columns >= 0]] = 1.0
        return row

    rng = np.random.default_rng(seed)
    names = np.asarray(labels, dtype=object)
    control_cells = np.flatnonzero(names == control)
    perturbed = np.flatnonzero(np.isin(names, training))
    if perturbed.size > _MLP_MAX_PERTURBED:
        perturbed = np.sort(rng.choice(perturbed, size=_MLP_MAX_PERTURBED, replace=False))
    control_out = control_cells
    if control_out.size > _MLP_MAX_CONTROL:
        control_out = np.sort(rng.choice(control_out, size=_MLP_MAX_CONTROL, replace=False))
    outputs = np.concatenate([perturbed, control_out])
    inputs = rng.choice(control_cells, size=outputs.size, replace=True)
    groups = [*names[perturbed], *[None] * control_out.size]
    features = np.hstack([_rows(X, inputs), np.stack([indicator(group) for group in groups])])
    chosen = rng.choice(control_cells, size=min(n_cells, control_cells.size), replace=False)
    base = _rows(X, np.sort(chosen))
    mlp = MLPRegressor(hidden_layer_sizes=_MLP_HIDDEN, early_stopping=True, random_state=seed)
    # Products of a few thousand rows: a second BLAS thread gains little and, on a busy machine,
    # stalls the fit twentyfold.
    with threadpool_limits(limits=1, user_api="blas"):
        mlp.fit(features, _rows(X, outputs))
        return np.stack(
            [
                mlp.predict(
                    np.hstack([base, np.broadcast_to(indicator(group), (base.shape[0], len(vocabulary)))])
                ).mean(axis=0)
                for group in perturbations
            ]
        )


def _rows(X, index: np.ndarray) -> np.ndarray:
    rows = X[index]
    return (rows.toarray() if sparse.issparse(rows) else np.asarray(rows)).astype(np.float32)


def _score_profile(predicted: np.ndarray, observed: np.ndarray, control: np.ndarray, top: np.ndarray) -> dict:
    if not np.isfinite(predicted).all():
        return dict.fromkeys(_SCORE_COLUMNS, np.nan)
    predicted_delta, observed_delta = predicted - control, observed - control
    error = predicted[top] - observed[top]
    return {
        "pearson": _pearson(predicted, observed),
        "pearson_top": _pearson(predicted[top], observed[top]),
        "pearson_delta": _pearson(predicted_delta, observed_delta),
        "pearson_delta_top": _pearson(predicted_delta[top], observed_delta[top]),
        "mse_top": float(np.mean(error**2)),
        "l2_top": float(np.linalg.norm(error)),
        "direction_top": float(np.mean(np.sign(predicted_delta[top]) == np.sign(observed_delta[top]))),
    }


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN, without a warning, when either vector is constant."""
    if x.size < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    nx, ny = np.linalg.norm(xc), np.linalg.norm(yc)
    if _is_constant(nx, x) or _is_constant(ny, y):
        return float("nan")
    return float(np.clip(xc @ yc / (nx * ny), -1.0, 1.0))


def _is_constant(norm: float, values: np.ndarray) -> bool:
    return norm <= _CONSTANT_RTOL * np.sqrt(values.size) * max(float(np.abs(values).max()), 1.0)


def _labels(adata: ad.AnnData, perturbation_key: str) -> pd.Categorical:
    if perturbation_key not in adata.obs:
        raise KeyError(
            f"`adata.obs[{perturbation_key!r}]` not found (columns: {_shown(adata.obs.columns) or 'none'})."
            f"{did_you_mean(perturbation_key, adata.obs.columns)} "
            "Pass `perturbation_key=` naming the column with the control label or the perturbation of each cell."
        )
    column = adata.obs[perturbation_key]
    if isinstance(column.dtype, pd.CategoricalDtype):
        labels = column.array
        return labels.rename_categories(labels.categories.astype(str))
    return pd.Categorical(column.astype("string").to_numpy(dtype=object, na_value=None))


def _group_sizes(labels: pd.Categorical) -> pd.Series:
    return pd.Series(np.bincount(labels.codes[labels.codes >= 0], minlength=len(labels.categories)), labels.categories)


def _expression(adata: ad.AnnData, layer: str | None):
    """The expression matrix, with a warning when it looks like raw counts rather than log-normalised."""
    X = get_matrix(adata, layer)
    values = X.data if sparse.issparse(X) else np.asarray(X)
    if values.size and values.max() > 1 and np.array_equal(values, np.round(values)):
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        warnings.warn(
            f"{where} holds only integers, like raw counts; perturbation metrics and baselines expect log-normalised "
            "expression: `sc.pp.normalize_total(adata, target_sum=1e4)` then `sc.pp.log1p(adata)`.",
            UserWarning,
            stacklevel=3,
        )
    return X


def _check_control(counts: pd.Series, control: str, perturbation_key: str) -> None:
    if control not in counts.index:
        raise ValueError(
            f"Control label {control!r} not found in `obs[{perturbation_key!r}]` "
            f"(labels: {_shown(counts.index[counts > 0])}). Pass `control=` with the label of the control cells."
        )
    if counts[control] == 0:
        raise ValueError(
            f"No cell is labelled {control!r} in `obs[{perturbation_key!r}]`: deltas are taken from the control "
            "mean, so control cells are needed. Include them."
        )


def _check_t_test_sizes(counts: pd.Series, groups: Sequence[str]) -> None:
    too_small = {group: int(counts[group]) for group in groups if counts[group] < 2}
    if too_small:
        shown = ", ".join(f"{group!r} ({n} cell)" for group, n in too_small.items())
        raise ValueError(
            f"Ranking the top DE genes takes a t-test with at least 2 cells per group, but {shown} has fewer. "
            "Leave it out, or pass precomputed `top_genes=` to `perturbation_scores`."
        )


def _check_perturbations(
    perturbations: Sequence[str] | None, counts: pd.Series, control: str, perturbation_key: str, *, where: str = "adata"
) -> list[str]:
    """The requested perturbations (default: all with cells), each present with cells."""
    known = [group for group in counts.index if group != control and counts[group] > 0]
    if perturbations is None:
        if not known:
            raise ValueError(f"`obs[{perturbation_key!r}]` has no perturbed cells, only {control!r} ones.")
        return known
    perturbations = _check_requested(perturbations, control)
    unknown = [group for group in perturbations if group not in known]
    if unknown:
        raise ValueError(
            f"Perturbation(s) {_shown(unknown)} have no cells in `{where}.obs[{perturbation_key!r}]`. "
            f"Known perturbations: {_shown(known)}."
        )
    return perturbations


def _check_requested(perturbations: Sequence[str], control: str) -> list[str]:
    if isinstance(perturbations, str):
        perturbations = [perturbations]
    perturbations = [str(group) for group in perturbations]
    if not perturbations:
        raise ValueError("`perturbations` is empty; pass the perturbation labels to use.")
    duplicated = sorted({group for group in perturbations if perturbations.count(group) > 1})
    if duplicated:
        raise ValueError(f"`perturbations` lists {_shown(duplicated)} more than once; pass each once.")
    if control in perturbations:
        raise ValueError(
            f"`perturbations` contains the control label {control!r}; the control is the reference, not a perturbation."
        )
    return perturbations


def _check_methods(methods) -> list[str]:
    methods = [methods] if isinstance(methods, str) else list(methods)
    unknown = [method for method in methods if method not in _METHODS]
    if unknown or not methods:
        raise ValueError(
            f"Unknown method(s) {_shown(unknown) if unknown else '(none given)'}; `methods=` takes some of "
            f"{_shown(_METHODS)}."
        )
    return list(dict.fromkeys(methods))


def _check_top_genes(top_genes: Mapping[str, Sequence[str]], perturbations: pd.Index, genes: pd.Index) -> dict:
    missing = [group for group in perturbations if group not in top_genes]
    if missing:
        raise ValueError(
            f"`top_genes` has no genes for {_shown(missing)}. Pass `top_de_genes(observed, ...)` computed for every "
            "predicted perturbation, or `top_genes=None`."
        )
    checked = {}
    for group in perturbations:
        selected = [top_genes[group]] if isinstance(top_genes[group], str) else list(top_genes[group])
        unknown = [gene for gene in selected if gene not in genes]
        if unknown or not selected:
            problem = f"unknown genes {_shown(unknown)}" if unknown else "no genes"
            raise ValueError(f"`top_genes[{group!r}]` has {problem}; pass names from `observed.var_names`.")
        checked[group] = selected
    return checked


def _predicted_profiles(predicted, *, perturbation_key: str, control: str) -> pd.DataFrame:
    """Predicted mean profiles as a float DataFrame with string labels, the control row dropped."""
    if isinstance(predicted, ad.AnnData):
        profiles = mean_profiles(predicted, perturbation_key=perturbation_key)
    elif isinstance(predicted, pd.DataFrame):
        profiles = predicted.copy()
        profiles.index = profiles.index.astype(str)
        profiles.columns = profiles.columns.astype(str)
        if profiles.index.has_duplicates:
            raise ValueError(
                f"`predicted` has duplicated rows {_shown(profiles.index[profiles.index.duplicated()].unique())}; "
                "pass one mean profile per perturbation."
            )
        try:
            profiles = profiles.astype(np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError("`predicted` must hold numbers: mean log-normalised expression per gene.") from error
    else:
        raise TypeError(
            "`predicted` must be a DataFrame of mean profiles (perturbations x genes) or an AnnData of predicted "
            f"cells, not {type(predicted).__name__}."
        )
    profiles = profiles.drop(index=control, errors="ignore")
    if profiles.shape[0] == 0:
        raise ValueError("`predicted` holds no perturbation (only the control, or nothing).")
    profiles.index.name = "perturbation"
    return profiles


def _align_genes(profiles: pd.DataFrame, genes: pd.Index, name: str, reference: str) -> pd.DataFrame:
    """`profiles` with its columns in the order of `genes`; a ValueError if the gene sets differ."""
    if profiles.columns.has_duplicates:
        raise ValueError(f"`{name}` has duplicated genes {_shown(profiles.columns[profiles.columns.duplicated()])}.")
    missing, extra = genes.difference(profiles.columns), profiles.columns.difference(genes)
    if len(missing) or len(extra):
        raise ValueError(
            f"`{name}` and `{reference}` must have the same genes (any order): missing from `{name}`: "
            f"{_shown(missing) if len(missing) else 'none'}; not in `{reference}`: "
            f"{_shown(extra) if len(extra) else 'none'}. Subset both to the same genes."
        )
    return profiles[genes]


def _profile_matrix(predicted, control_mean) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(predicted, pd.DataFrame) and isinstance(control_mean, pd.Series):
        missing = predicted.columns.difference(control_mean.index)
        if len(missing):
            raise ValueError(f"`control_mean` has no value for genes {_shown(missing)} of `predicted`.")
        control_mean = control_mean.reindex(predicted.columns)
    values = np.asarray(predicted, dtype=np.float64)
    control_values = np.asarray(control_mean, dtype=np.float64).ravel()
    if values.ndim != 2 or control_values.shape != (values.shape[1],):
        raise ValueError(
            f"`predicted` must be perturbations x genes and `control_mean` one value per gene; got shapes "
            f"{values.shape} and {control_values.shape}."
        )
    return values, control_values


def _targets(group: str) -> list[str]:
    return [target.strip() for target in str(group).split(COMBINATION_SEPARATOR)]


def _measured(group: str, genes: pd.Index) -> bool:
    return all(target in genes for target in _targets(group))


def _check_int(value, name: str, low: int) -> None:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"`{name}={value!r}` must be an integer >= {low}.")


def _shown(values, limit: int = 10) -> str:
    values = [str(value) for value in values]
    shown = ", ".join(map(repr, values[:limit]))
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")
