"""Batch integration of an embedding: scIB's batch-correction metrics next to its bio-conservation ones.

The definitions of scIB (Luecken et al. 2022, "Benchmarking atlas-level data integration in
single-cell genomics", Nat Methods 19:41), on an embedding in ``obsm``:

* bio conservation: NMI and ARI of the labels against the optimal Leiden clustering, and the
  cell-type ASW, as :func:`bioformers.metrics.avg_bio` computes them (``cluster="leiden"``);
* batch correction: :func:`batch_asw`, :func:`graph_connectivity` and :func:`ilisi`
  (Korsunsky et al. 2019's LISI of the batch labels);
* :func:`integration_scores`: all of them, the mean of each group and scIB's overall score
  0.6 x bio conservation + 0.4 x batch correction.

kBET is not implemented: iLISI measures the same thing (are a cell's neighbours drawn from all
batches in proportion?) without a significance test whose outcome depends on the sample size.
Every function reads `adata` and writes nothing into it.

Against scib-metrics 0.5 (``benchmarks/pbmc_integration.py``): the ASWs and iLISI agree to three
decimals; graph connectivity is lower there, because scib-metrics takes strongly connected
components of the directed kNN graph, while scIB (and this module) uses Scanpy's symmetric
neighbour graph; NMI/ARI differ by its coarser resolution grid and its own graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scanpy import logging as logg
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sklearn.manifold._utils import _binary_search_perplexity
from sklearn.metrics import silhouette_samples
from sklearn.neighbors import NearestNeighbors

from .._validation import check_anndata, check_obs_key, check_obsm_key, shown
from ._bio import DEFAULT_RESOLUTIONS, avg_bio

#: scIB's weight of bio conservation in the overall score (batch correction gets the rest).
BIO_WEIGHT = 0.6
BIO_METRICS = ("nmi", "ari", "asw_label")
BATCH_METRICS = ("batch_asw", "graph_connectivity", "ilisi")


def integration_scores(
    adata: ad.AnnData,
    *,
    use_rep: str,
    batch_key: str,
    label_key: str,
    n_neighbors: int = 15,
    perplexity: int = 30,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    seed: int = 0,
) -> dict[str, float]:
    """Score how well an embedding mixes batches while keeping cell types apart (scIB).

    Bio conservation (each in [0, 1], higher is better):

    * ``nmi``, ``ari``: labels against Leiden clusters of the embedding's `n_neighbors`-nearest-neighbour
      graph at the resolution of `resolutions` with the best NMI (scIB's optimal clustering; the
      clustering of :func:`bioformers.metrics.avg_bio` with ``cluster="leiden"``);
    * ``asw_label``: ``(silhouette of the labels + 1) / 2``.

    Batch correction (each in [0, 1], higher means better mixed):

    * ``batch_asw``: :func:`batch_asw`;
    * ``graph_connectivity``: :func:`graph_connectivity` on the same `n_neighbors` graph;
    * ``ilisi``: :func:`ilisi`, the median LISI of batches at `perplexity`, scaled to [0, 1].

    Aggregates: ``bio_conservation`` (mean of NMI, ARI, ASW; equal to AvgBIO with Leiden),
    ``batch_correction`` (mean of the three batch scores) and ``overall`` =
    0.6 x bio conservation + 0.4 x batch correction, scIB's weighting. scIB's full lists also
    hold isolated-label scores, cLISI, kBET, PCR and cell-cycle conservation, so these aggregates
    compare methods scored here, not with published scIB tables.

    Parameters
    ----------
    adata
        Annotated data with batches and labels in `obs` and the embedding in `obsm`.
    use_rep
        Key of `adata.obsm` with the embedding (e.g. ``"X_bioformers"``, ``"X_pca"``, ``"X_scVI"``).
    batch_key
        Column of `adata.obs` with the batch of each cell (at least 2 batches).
    label_key
        Column of `adata.obs` with the cell types (at least 2; at least one of them in 2 batches).
    n_neighbors
        Size of the neighbourhoods of the Leiden clustering and of graph connectivity (scIB: 15).
    perplexity
        Effective neighbourhood size of iLISI (LISI and scIB: 30); needs at least 3 x `perplexity` cells.
    resolutions
        Leiden resolutions to try (scIB: 0.1, 0.2, ..., 2.0).
    seed
        Random state of the neighbour search and Leiden.

    Returns
    -------
    dict
        ``{"nmi", "ari", "asw_label", "batch_asw", "graph_connectivity", "ilisi", "bio_conservation",
        "batch_correction", "overall", "resolution"}``; ``resolution`` is the chosen Leiden resolution.

    Examples
    --------
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=300, n_vars=50)
    >>> sc.pp.normalize_total(adata)
    >>> sc.pp.log1p(adata)
    >>> sc.pp.pca(adata, n_comps=10)
    >>> scores = bf.metrics.integration_scores(adata, use_rep="X_pca", batch_key="batch", label_key="cell_type")
    >>> round(scores["overall"], 3) == round(0.6 * scores["bio_conservation"] + 0.4 * scores["batch_correction"], 3)
    True
    """
    # Every check before the first (slow) computation.
    rep = _embedding(adata, use_rep)
    batches = _groups(adata, batch_key, argument="batch_key", what="batches")
    labels = _groups(adata, label_key, argument="label_key", what="cell types")
    _check_some_type_in_two_batches(batches, labels, batch_key=batch_key, label_key=label_key)
    _check_neighbourhood(adata.n_obs, n_neighbors=n_neighbors, perplexity=perplexity)

    bio = avg_bio(adata, label_key=label_key, use_rep=use_rep, cluster="leiden", resolutions=resolutions, seed=seed)
    scores = {
        "nmi": bio["nmi"],
        "ari": bio["ari"],
        "asw_label": bio["asw"],
        "batch_asw": _batch_asw(rep, batches, labels),
        "graph_connectivity": _graph_connectivity(rep, labels, n_neighbors=n_neighbors, seed=seed),
        "ilisi": _ilisi(rep, batches, perplexity=perplexity),
    }
    scores["bio_conservation"] = float(np.mean([scores[k] for k in BIO_METRICS]))
    scores["batch_correction"] = float(np.mean([scores[k] for k in BATCH_METRICS]))
    scores["overall"] = BIO_WEIGHT * scores["bio_conservation"] + (1 - BIO_WEIGHT) * scores["batch_correction"]
    scores["resolution"] = bio["resolution"]
    return scores


def batch_asw(adata: ad.AnnData, *, use_rep: str, batch_key: str, label_key: str) -> float:
    """Batch ASW (scIB): how little the batches separate within each cell type.

    For the cells of one type, the silhouette width ``s`` of each cell with respect to the batch
    labels (scikit-learn, Euclidean) becomes ``1 - |s|``; the score is the mean over the type's
    cells, averaged over types. 1: batches perfectly mixed, 0: batches as far apart as cell types.
    Types seen in only one batch (or with one cell per batch) are skipped, as in scIB; the log says
    which.

    Parameters
    ----------
    adata
        Annotated data with batches and labels in `obs` and the embedding in `obsm`.
    use_rep
        Key of `adata.obsm` with the embedding.
    batch_key
        Column of `adata.obs` with the batch of each cell.
    label_key
        Column of `adata.obs` with the cell types (at least one of them in 2 batches).

    Returns
    -------
    float
        The batch ASW, in [0, 1].

    Examples
    --------
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=300, n_vars=50)
    >>> sc.pp.normalize_total(adata)
    >>> sc.pp.log1p(adata)
    >>> sc.pp.pca(adata, n_comps=10)
    >>> 0 <= bf.metrics.batch_asw(adata, use_rep="X_pca", batch_key="batch", label_key="cell_type") <= 1
    True
    """
    rep = _embedding(adata, use_rep)
    batches = _groups(adata, batch_key, argument="batch_key", what="batches")
    labels = _groups(adata, label_key, argument="label_key", what="cell types", at_least=1)
    _check_some_type_in_two_batches(batches, labels, batch_key=batch_key, label_key=label_key)
    return _batch_asw(rep, batches, labels)


def graph_connectivity(
    adata: ad.AnnData, *, use_rep: str, label_key: str, n_neighbors: int = 15, seed: int = 0
) -> float:
    """Graph connectivity (scIB): whether the cells of each type form one piece of the neighbour graph.

    Builds Scanpy's neighbour graph of the embedding (:func:`scanpy.pp.neighbors`, `n_neighbors`),
    keeps, for each cell type, only the edges between its cells, and takes the share of the type's
    cells in the largest connected component (:func:`scipy.sparse.csgraph.connected_components`).
    The score is the mean over types: 1 when every type is connected, lower when batches split
    a type into islands.

    Parameters
    ----------
    adata
        Annotated data with labels in `obs` and the embedding in `obsm`.
    use_rep
        Key of `adata.obsm` with the embedding.
    label_key
        Column of `adata.obs` with the cell types.
    n_neighbors
        Neighbours per cell in the graph (scIB: 15); needs more cells than that.
    seed
        Random state of the neighbour search (approximate only on large data).

    Returns
    -------
    float
        The graph connectivity, in (0, 1].

    Examples
    --------
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=300, n_vars=50)
    >>> sc.pp.normalize_total(adata)
    >>> sc.pp.log1p(adata)
    >>> sc.pp.pca(adata, n_comps=10)
    >>> 0 < bf.metrics.graph_connectivity(adata, use_rep="X_pca", label_key="cell_type") <= 1
    True
    """
    rep = _embedding(adata, use_rep)
    labels = _groups(adata, label_key, argument="label_key", what="cell types", at_least=1)
    _check_neighbourhood(adata.n_obs, n_neighbors=n_neighbors)
    return _graph_connectivity(rep, labels, n_neighbors=n_neighbors, seed=seed)


def ilisi(adata: ad.AnnData, *, use_rep: str, batch_key: str, perplexity: int = 30, scale: bool = True) -> float:
    """iLISI: the effective number of batches around each cell (Korsunsky et al. 2019), median over cells.

    For each cell, the ``3 x perplexity`` nearest cells of the embedding (counting the cell itself,
    as LISI does; exact Euclidean search) get Gaussian weights of their distance, with the width set
    so that the weights have perplexity `perplexity` (t-SNE's calibration, scikit-learn's
    implementation). The cell's LISI is the inverse Simpson index of the batch labels under these
    weights: 1 when all neighbours come from one batch, the number of batches when they come from
    all batches equally. As in scIB, the score is the median over cells, scaled as
    ``(iLISI - 1) / (n_batches - 1)`` to [0, 1].

    Parameters
    ----------
    adata
        Annotated data with batches in `obs` and the embedding in `obsm`.
    use_rep
        Key of `adata.obsm` with the embedding.
    batch_key
        Column of `adata.obs` with the batch of each cell (at least 2 batches).
    perplexity
        Effective neighbourhood size (LISI and scIB: 30); needs at least 3 x `perplexity` cells.
    scale
        Scale to [0, 1]; ``False`` returns the median LISI itself, in [1, n_batches].

    Returns
    -------
    float
        The iLISI score.

    Examples
    --------
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=300, n_vars=50)
    >>> sc.pp.normalize_total(adata)
    >>> sc.pp.log1p(adata)
    >>> sc.pp.pca(adata, n_comps=10)
    >>> 1 <= bf.metrics.ilisi(adata, use_rep="X_pca", batch_key="batch", scale=False) <= 2
    True
    """
    rep = _embedding(adata, use_rep)
    batches = _groups(adata, batch_key, argument="batch_key", what="batches")
    _check_neighbourhood(adata.n_obs, perplexity=perplexity)
    return _ilisi(rep, batches, perplexity=perplexity, scale=scale)


def _batch_asw(rep: np.ndarray, batches: pd.Categorical, labels: pd.Categorical) -> float:
    per_type, skipped = [], []
    for code in np.unique(labels.codes):
        cells = np.flatnonzero(labels.codes == code)
        in_batches = batches.codes[cells]
        # silhouette needs 2 <= groups < cells; scIB skips such types too
        if not 2 <= len(np.unique(in_batches)) < len(cells):
            skipped.append(labels.categories[code])
            continue
        per_type.append(np.mean(1 - np.abs(silhouette_samples(rep[cells], in_batches))))
    if skipped:
        logg.info(f"batch ASW: skipped {len(skipped)} cell type(s) seen in one batch only: {shown(skipped)}")
    return float(np.mean(per_type))


def _graph_connectivity(rep: np.ndarray, labels: pd.Categorical, *, n_neighbors: int, seed: int) -> float:
    # A throwaway AnnData holding only the embedding: the caller's object stays untouched.
    work = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(len(rep)).astype(str)), obsm={"rep": rep})
    sc.pp.neighbors(work, n_neighbors=n_neighbors, use_rep="rep", random_state=seed)
    graph = work.obsp["connectivities"].tocsr()
    fractions = []
    for code in np.unique(labels.codes):
        cells = np.flatnonzero(labels.codes == code)
        _, component = connected_components(graph[cells][:, cells], connection="strong")
        fractions.append(np.bincount(component).max() / len(cells))
    return float(np.mean(fractions))


def _ilisi(rep: np.ndarray, batches: pd.Categorical, *, perplexity: int, scale: bool = True) -> float:
    # LISI's 3 x perplexity neighbours include the cell itself; kneighbors() without X leaves it out.
    distances, indices = NearestNeighbors(n_neighbors=3 * perplexity - 1).fit(rep).kneighbors()
    # LISI weighs neighbours by exp(-beta * distance), unsquared, with beta found by the same
    # binary search on the entropy that t-SNE uses (tolerance 1e-5); scikit-learn exposes t-SNE's
    # only under a private name, and tests/test_integration_metrics.py checks it against LISI's formula.
    weights = _binary_search_perplexity(distances.astype(np.float32), float(perplexity), 0)
    neighbour_batch = batches.codes[indices]
    simpson = np.zeros(len(rep))
    for code in range(len(batches.categories)):
        simpson += np.where(neighbour_batch == code, weights, 0.0).sum(axis=1) ** 2
    median = float(np.median(1 / simpson))
    if not scale:
        return median
    n_batches = len(np.unique(batches.codes))
    return (median - 1) / (n_batches - 1)


def _embedding(adata: ad.AnnData, use_rep: str) -> np.ndarray:
    """The embedding as a dense float64 array, after the checks every metric shares."""
    check_anndata(adata, writes=False, backed=True)
    check_obsm_key(
        adata,
        use_rep,
        fix="Pass `use_rep=` naming the embedding, or compute it first, e.g. `bf.tl.pretrain(adata)` for "
        "'X_bioformers' or `sc.pp.pca(adata)` for 'X_pca'.",
    )
    rep = adata.obsm[use_rep]
    if isinstance(rep, pd.DataFrame):
        rep = rep.to_numpy()
    rep = rep.toarray() if sparse.issparse(rep) else np.asarray(rep)
    if rep.ndim != 2 or not np.issubdtype(rep.dtype, np.number):
        raise TypeError(f"`adata.obsm[{use_rep!r}]` must be a numeric cells x dimensions matrix, not {rep.dtype}.")
    rep = rep.astype(np.float64)
    if not np.isfinite(rep).all():
        raise ValueError(
            f"`adata.obsm[{use_rep!r}]` contains NaN or infinite values. Recompute the embedding, or score only "
            f"the cells where it is finite, `adata[np.isfinite(adata.obsm[{use_rep!r}]).all(axis=1)]`."
        )
    return rep


def _groups(adata: ad.AnnData, key: str, *, argument: str, what: str, at_least: int = 2) -> pd.Categorical:
    """The categories of ``obs[key]``, refusing missing values and fewer than ``at_least`` distinct groups."""
    check_obs_key(adata, key, argument=argument)
    groups = pd.Categorical(adata.obs[key])
    n_groups = len(np.unique(groups.codes))
    if n_groups < at_least:
        raise ValueError(
            f"`adata.obs[{key!r}]` (`{argument}=`) has {n_groups} distinct value(s); integration metrics need at "
            f"least {at_least} {what}. Check that `{argument}=` names the right column."
        )
    return groups


def _check_some_type_in_two_batches(
    batches: pd.Categorical, labels: pd.Categorical, *, batch_key: str, label_key: str
) -> None:
    """Batch mixing within cell types is undefined when no type has cells from two batches."""
    table = pd.crosstab(labels.codes, batches.codes)
    n_batches, n_cells = (table > 0).sum(axis=1), table.sum(axis=1)
    if not ((n_batches >= 2) & (n_batches < n_cells)).any():
        raise ValueError(
            f"No cell type of `adata.obs[{label_key!r}]` has cells from two batches of `adata.obs[{batch_key!r}]` "
            "(and more cells than batches), so there is nothing to mix. Check `batch_key=` and `label_key=`: "
            "every type being confined to one batch usually means the labels were made per batch."
        )


def _check_neighbourhood(n_obs: int, *, n_neighbors: int | None = None, perplexity: int | None = None) -> None:
    """Neighbourhoods must be smaller than the data."""
    if n_neighbors is not None and not 2 <= n_neighbors < n_obs:
        raise ValueError(f"`n_neighbors={n_neighbors}` must be at least 2 and less than the number of cells ({n_obs}).")
    if perplexity is not None and not (1 <= perplexity and 3 * perplexity <= n_obs):
        raise ValueError(
            f"`perplexity={perplexity}` must be at least 1 and needs at least 3 x perplexity cells ({n_obs} given). "
            f"Pass `perplexity={max(n_obs // 3, 1)}` or less."
        )
