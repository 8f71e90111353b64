"""Perturbation response: score predicted mean expression after a perturbation against the observed.

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

The baselines to compare with, :func:`~bioformers.metrics.perturbation_baselines`, live in
``_perturbation_baselines.py``, which reads the groups, checks its arguments and averages cells
with the helpers of this module.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

from .._docs import DOC_PERTURBATION_KEY, doc_layer_lognorm, doc_params
from .._validation import check_control, did_you_mean, get_matrix, matrix_name, shown
from ._checks import _check_int

# columns of _score_profile (against the control) and of _score_against_perturbed (against the others)
_PROFILE_COLUMNS = (
    "pearson",
    "pearson_top",
    "pearson_delta",
    "pearson_delta_top",
    "mse_top",
    "l2_top",
    "direction_top",
)
_PERTURBED_COLUMNS = ("pearson_delta_perturbed", "centroid_rank")
_SCORE_COLUMNS = _PROFILE_COLUMNS + _PERTURBED_COLUMNS
# A vector whose spread is below this share of its size is constant up to rounding, e.g. the
# "no change" baseline's delta: its correlation is undefined (NaN), not the correlation of noise.
_CONSTANT_RTOL = 1e-10


@doc_params(layer=doc_layer_lognorm("adata"))
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
    {layer}

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


@doc_params(perturbation_key=DOC_PERTURBATION_KEY, layer=doc_layer_lognorm("adata"))
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
    {perturbation_key}
    n_top_genes
        Number of genes per perturbation; all genes if there are fewer.
    {layer}
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


@doc_params(perturbation_key=DOC_PERTURBATION_KEY, layer=doc_layer_lognorm("observed"))
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
    {perturbation_key}
    n_top_genes
        Number of top DE genes of each perturbation.
    {layer}
    top_genes
        Precomputed :func:`top_de_genes` output (perturbation -> genes) to use instead, so that
        several predictors are scored on identical gene sets and the t-tests run once.

    Returns
    -------
    :class:`~pandas.DataFrame`
        One row per predicted perturbation (index ``"perturbation"``), columns

        ``pearson`` / ``pearson_top``
            Pearson correlation of the predicted and observed mean profiles, on all genes / on the
            top DE genes. Rewards predicting the baseline expression of the cells: any profile near
            control scores about 0.99, so it says little about the perturbation.
        ``pearson_delta`` / ``pearson_delta_top``
            Pearson correlation of the predicted and observed deltas, on all genes / on the top DE
            genes; NaN when either delta is constant (the "no change" prediction, for instance).
            Rewards the right pattern of change, whatever its size; the average effect of the
            training perturbations scores well when perturbations share a response.
        ``mse_top``
            Mean squared error of the predicted mean profile on the top DE genes. Rewards the right
            size of change where the perturbation acts; predicting small changes is punished less
            than predicting large wrong ones.
        ``l2_top``
            Euclidean distance between the predicted and observed mean profiles on the top DE genes
            (``sqrt(n_top_genes * mse_top)``): the same reward, as a distance.
        ``direction_top``
            Share of the top DE genes whose predicted delta has the sign of the observed one.
            Rewards the right direction only; a tiny change of the right sign counts in full.
        ``pearson_delta_perturbed``
            Pearson correlation of the predicted and observed profiles, both taken relative to the
            mean of the *other* perturbations' observed mean profiles instead of the control
            (Systema, Viñas Torné et al. 2025, Nat Biotechnol): the part of a response that is
            specific to this perturbation. Predicting the average perturbation effect scores well on
            ``pearson_delta`` and about 0 here. NaN with no other perturbation in `observed`.
        ``centroid_rank``
            Rank of the perturbation's own observed mean profile among all observed perturbations'
            mean profiles by Euclidean distance to the prediction, over all genes: 1 when the
            prediction is closer to its own profile than to any other perturbation's. Centroid
            accuracy is the share of perturbations at rank 1, ``(scores["centroid_rank"] == 1).mean()``.
            It rewards predictions that tell perturbations apart, which the average effect does not.

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
    perturbed = observed_profiles.drop(index=control)
    rows = [
        _score_profile(
            profiles.loc[group].to_numpy(dtype=np.float64),
            observed_profiles.loc[group].to_numpy(),
            control_mean,
            observed.var_names.get_indexer(top_genes[group]),
        )
        | _score_against_perturbed(profiles.loc[group].to_numpy(dtype=np.float64), perturbed, group)
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


def _score_against_perturbed(predicted: np.ndarray, perturbed: pd.DataFrame, group: str) -> dict:
    """Scores against the other perturbations' observed mean profiles (Systema's reference, centroid rank)."""
    others = perturbed.drop(index=group).to_numpy()
    if not np.isfinite(predicted).all() or len(others) == 0:
        return dict.fromkeys(_PERTURBED_COLUMNS, np.nan)
    reference = others.mean(axis=0)
    observed = perturbed.loc[group].to_numpy()
    own = np.linalg.norm(predicted - observed)
    closer = int(np.sum(np.linalg.norm(others - predicted, axis=1) < own))
    return {
        "pearson_delta_perturbed": _pearson(predicted - reference, observed - reference),
        "centroid_rank": float(1 + closer),
    }


def _score_profile(predicted: np.ndarray, observed: np.ndarray, control: np.ndarray, top: np.ndarray) -> dict:
    if not np.isfinite(predicted).all():
        return dict.fromkeys(_PROFILE_COLUMNS, np.nan)
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
            f"`adata.obs[{perturbation_key!r}]` not found (columns: {shown(adata.obs.columns)})."
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
        warnings.warn(
            f"{matrix_name(layer)} holds only integers, like raw counts; perturbation metrics and baselines expect "
            "log-normalised expression: `sc.pp.normalize_total(adata, target_sum=1e4)` then `sc.pp.log1p(adata)`.",
            UserWarning,
            stacklevel=3,
        )
    return X


def _check_control(counts: pd.Series, control: str, perturbation_key: str) -> None:
    """`control` must be a label of `perturbation_key` (:func:`check_control`) and have cells: deltas need them."""
    check_control(pd.Series(counts.index), control, perturbation_key)
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
            f"Perturbation(s) {shown(unknown)} have no cells in `{where}.obs[{perturbation_key!r}]`. "
            f"Known perturbations: {shown(known)}."
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
        raise ValueError(f"`perturbations` lists {shown(duplicated)} more than once; pass each once.")
    if control in perturbations:
        raise ValueError(
            f"`perturbations` contains the control label {control!r}; the control is the reference, not a perturbation."
        )
    return perturbations


def _check_top_genes(top_genes: Mapping[str, Sequence[str]], perturbations: pd.Index, genes: pd.Index) -> dict:
    missing = [group for group in perturbations if group not in top_genes]
    if missing:
        raise ValueError(
            f"`top_genes` has no genes for {shown(missing)}. Pass `top_de_genes(observed, ...)` computed for every "
            "predicted perturbation, or `top_genes=None`."
        )
    checked = {}
    for group in perturbations:
        selected = [top_genes[group]] if isinstance(top_genes[group], str) else list(top_genes[group])
        unknown = [gene for gene in selected if gene not in genes]
        if unknown or not selected:
            problem = f"unknown genes {shown(unknown)}" if unknown else "no genes"
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
                f"`predicted` has duplicated rows {shown(profiles.index[profiles.index.duplicated()].unique())}; "
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
        raise ValueError(f"`{name}` has duplicated genes {shown(profiles.columns[profiles.columns.duplicated()])}.")
    missing, extra = genes.difference(profiles.columns), profiles.columns.difference(genes)
    if len(missing) or len(extra):
        raise ValueError(
            f"`{name}` and `{reference}` must have the same genes (any order): missing from `{name}`: "
            f"{shown(missing)}; not in `{reference}`: {shown(extra)}. Subset both to the same genes."
        )
    return profiles[genes]


def _profile_matrix(predicted, control_mean) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(predicted, pd.DataFrame) and isinstance(control_mean, pd.Series):
        missing = predicted.columns.difference(control_mean.index)
        if len(missing):
            raise ValueError(f"`control_mean` has no value for genes {shown(missing)} of `predicted`.")
        control_mean = control_mean.reindex(predicted.columns)
    values = np.asarray(predicted, dtype=np.float64)
    control_values = np.asarray(control_mean, dtype=np.float64).ravel()
    if values.ndim != 2 or control_values.shape != (values.shape[1],):
        raise ValueError(
            f"`predicted` must be perturbations x genes and `control_mean` one value per gene; got shapes "
            f"{values.shape} and {control_values.shape}."
        )
    return values, control_values
