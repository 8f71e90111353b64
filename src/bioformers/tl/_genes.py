"""Gene-level results: predicted expression, attention GRNs, gene embeddings and gene programs."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch
from scanpy import logging as logg
from scipy import sparse

from .._docs import (
    DOC_ADATA,
    DOC_BATCH_SIZE,
    DOC_BINNED_WRITTEN,
    DOC_MODEL,
    DOC_QUERY_TOOL,
    DOC_VIEW,
    DOC_WRITES,
    doc_params,
)
from .._keys import DEFAULT_KEY, Keys, safe_name
from .._record import params_record
from .._validation import check_anndata, check_n_groups, check_obs_key, did_you_mean, shown
from ..data._views import value_binning_args, value_bins
from ..pp._binning import bin_centers
from ..pp._genes import DEFAULT_MIN_GENE_COVERAGE
from ._models import require_encoder

if TYPE_CHECKING:
    from ..model import BioFormer

#: More groups than this would store that many n_vars x n_vars matrices in ``varp``.
MAX_GROUPS = 50
#: Entries kept per row of a group's attention matrix (``attention_grn(top_k=...)``).
DEFAULT_TOP_K = 50
#: Fraction of the cells read that must express a gene for it to be ranked (``attention_grn(min_detection=...)``).
DEFAULT_MIN_DETECTION = 0.05
#: A group read from fewer cells than this gives a warning in ``attention_grn``.
MIN_GROUP_CELLS = 10
UNASSIGNED = "unassigned"


@doc_params(**DOC_QUERY_TOOL)
def predict(
    adata: ad.AnnData,
    model: BioFormer,
    *,
    mask_ratio: float | None = None,
    layer: str | None = None,
    gene_symbols: str | None = None,
    min_gene_coverage: float = DEFAULT_MIN_GENE_COVERAGE,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
) -> ad.AnnData | None:
    """Write the model's predicted expression of every gene of every cell.

    A backed AnnData (``anndata.read_h5ad(path, backed="r")``) is read ``chunk_size`` cells at a
    time and binned on the fly, as in :func:`bioformers.tl.embed`; the predictions, dense
    ``(n_obs, n_vars)``, are added in memory.

    Everything is checked before anything is written, and results are written only once all are
    computed. Cells with no counts raise an error; genes with no counts are fine.

    Genes are matched to the model's by name, as in :func:`bioformers.tl.embed` (which describes
    missing and extra genes, the coverage check and binning). The layers are shaped like ``adata``:
    genes the model does not know get NaN (``_predicted``) and -1 (``_predicted_bins``); model genes
    ``adata`` lacks have no column to go to (:meth:`bioformers.BioFormer.get_predicted_bins` returns
    them). With many such genes, subset ``adata`` to the model's genes first to keep the layers small.

    Parameters
    ----------
    adata
        Cells x genes, raw counts (binned like the training data if ``layers["bioformers_binned"]``
        is missing); in memory or backed (not a view of a backed AnnData).
        {view}
    {model}
    mask_ratio
        ``None``: every gene is decoded from the cell's CLS state (denoised expression): by the
        count decoder when the model has one (the default of :func:`bioformers.tl.pretrain`; see
        :meth:`bioformers.BioFormer.get_normalized_expression`), else by the bin decoder.
        A fraction in (0, 1): each gene is predicted by the masked-modelling head from the rest of
        the cell, with that fraction of the cell's genes hidden at a time (imputation); see
        :meth:`bioformers.BioFormer.get_predicted_bins`.
    {layer}
    {gene_matching}
    {batch_chunk_size}
    {key_added_copy}

    Returns
    -------
    {returns_copy}

        ``adata.layers['bioformers_predicted']`` : :class:`~numpy.ndarray` ``float32`` (n_obs, n_vars)
            Without ``mask_ratio`` and with a count decoder: the decoded expression, normalised to
            the total the training data was binned at. Otherwise the expected bin mapped back to the
            binned scale (normalised counts for value binning; bin units for segment and rank tokens,
            which have no common value scale). NaN for genes the model does not know.
        ``adata.layers['bioformers_predicted_bins']`` : :class:`~numpy.ndarray` ``int16`` (n_obs, n_vars)
            The most likely bin (from the count decoder: the bin of the decoded value, 0 below half a
            count); -1 for genes the model does not know.
        ``adata.uns['bioformers_predicted']`` : :class:`dict`
            ``params``: the arguments, ``genes_found``, ``scale`` (``"normalized counts"``,
            ``"counts"`` or ``"bins"``) and the model class.
        {binned_written}
            As :func:`bioformers.tl.embed` writes them.

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> bf.tl.predict(adata, model, mask_ratio=0.2)
    >>> adata.layers["bioformers_predicted"].shape
    (200, 50)
    >>> adata.uns["bioformers_predicted"]["params"]["scale"]
    'normalized counts'
    """
    keys = Keys(key_added)
    check_anndata(adata, copy=copy, backed=True)
    require_encoder(model, "Predicting expression")
    model.check_prediction_args(mask_ratio=mask_ratio)
    genes = model.align_genes(adata, gene_symbols=gene_symbols, min_gene_coverage=min_gene_coverage)
    with model.prepare_query(adata, layer=layer, copy=copy, genes=genes) as query:
        centers = bin_centers(model.binning_, model.module.n_bins)
        read = {"batch_size": batch_size, "genes": genes, "counts_layer": layer, "chunk_size": chunk_size}
        if mask_ratio is None and model.module.count_head is not None:
            # decoded by the count decoder, on the scale the training data was binned at
            expected = model.get_normalized_expression(query.adata, **read)
            scale = value_binning_args(model.binning_) | {"target_sum": None}  # already at the binned scale
            best = value_bins(torch.from_numpy(expected), max_bin=model.module.n_bins - 1, **scale).numpy()
            best[expected < 0.5] = 0  # below half a count the nearest value is 0
        else:
            expected, best = model.get_predicted_bins(query.adata, mask_ratio=mask_ratio, **read)
            if centers is not None:
                expected = np.interp(expected, np.arange(centers.size), centers)
    expected = genes.put(expected.astype(np.float32), fill=np.nan)
    best = genes.put(best.astype(np.int16), fill=-1)
    record = {
        "params": params_record(
            mask_ratio=mask_ratio,
            layer=layer,
            gene_symbols=gene_symbols,
            min_gene_coverage=min_gene_coverage,
            genes_found=genes.n_found,
            scale="bins" if centers is None else "normalized counts" if model.binning_.get("normalize") else "counts",
            model=type(model).__name__,
        )
    }
    adata = adata.copy() if copy else adata
    query.write_binning(adata)
    adata.layers[keys.predicted] = expected.astype(np.float32)
    adata.layers[keys.predicted_bins] = best.astype(np.int16)
    adata.uns[keys.predicted] = record
    logg.info(
        f"added\n    'layers[{keys.predicted!r}]', expected expression\n"
        f"    'layers[{keys.predicted_bins!r}]', most likely bin"
    )
    return adata if copy else None


@doc_params(
    **DOC_WRITES, adata=DOC_ADATA, model=DOC_MODEL, batch_size=DOC_BATCH_SIZE, binned_written=DOC_BINNED_WRITTEN
)
def attention_grn(
    adata: ad.AnnData,
    model: BioFormer,
    *,
    groupby: str | None = None,
    max_groups: int = MAX_GROUPS,
    top_k: int | None = DEFAULT_TOP_K,
    min_detection: float = DEFAULT_MIN_DETECTION,
    layer: int = -1,
    n_cells: int | None = None,
    keep_heads: bool = False,
    batch_size: int | None = None,
    seed: int = 0,
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
) -> ad.AnnData | None:
    """Gene regulatory network from attention: gene x gene attention averaged over cells.

    Per cell, the attention matrix of one layer (query gene x key gene, heads averaged unless
    ``keep_heads``) is added into a gene x gene sum; each pair is divided by the number of cells
    whose sequence held both genes. High mutual attention suggests interaction. With ``groupby``,
    one matrix per group (e.g. control vs perturbed), which is how conditions are compared.

    A gene expressed in a handful of cells gets its attention averaged over those few cells, so
    its pairs are the noisiest and often the largest: on PBMC 3k, the gene that receives the most
    attention is expressed in under 2% of the cells. The matrices keep every gene, but the
    ranking written (``attention_received``) leaves out genes expressed in fewer than
    ``min_detection`` of the cells read, and the plots (:func:`bioformers.pl.attention`,
    :func:`bioformers.pl.grn`) leave them out of the partners and most-attended genes they show;
    the fraction of cells expressing each gene is written beside the matrices.

    Everything is checked before anything is written, and results are written only once all are
    computed. Cells with no counts raise an error; genes with no counts are fine.

    Parameters
    ----------
    {adata}
    {model}
    groupby
        Column of ``adata.obs``, without missing values; also write one matrix per group. Its
        labels are made into keys that every writer keeps: each run of characters other than
        ASCII letters, digits and ``_`` becomes one ``_``, and ``_`` at the ends is dropped
        (``"CD14+ Monocytes"`` gives ``varp["bioformers_attention_CD14_Monocytes"]``); two
        labels that give the same key are refused. Plots find a group by its label. A group with
        fewer than 10 cells read gives a warning: its matrix averages too few cells to tell a
        network from noise.
    max_groups
        Most groups allowed in ``groupby``: each costs a pass over its cells and stores a matrix in
        ``varp`` (at most ``n_vars * top_k`` entries; ``n_vars x n_vars`` with ``top_k=None``,
        16 MB for 2,000 genes). Subset the AnnData to the groups to compare, or raise this limit
        knowingly.
    top_k
        Per-group matrices keep, in each row, only the ``top_k`` strongest genes attended to, as a
        sparse CSR matrix (``n_vars * top_k`` entries at most: under 1 MB per group for 2,000 genes
        and the default 50, against 16 MB dense). ``None`` keeps them dense. With ``keep_heads``
        the group matrices are dense whatever ``top_k`` (a sparse matrix has two axes). The matrix
        over all cells is always dense: it is one matrix, its column sums give
        ``attention_received`` exactly, and the scores of ``bf.metrics`` read all its pairs.
    min_detection
        Fraction of the cells read (of the group's cells, per group) in which a gene must be
        expressed (nonzero) to be ranked; 5% by default. ``0`` ranks every gene.
    layer
        Transformer block to read (``-1``: the last).
    n_cells
        Use at most this many randomly chosen cells (per group with ``groupby``); ``None``: all.
    keep_heads
        Keep a matrix per head: arrays ``(n_vars, n_vars, n_heads)``.
    {batch_size}
        Memory grows with it, not with the number of cells.
    seed
        Seed of the cell subsample.
    {key_added_copy}

    Returns
    -------
    {returns_copy}

        ``adata.varp['bioformers_attention']`` : :class:`~numpy.ndarray` ``float32`` (n_vars, n_vars)
            Row = attending gene, column = attended gene, over all (chosen) cells;
            ``(n_vars, n_vars, n_heads)`` with ``keep_heads``.
        ``adata.varp['bioformers_attention_<group>']`` : :class:`~scipy.sparse.csr_matrix` ``float32``
            The same for the cells of each group of ``groupby``, ``<group>`` being the label made
            safe; the ``top_k`` largest entries of every row (a dense array with ``top_k=None``
            or ``keep_heads``).
        ``adata.var['bioformers_attention_received']`` : ``float32``
            Attention each gene receives: column sums of the overall matrix (heads averaged); NaN
            for genes expressed in fewer than ``min_detection`` of the cells read, so that
            ``nlargest`` and ``sort_values`` rank only the others.
        ``adata.var['bioformers_attention_detected']`` : ``float32``
            Fraction of the cells read in which each gene is expressed.
        ``adata.varm['bioformers_attention_detected']`` : :class:`~pandas.DataFrame` ``float32``
            The same per group: one column per group, named like the group's key (``<group>``).
        ``adata.uns['bioformers_attention']`` : :class:`dict`
            ``params``: the arguments, including ``groupby`` and its ``groups`` (labels), and the
            model class. With ``groupby``, ``groups``: lists ``label``, ``key`` (of ``varp``) and
            ``n_cells`` (cells read), in the same order.
        {binned_written}

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> bf.tl.attention_grn(adata, model, groupby="cell_type", top_k=10)
    >>> adata.varp["bioformers_attention"].shape
    (50, 50)
    >>> sorted(key for key in adata.varp if key.startswith("bioformers_attention_"))
    ['bioformers_attention_type_0', 'bioformers_attention_type_1', 'bioformers_attention_type_2']
    >>> int(adata.varp["bioformers_attention_type_0"].getnnz(axis=1).max())  # top_k per row, sparse
    10
    >>> top = adata.var["bioformers_attention_received"].nlargest(5)  # genes detected in >= 5% of cells
    >>> top.size, top.dtype
    (5, dtype('float32'))
    """
    keys = Keys(key_added)
    check_anndata(adata, copy=copy, backed=True)
    require_encoder(model, "Reading attention")
    model.check_prediction_args(layer=layer)
    if n_cells is not None and n_cells < 1:
        raise ValueError(f"`n_cells` must be a positive number of cells or None, not {n_cells}.")
    if top_k is not None and (not isinstance(top_k, int | np.integer) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"`top_k={top_k!r}` must be a positive number of genes per row, or None to keep dense.")
    if not 0 <= min_detection <= 1:
        raise ValueError(f"`min_detection={min_detection!r}` must be a fraction of cells, from 0 to 1.")
    groups = _groups(adata, groupby, max_groups=max_groups, key_of=keys.attention_group) if groupby is not None else {}
    chosen, group_cells = _subsample(adata.n_obs, groups, n_cells, seed)
    _warn_small_groups(group_cells, groupby)

    with model.prepare_query(adata, copy=copy) as query:
        kwargs = {"layer": layer, "keep_heads": keep_heads, "batch_size": batch_size}
        overall = model.get_attention(query.adata, indices=chosen, **kwargs)
        per_group = {g: model.get_attention(query.adata, indices=cells, **kwargs) for g, cells in group_cells.items()}
        detected = _detected(query, chosen, batch_size)
        group_detected = {g: _detected(query, cells, batch_size) for g, cells in group_cells.items()}
    if top_k is not None and not keep_heads:
        per_group = {g: _top_k(matrix, top_k) for g, matrix in per_group.items()}
    received = (overall.mean(axis=-1) if keep_heads else overall).sum(axis=0).astype(np.float32)
    received[detected < min_detection] = np.nan
    record = {
        "params": params_record(
            groupby=groupby,
            groups=list(groups) or None,
            layer=layer,
            n_cells=n_cells,
            keep_heads=keep_heads,
            top_k=top_k if not keep_heads else None,
            min_detection=min_detection,
            seed=seed,
            model=type(model).__name__,
        )
    }
    if groups:
        record["groups"] = {
            "label": list(groups),
            "key": [keys.attention_group(g) for g in groups],
            "n_cells": [int(cells.size) for cells in group_cells.values()],
        }

    adata = adata.copy() if copy else adata
    query.write_binning(adata)
    adata.varp[keys.attention] = overall
    for group, matrix in per_group.items():
        adata.varp[keys.attention_group(group)] = matrix
    adata.var[keys.attention_received] = received
    adata.var[keys.attention_detected] = detected
    if groups:
        adata.varm[keys.attention_detected] = pd.DataFrame(
            {safe_name(g): values for g, values in group_detected.items()}, index=adata.var_names.copy()
        )
    elif keys.attention_detected in adata.varm:  # from an earlier call with groupby: it would not match
        del adata.varm[keys.attention_detected]
    adata.uns[keys.attention] = record
    written = ", ".join(repr(keys.attention_group(g)) for g in groups)
    n_ranked = int(np.isfinite(received).sum())
    logg.info(
        f"added\n    'varp[{keys.attention!r}]', attention GRN"
        + (f"\n    varp {written}, attention GRN per group" if groups else "")
        + f"\n    'var[{keys.attention_received!r}]', attention received per gene "
        f"({n_ranked} of {adata.n_vars} genes expressed in >= {min_detection:.0%} of cells ranked)"
        + f"\n    'var[{keys.attention_detected!r}]', fraction of cells expressing each gene"
        + (f"\n    'varm[{keys.attention_detected!r}]', the same per group" if groups else "")
    )
    return adata if copy else None


def _groups(adata: ad.AnnData, groupby: str, *, max_groups: int, key_of) -> dict[str, np.ndarray]:
    """Cell indices of each group of ``adata.obs[groupby]``, checked for what ``varp`` can hold.

    ``key_of`` gives the ``varp`` key of a group's label (e.g. :meth:`~bioformers._keys.Keys.attention_group`).
    """
    check_obs_key(adata, groupby, argument="groupby")
    labels = adata.obs[groupby]
    categories = labels.cat.categories if isinstance(labels.dtype, pd.CategoricalDtype) else pd.unique(labels)
    check_n_groups(
        len(categories),
        argument="groupby",
        key=groupby,
        limit=max_groups,
        limit_argument="max_groups",
        why=f"each group is a pass over its cells and a {adata.n_vars} x {adata.n_vars} matrix in `adata.varp`",
    )
    groups, by_key = {}, {}
    for category in categories:
        name = str(category)
        if not safe_name(name):
            raise ValueError(
                f"Group {name!r} of `adata.obs[{groupby!r}]` has no letter or digit to name its key "
                f"`varp[{key_of(name)!r}]`. Rename the category."
            )
        key = key_of(name)
        if key in by_key:
            raise ValueError(
                f"Groups {by_key[key]!r} and {name!r} of `adata.obs[{groupby!r}]` would both be stored as "
                f"`varp[{key!r}]` (keys keep letters, digits and '_'; other characters become '_'). "
                "Rename one of the categories."
            )
        by_key[key] = name
        cells = np.flatnonzero((labels == category).to_numpy())
        if cells.size == 0:
            raise ValueError(
                f"Group {name!r} of `adata.obs[{groupby!r}]` has no cells. Drop unused categories with "
                f"`adata.obs[{groupby!r}] = adata.obs[{groupby!r}].cat.remove_unused_categories()`."
            )
        groups[name] = cells
    return groups


def _subsample(
    n_obs: int, groups: dict[str, np.ndarray], n_cells: int | None, seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """At most ``n_cells`` sorted random cells of all ``n_obs`` cells and of each group (``None``: all)."""
    rng = np.random.default_rng(seed)

    def subsample(cells: np.ndarray) -> np.ndarray:
        return cells if n_cells is None or cells.size <= n_cells else np.sort(rng.choice(cells, n_cells, replace=False))

    return subsample(np.arange(n_obs)), {group: subsample(cells) for group, cells in groups.items()}


def _warn_small_groups(group_cells: dict[str, np.ndarray], groupby: str | None) -> None:
    """Warn about groups read from fewer than :data:`MIN_GROUP_CELLS` cells."""
    small = {g: cells.size for g, cells in group_cells.items() if cells.size < MIN_GROUP_CELLS}
    if small:
        named = ", ".join(f"{g!r} ({n} cell{'s' if n != 1 else ''})" for g, n in small.items())
        warnings.warn(
            f"Groups of `adata.obs[{groupby!r}]` with fewer than {MIN_GROUP_CELLS} cells: {named}. Their "
            "GRNs average too few cells to tell a network from noise; merge or drop these groups, or read their "
            "matrices with care.",
            UserWarning,
            stacklevel=3,
        )


def _detected(query, cells: np.ndarray, batch_size: int | None) -> np.ndarray:
    """Fraction of ``cells`` in which each of the model's genes is expressed (token above 0), ``float32``."""
    count = None
    for bins in query.batches(cells, batch_size=batch_size or 128):
        expressed = (bins > 0).sum(dim=0).cpu().numpy().astype(np.int64)
        count = expressed if count is None else count + expressed
    return (count / max(cells.size, 1)).astype(np.float32)


def _top_k(matrix: np.ndarray, k: int) -> sparse.csr_matrix:
    """The ``k`` largest positive entries of every row of ``matrix``, as a ``float32`` CSR matrix."""
    n_rows, n_cols = matrix.shape
    if k < n_cols:
        columns = np.argpartition(-matrix, k - 1, axis=1)[:, :k]
    else:
        columns = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    values = np.take_along_axis(matrix, columns, axis=1)
    rows = np.broadcast_to(np.arange(n_rows)[:, None], columns.shape)
    keep = values > 0
    top = sparse.coo_matrix((values[keep], (rows[keep], columns[keep])), shape=matrix.shape, dtype=np.float32)
    return top.tocsr()


@doc_params(**DOC_WRITES, view=DOC_VIEW, model=DOC_MODEL)
def gene_embeddings(
    adata: ad.AnnData, model: BioFormer, *, key_added: str = DEFAULT_KEY, copy: bool = False
) -> ad.AnnData | None:
    """Write the model's learned gene identity embeddings.

    Parameters
    ----------
    adata
        AnnData with exactly the model's genes, in the model's order (its cells are not read; it may
        have none, and may be backed).
        {view}
    {model}
    {key_added_copy}

    Returns
    -------
    {returns_copy}

        ``adata.varm['bioformers_genes']`` : :class:`~numpy.ndarray` ``float32`` (n_vars, n_hidden)
            The learned identity embedding of every gene.

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> bf.tl.gene_embeddings(adata, model)
    >>> adata.varm["bioformers_genes"].shape
    (50, 16)
    """
    check_anndata(adata, copy=copy, backed=True, cells=False)
    model.check_genes(adata)
    embedding = _gene_embedding(model)
    adata = adata.copy() if copy else adata
    adata.varm[Keys(key_added).gene_embedding] = embedding
    logg.info(f"added\n    'varm[{Keys(key_added).gene_embedding!r}]', gene embeddings")
    return adata if copy else None


def _gene_embedding(model: BioFormer) -> np.ndarray:
    """A copy of the model's gene identity embeddings, ``float32`` (n_genes, n_hidden).

    A copy: on CPU the tensor's array is the weight itself, which the AnnData must not share.
    """
    return model.module.gene_embedding.weight.detach().float().cpu().numpy().copy()


@doc_params(**DOC_WRITES, view=DOC_VIEW)
def gene_programs(
    adata: ad.AnnData,
    model: BioFormer | None = None,
    *,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    min_size: int = 5,
    seed: int = 0,
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
) -> ad.AnnData | None:
    """Gene-embedding GRN (cosine similarity) and gene programs (Leiden clusters of genes).

    Genes are clustered with Scanpy's Leiden on a cosine kNN graph of their embeddings; clusters
    smaller than ``min_size`` are labelled ``"unassigned"``. Programs are numbered by size.

    Parameters
    ----------
    adata
        AnnData with gene embeddings in ``varm`` (from :func:`bioformers.tl.gene_embeddings`), or the model's genes
        when ``model`` is given (its cells are not read; it may have none, and may be backed).
        {view}
        Everything is computed before anything is written.
    model
        If given, gene embeddings are (re)written from it first.
    resolution
        Leiden resolution: higher gives more, smaller programs.
    n_neighbors
        Neighbours per gene in the kNN graph.
    min_size
        Smallest program kept.
    seed
        Random state of the neighbour search and Leiden.
    {key_added_copy}

    Returns
    -------
    {returns_copy}

        ``adata.varp['bioformers_similarity']`` : :class:`~numpy.ndarray` ``float32`` (n_vars, n_vars)
            Cosine similarity of the gene embeddings (the gene-embedding GRN).
        ``adata.var['bioformers_program']`` : categorical
            Program of every gene: ``"0"`` (the largest), ``"1"``, ..., and ``"unassigned"``.
        ``adata.uns['bioformers_program']`` : :class:`dict`
            ``params``: the arguments and ``n_programs``.
        ``adata.varm['bioformers_genes']`` : :class:`~numpy.ndarray` ``float32`` (n_vars, n_hidden)
            The gene embeddings, as :func:`bioformers.tl.gene_embeddings` writes them; only with ``model``.

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> bf.tl.gene_programs(adata, model, n_neighbors=5, min_size=3)
    >>> adata.varp["bioformers_similarity"].shape
    (50, 50)
    >>> int(adata.var["bioformers_program"].value_counts().sum())
    50
    """
    keys = Keys(key_added)
    check_anndata(adata, copy=copy, backed=True, cells=False)
    if model is not None:
        model.check_genes(adata)
    elif keys.gene_embedding not in adata.varm:
        raise KeyError(
            f"`adata.varm[{keys.gene_embedding!r}]` not found (keys: {shown(adata.varm.keys())})."
            f"{did_you_mean(keys.gene_embedding, adata.varm.keys())} Run `bf.tl.gene_embeddings(adata, model)` "
            "first, or pass `model=`."
        )
    if min_size < 1 or n_neighbors < 2 or resolution <= 0:
        raise ValueError("Pass `min_size >= 1`, `n_neighbors >= 2` and `resolution > 0`.")
    if adata.n_vars <= n_neighbors:
        raise ValueError(f"{adata.n_vars} genes are too few for `n_neighbors={n_neighbors}`; lower `n_neighbors`.")
    embedding = (
        _gene_embedding(model) if model is not None else np.asarray(adata.varm[keys.gene_embedding], dtype=np.float32)
    )
    if not np.isfinite(embedding).all():
        source = "The model's gene embeddings" if model is not None else f"`adata.varm[{keys.gene_embedding!r}]`"
        raise ValueError(
            f"{source} hold NaN or infinite values: the model diverged, or the array was changed. Use a model whose "
            "training loss stayed finite, and write its embeddings with `bf.tl.gene_embeddings(adata, model)`."
        )
    unit = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    similarity = (unit @ unit.T).astype(np.float32)

    # genes as observations of a throwaway AnnData: the caller's object is written only at the end
    work = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(adata.n_vars).astype(str)), obsm={"rep": embedding})
    sc.pp.neighbors(work, n_neighbors=n_neighbors, use_rep="rep", metric="cosine", random_state=seed)
    sc.tl.leiden(
        work, resolution=resolution, flavor="igraph", n_iterations=2, directed=False, random_state=seed, key_added="c"
    )
    clusters = work.obs["c"].to_numpy()
    names, sizes = np.unique(clusters, return_counts=True)
    by_size = sorted(zip(names, sizes, strict=True), key=lambda t: (-t[1], t[0]))
    kept = [name for name, size in by_size if size >= min_size]
    rename = {name: str(i) for i, name in enumerate(kept)}
    labels = [rename.get(c, UNASSIGNED) for c in clusters]
    categories = [*rename.values(), *([UNASSIGNED] if UNASSIGNED in labels else [])]

    adata = adata.copy() if copy else adata
    if model is not None:
        adata.varm[keys.gene_embedding] = embedding
    adata.varp[keys.similarity] = similarity
    adata.var[keys.program] = pd.Categorical(labels, categories=categories)
    adata.uns[keys.program] = {
        "params": params_record(
            resolution=resolution, n_neighbors=n_neighbors, min_size=min_size, seed=seed, n_programs=len(kept)
        )
    }
    logg.info(
        f"added\n    'varp[{keys.similarity!r}]', gene-embedding similarity\n"
        f"    'var[{keys.program!r}]', {len(kept)} gene programs"
    )
    return adata if copy else None
