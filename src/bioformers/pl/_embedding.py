"""UMAP of the bioformers cell embedding, kept apart from the user's own neighbours and UMAP."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

from .._docs import DOC_SHOW, doc_params
from .._keys import Keys
from .._validation import check_anndata, check_obsm_key, did_you_mean
from ._utils import _finish

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@doc_params(show=DOC_SHOW)
def embedding(
    adata: AnnData,
    *,
    color: str | Sequence[str] | None = None,
    basis: str | None = None,
    key_added: str = "bioformers",
    n_neighbors: int = 15,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs: Any,
) -> Axes | list[Axes] | Figure | None:
    """Plot a UMAP of the cell embedding that `bf.tl.pretrain` / `bf.tl.embed` wrote.

    The axes read UMAP1 and UMAP2, whatever the stored key.

    The neighbour graph and UMAP of `basis` are computed with Scanpy and stored under keys of
    their own (below), so the user's `obsm['X_umap']` and `uns['neighbors']` are never
    overwritten. They are reused on later calls as long as `basis` holds the same values and
    `n_neighbors` is unchanged; a retrained embedding gets a fresh UMAP. Graph and UMAP are
    computed aside and written together, after the `color` keys are checked, so a failure leaves
    `adata` as it was.

    Parameters
    ----------
    adata
        Annotated data with the embedding in `obsm`. A view is plotted only if its UMAP is already
        stored (nothing to write); otherwise call ``.copy()`` on it first.
    color
        Keys of `obs` or genes to colour by, as in :func:`scanpy.pl.embedding`.
    basis
        Key of `obsm` with the representation; default ``f"X_{key_added}"``
        (``"X_bioformers"``).
    key_added
        Base key used by `bf.tl` (default ``"bioformers"``); names the stored graph and UMAP.
    n_neighbors
        Neighbours of the graph the UMAP is computed from.
    ax
        Axes to draw into (single `color` only).
    {show}
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (e.g. `palette`, `size`, `legend_loc`, `title`).

    Returns
    -------
    :class:`~matplotlib.axes.Axes`, list of :class:`~matplotlib.axes.Axes`, :class:`~matplotlib.figure.Figure` or None
        The Axes (a list of Axes for several `color` keys), the Figure if `return_fig`, or None if
        shown. When it computes the UMAP (not when it reuses a stored one), it sets
        (``bioformers`` in the names is ``key_added``):

        ``adata.obsm['X_umap_bioformers']`` : :class:`~numpy.ndarray` (n_obs, 2)
            UMAP coordinates.
        ``adata.uns['X_umap_bioformers']`` : :class:`dict`
            UMAP parameters, including the basis it was computed from, ``n_neighbors`` and a
            checksum of the basis (how a later call knows it can reuse the UMAP).
        ``adata.uns['bioformers_neighbors']`` : :class:`dict`
            Neighbour-graph parameters, as :func:`scanpy.pp.neighbors` writes them.
        ``adata.obsp['bioformers_neighbors_distances']``, ``adata.obsp['bioformers_neighbors_connectivities']``
            The neighbour graph, sparse (n_obs, n_obs).

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic()
    >>> # stands in for bf.tl.pretrain(adata):
    >>> adata.obsm["X_bioformers"] = np.random.default_rng(0).normal(size=(adata.n_obs, 8))
    >>> ax = bf.pl.embedding(adata, color="cell_type", show=False)
    >>> adata.obsm["X_umap_bioformers"].shape
    (300, 2)
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('UMAP1', 'UMAP2')
    """
    keys = Keys(key_added)
    basis = keys.embedding if basis is None else basis
    check_obsm_key(
        adata,
        basis,
        fix="Compute the cell embedding first with `bf.tl.pretrain(adata)` or, for a trained model, "
        "`bf.tl.embed(adata, model)`.",
    )
    _check_color(adata, color, kwargs.get("gene_symbols"))
    neighbors_key, umap_key = keys.neighbors, keys.umap

    fingerprint = {"use_rep": basis, "n_neighbors": n_neighbors, "rep_checksum": _checksum(adata.obsm[basis])}
    stored = adata.uns.get(umap_key, {}).get("params", {})
    if umap_key not in adata.obsm or any(stored.get(k) != v for k, v in fingerprint.items()):
        check_anndata(adata, backed=True)
        # computed on a throwaway AnnData: the graph and UMAP reach `adata` together or not at all
        work = ad.AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()), obsm={basis: adata.obsm[basis]})
        sc.pp.neighbors(work, n_neighbors=n_neighbors, use_rep=basis, key_added=neighbors_key)
        sc.tl.umap(work, neighbors_key=neighbors_key, key_added=umap_key)
        work.uns[umap_key]["params"].update(fingerprint)
        graph = work.uns[neighbors_key]
        for key in (graph["connectivities_key"], graph["distances_key"]):
            adata.obsp[key] = work.obsp[key]
        adata.uns[neighbors_key] = graph
        adata.obsm[umap_key] = work.obsm[umap_key]
        adata.uns[umap_key] = work.uns[umap_key]

    axes = sc.pl.embedding(adata, basis=umap_key, color=color, ax=ax, show=False, **kwargs)
    for each in axes if isinstance(axes, list) else [axes]:
        # Scanpy names the axes after the basis ("X_umap_bioformers1"); readers know them as UMAP1/2
        each.set_xlabel("UMAP1")
        each.set_ylabel("UMAP2")
    return _finish(axes, show=show, return_fig=return_fig)


def _check_color(adata: AnnData, color: str | Sequence[str] | None, gene_symbols: str | None) -> None:
    """Each `color` must name a column of `obs` or a gene, checked before anything is computed or written."""
    names = {*adata.obs.columns, *(adata.var[gene_symbols] if gene_symbols in adata.var else adata.var_names)}
    if adata.raw is not None:
        names.update(adata.raw.var_names)
    for key in [color] if isinstance(color, str) else list(color or []):
        if key not in names:
            raise KeyError(f"`color={key!r}` is neither a column of `adata.obs` nor a gene.{did_you_mean(key, names)}")


def _checksum(rep) -> str:
    """Digest of the values of a representation, to tell a retrained embedding from the old one."""
    values = rep.toarray() if sparse.issparse(rep) else np.asarray(rep)
    return hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=16).hexdigest()
