"""Perturbation response: what a model has to beat, simple baselines fitted on training cells.

:func:`perturbation_baselines` predicts the mean log-normalised profile of each requested
perturbation with no change, the mean training response, the linear model of Ahlmann-Eltze et
al. (2025) or an MLP on control cells; score its output with
:func:`~bioformers.metrics.perturbation_scores`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.decomposition import PCA
from sklearn.neural_network import MLPRegressor
from threadpoolctl import threadpool_limits

from .._docs import DOC_PERTURBATION_KEY, doc_layer_lognorm, doc_params
from ..data import perturbation_targets
from ._checks import _check_int, _check_methods
from ._perturbation import (
    _CONSTANT_RTOL,
    _check_control,
    _check_requested,
    _expression,
    _group_sizes,
    _labels,
    _means,
)

_Method = Literal["no_change", "train_mean", "linear", "mlp"]
_METHODS: tuple[_Method, ...] = ("no_change", "train_mean", "linear", "mlp")
_MLP_HIDDEN = (256,)
_MLP_MAX_PERTURBED = 3000  # perturbed training cells paired with a control cell, at most
_MLP_MAX_CONTROL = 1000  # control -> control training pairs, at most


@doc_params(perturbation_key=DOC_PERTURBATION_KEY, layer=doc_layer_lognorm("train"))
def perturbation_baselines(
    train: ad.AnnData,
    perturbations: Sequence[str],
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    methods: _Method | Sequence[_Method] = _METHODS,
    n_components: int = 10,
    ridge: float = 0.1,
    gene_embedding: str | np.ndarray | None = None,
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
    {perturbation_key}
    methods
        The baselines to compute (one name or several), of ``"no_change"``, ``"train_mean"``,
        ``"linear"`` and ``"mlp"``.
    n_components
        Dimension K of the linear model's gene embedding; capped at the rank of the centred
        genes x cells matrix (at most the number of genes, and of cells minus one).
    ridge
        Ridge penalty λ of the linear model; 0.1 as in Ahlmann-Eltze et al., whose embedding
        (from pseudobulk profiles) has a different scale, so the same λ is not the same penalty.
    gene_embedding
        The linear model's gene embedding ``G``: ``None`` computes it by PCA of the training cells
        (above); otherwise a key of ``train.varm`` or an array, ``(n_vars, K)``, one row per gene of
        `train` in its order, e.g. a pretrained model's gene embeddings
        (:func:`bioformers.tl.gene_embeddings` writes them to ``varm['bioformers_genes']``). Such an
        embedding can know a held-out target from other data, where PCA knows it only from how it
        co-varies in the training cells. `n_components` then does not apply.
    n_cells
        Number of control cells the MLP's prediction is averaged over (all, if fewer).
    seed
        Seed of the MLP's initialisation and of every cell drawn at random.
    {layer}

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
    methods = _check_methods(methods, _METHODS)
    labels = _labels(train, perturbation_key)
    counts = _group_sizes(labels)
    _check_control(counts, control, perturbation_key)
    perturbations = _check_requested(perturbations, control)
    _check_int(n_components, "n_components", 1)
    _check_int(n_cells, "n_cells", 1)
    embedding = None if gene_embedding is None else _given_embedding(train, gene_embedding)
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
    targets = {group: perturbation_targets(group, control) for group in [*training, *perturbations]}
    fitted = [group for group in training if _measured(targets[group], gene_index)]
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
                X,
                gene_index,
                targets,
                fitted,
                delta,
                perturbations,
                n_components=n_components,
                ridge=float(ridge),
                embedding=embedding,
            )
        else:
            values = _mlp_profiles(
                X, labels, gene_index, targets, control, training, perturbations, n_cells=n_cells, seed=seed
            )
        predictions[method] = pd.DataFrame(values, index=index.copy(), columns=train.var_names.copy())
    return predictions


def _linear_deltas(
    X,
    genes: pd.Index,
    targets: Mapping[str, list[str]],
    fitted: list[str],
    delta: np.ndarray,
    perturbations: list[str],
    *,
    n_components: int,
    ridge: float,
    embedding: np.ndarray | None = None,
) -> np.ndarray:
    """Deltas of `perturbations` from the linear model fitted on the deltas (perturbations x genes) of `fitted`."""
    G = _gene_embedding(X, n_components) if embedding is None else embedding
    Y = delta.T  # genes x perturbations
    b = Y.mean(axis=1, keepdims=True)
    P = np.stack([_embed(G, genes, targets[group]) for group in fitted])
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
        if _measured(targets[group], genes):
            result[row] = b[:, 0] + G @ W @ _embed(G, genes, targets[group])
    return result


def _given_embedding(train: ad.AnnData, gene_embedding: str | np.ndarray) -> np.ndarray:
    """The user's gene embedding for the linear model, checked: finite, one row per gene of `train`."""
    if isinstance(gene_embedding, str):
        if gene_embedding not in train.varm:
            raise KeyError(
                f"`gene_embedding={gene_embedding!r}` is not a key of `train.varm` (keys: {list(train.varm.keys())}). "
                "Run `bf.tl.gene_embeddings(train, model)` first, or pass the array itself."
            )
        gene_embedding = train.varm[gene_embedding]
    G = np.asarray(gene_embedding, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != train.n_vars or G.shape[1] < 1:
        raise ValueError(
            f"`gene_embedding` must have one row per gene of `train` ({train.n_vars}) and at least one column, "
            f"not shape {G.shape}."
        )
    if not np.isfinite(G).all():
        raise ValueError("`gene_embedding` has missing or infinite values.")
    return G


def _embed(G: np.ndarray, genes: pd.Index, targets: list[str]) -> np.ndarray:
    """A perturbation's embedding: the sum of the gene-embedding rows of its (measured) targets."""
    return G[genes.get_indexer(targets)].sum(axis=0)


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
    targets: Mapping[str, list[str]],
    control: str,
    training: list[str],
    perturbations: list[str],
    *,
    n_cells: int,
    seed: int,
) -> np.ndarray:
    """Mean MLP output over random control cells for each perturbation (see `perturbation_baselines`)."""
    unmeasured = list(dict.fromkeys(t for group in training for t in targets[group] if t not in genes))
    vocabulary = pd.Index([*genes, *unmeasured])

    def indicator(group: str | None) -> np.ndarray:
        row = np.zeros(len(vocabulary), dtype=np.float32)
        if group is not None:
            columns = vocabulary.get_indexer(targets[group])
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


def _measured(targets: list[str], genes: pd.Index) -> bool:
    """Whether every target of a perturbation is a measured gene."""
    return all(target in genes for target in targets)
