"""Biological conservation of an embedding: NMI, ARI, ASW and their mean, AvgBIO (scGPT / scIB)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

#: scIB's grid for "optimal" Leiden clustering: 0.1, 0.2, ..., 2.0.
DEFAULT_RESOLUTIONS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 21))


def avg_bio(
    adata: ad.AnnData,
    *,
    label_key: str,
    use_rep: str,
    cluster: Literal["kmeans", "leiden"] = "kmeans",
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    seed: int = 0,
) -> dict[str, float]:
    """Score how well a representation keeps known cell types apart (AvgBIO).

    The three scores of scIB's biological conservation, averaged as in scGPT:

    * NMI and ARI between the labels and a clustering of the representation;
    * ASW, the silhouette width of the labels in the representation (Euclidean), rescaled
      to [0, 1] as ``(silhouette + 1) / 2``;
    * AvgBIO = (NMI + ARI + ASW) / 3.

    `adata` is not modified: neighbours and clusters are computed on a separate object.

    Parameters
    ----------
    adata
        Annotated data with labels in `obs` and the representation in `obsm`.
    label_key
        Column of `adata.obs` with the reference labels (e.g. ``"cell_type"``).
    use_rep
        Key of `adata.obsm` with the representation (e.g. ``"X_bioformers"``, ``"X_pca"``).
    cluster
        ``"kmeans"``: k-means with k = number of labels (n_init=10). ``"leiden"``: Leiden on a
        15-nearest-neighbour graph of the representation at each of `resolutions`, keeping the
        clustering with the best NMI (scIB's optimal clustering).
    resolutions
        Leiden resolutions to try (only for ``cluster="leiden"``).
    seed
        Random state of k-means, the neighbour search and Leiden.

    Returns
    -------
    dict
        Scores ``{"nmi", "ari", "asw", "avg_bio"}``, each in [0, 1] (ARI can be slightly negative
        for random clusterings); with ``cluster="leiden"`` also ``"resolution"``, the chosen one.

    Examples
    --------
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic()
    >>> sc.pp.normalize_total(adata)
    >>> sc.pp.log1p(adata)
    >>> sc.pp.pca(adata, n_comps=10)
    >>> scores = bf.metrics.avg_bio(adata, label_key="cell_type", use_rep="X_pca")
    >>> sorted(scores)
    ['ari', 'asw', 'avg_bio', 'nmi']
    """
    if label_key not in adata.obs.columns:
        raise KeyError(
            f"`label_key={label_key!r}` is not a column of `adata.obs` "
            f"(columns: {', '.join(map(str, adata.obs.columns)) or 'none'})."
        )
    if use_rep not in adata.obsm:
        raise KeyError(
            f"`use_rep={use_rep!r}` is not in `adata.obsm` (keys: {', '.join(adata.obsm.keys()) or 'none'}). "
            "Compute it first, e.g. `bf.tl.pretrain(adata)` or `bf.tl.embed(adata, model)` for 'X_bioformers', "
            "or `sc.pp.pca(adata)` for 'X_pca'."
        )
    labels = pd.Categorical(adata.obs[label_key])
    if (labels.codes < 0).any():
        raise ValueError(f"`adata.obs[{label_key!r}]` has missing labels; score the labelled cells only.")
    n_labels = len(np.unique(labels.codes))
    if not 2 <= n_labels < adata.n_obs:
        raise ValueError(
            f"`adata.obs[{label_key!r}]` has {n_labels} distinct label(s) over {adata.n_obs} cells; "
            "scoring needs at least 2 labels and fewer labels than cells."
        )
    rep = adata.obsm[use_rep]
    rep = rep.toarray() if sparse.issparse(rep) else np.asarray(rep, dtype=np.float64)

    scores: dict[str, float] = {}
    if cluster == "kmeans":
        clusters = KMeans(n_clusters=n_labels, n_init=10, random_state=seed).fit_predict(rep)
    elif cluster == "leiden":
        clusters, scores["resolution"] = _optimal_leiden(rep, labels.codes, resolutions=resolutions, seed=seed)
    else:
        raise ValueError(f"`cluster` must be 'kmeans' or 'leiden', got {cluster!r}.")

    nmi = float(normalized_mutual_info_score(labels.codes, clusters))
    ari = float(adjusted_rand_score(labels.codes, clusters))
    asw = float((silhouette_score(rep, labels.codes, metric="euclidean") + 1) / 2)
    return {"nmi": nmi, "ari": ari, "asw": asw, "avg_bio": (nmi + ari + asw) / 3, **scores}


def _optimal_leiden(
    rep: np.ndarray, codes: np.ndarray, *, resolutions: Sequence[float], seed: int
) -> tuple[np.ndarray, float]:
    """Leiden clusters at the resolution with the best NMI against ``codes``, and that resolution."""
    if len(resolutions) == 0:
        raise ValueError("`resolutions` is empty; pass at least one Leiden resolution.")
    # A throwaway AnnData holding only the representation: the caller's object stays untouched.
    work = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(len(rep)).astype(str)), obsm={"rep": rep})
    sc.pp.neighbors(work, n_neighbors=15, use_rep="rep", random_state=seed)
    best_nmi, best = -np.inf, None
    for resolution in resolutions:
        sc.tl.leiden(
            work,
            resolution=resolution,
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=seed,
            key_added="clusters",
        )
        clusters = work.obs["clusters"].cat.codes.to_numpy()
        nmi = normalized_mutual_info_score(codes, clusters)
        if nmi > best_nmi:
            best_nmi, best = nmi, (clusters, float(resolution))
    return best
