"""One gene regulatory network tool, several readouts: ``bf.tl.grn``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
import pandas as pd
from scanpy import logging as logg

from .._docs import DOC_ADATA, DOC_BATCH_SIZE, DOC_BINNED_WRITTEN, DOC_WRITES, doc_params
from .._keys import DEFAULT_KEY, Keys
from .._record import params_record
from .._validation import check_anndata, did_you_mean, get_matrix
from ..data import log_normalize
from ..metrics import correlation_grn
from ._genes import MAX_GROUPS, _groups, _warn_small_groups
from ._models import require_encoder

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..model import BioFormer

#: The readouts of :func:`grn`.
METHODS = ("knockout", "attention", "correlation")
#: Cells read by default (per group): the knockout readout decodes each cell once per gene it expresses.
DEFAULT_N_CELLS = 500


@doc_params(**DOC_WRITES, adata=DOC_ADATA, batch_size=DOC_BATCH_SIZE, binned_written=DOC_BINNED_WRITTEN)
def grn(
    adata: ad.AnnData,
    model: BioFormer | None = None,
    *,
    method: Literal["knockout", "attention", "correlation"] = "knockout",
    groupby: str | None = None,
    layer: str | None = None,
    n_cells: int | None = DEFAULT_N_CELLS,
    regulators: Sequence[str] | None = None,
    max_groups: int = MAX_GROUPS,
    batch_size: int | None = None,
    seed: int = 0,
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
) -> ad.AnnData | None:
    """Gene regulatory network: a genes x genes matrix, rows = regulators, columns = targets.

    Readouts (``method``):

    * ``"knockout"``: in-silico knockout through the model. In every read cell that expresses a
      regulator, its bin is set to 0 and the cell is decoded again by the count decoder; the weight
      of a target is the mean drop of its log1p(normalised expression)
      (:meth:`bioformers.BioFormer.get_knockout_effects`). Signed: positive when the regulator
      raises the target in the model, negative when it lowers it. Directed, unlike correlation; an
      effect learned from co-variation across cells, not a measured causal one.
    * ``"attention"``: attention between genes, every layer and head, each corrected for the
      attention every gene pays the regulator on average (genes that all genes attend to would
      otherwise rank first in every row), then averaged; read as "a target attends to its
      regulator". Not signed.
    * ``"correlation"``: Pearson r of the log-normalised counts (``normalize_total`` to 1e4,
      ``log1p``) of the read cells; symmetric and signed; needs no model. A baseline to compare with.

    Rank edges by strength with ``np.abs``, e.g. ``bf.metrics.grn_edges(np.abs(adata.varp["bioformers_grn"]),
    adata.var_names)``.

    Everything is checked before anything is written, and results are written only once all are
    computed.

    Parameters
    ----------
    {adata}
        Its genes must be exactly the model's, in the model's order (``adata[:, model.genes_]``).
    model
        A trained :class:`~bioformers.BioFormer`; ``None`` only with ``method="correlation"``.
    method
        The readout, above.
    groupby
        Column of ``adata.obs``; also write one matrix per group (keys made from the labels as in
        :func:`bioformers.tl.attention_grn`). Each group is read on its own cells.
    layer
        Layer of ``adata`` with raw counts (``None``: ``X``): binned for the model if the binned
        layer is missing, and the counts ``"correlation"`` reads.
    n_cells
        Read at most this many randomly chosen cells (per group with ``groupby``); ``None``: all.
        The knockout readout decodes each cell once per regulator it expresses, so its time grows
        with ``n_cells`` times the genes a cell expresses.
    regulators
        Genes whose rows are computed (``None``: every gene); the other rows are 0. With
        ``"knockout"`` this is what sets the time: e.g. only the transcription factors.
    max_groups
        Most groups allowed in ``groupby``: each is a dense ``n_vars x n_vars`` matrix in ``varp``.
    {batch_size}
    seed
        Seed of the cell subsample.
    {key_added_copy}

    Returns
    -------
    {returns_copy}

        ``adata.varp['bioformers_grn']`` : :class:`~numpy.ndarray` ``float32`` (n_vars, n_vars)
            Row = regulator, column = target; the diagonal is 0.
        ``adata.varp['bioformers_grn_<group>']`` : :class:`~numpy.ndarray` ``float32`` (n_vars, n_vars)
            The same on the cells of each group of ``groupby``.
        ``adata.uns['bioformers_grn']`` : :class:`dict`
            ``params``: the arguments (``regulators`` as their number), ``signed``, and the model
            class; with ``groupby``, ``groups``: lists ``label``, ``key`` and ``n_cells``.
        {binned_written}

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=30)
    >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> bf.tl.grn(adata, model, n_cells=50)
    >>> adata.varp["bioformers_grn"].shape
    (30, 30)
    >>> adata.uns["bioformers_grn"]["params"]["method"]
    'knockout'
    """
    keys = Keys(key_added)
    check_anndata(adata, copy=copy, backed=True)
    if method not in METHODS:
        raise ValueError(
            f"`method` must be one of {', '.join(map(repr, METHODS))}, not {method!r}.{did_you_mean(method, METHODS)}"
        )
    if model is None:
        if method != "correlation":
            raise ValueError(f"`method={method!r}` reads a model: pass `model=` (e.g. `bf.tl.pretrain(adata)`).")
        genes = adata.var_names
    else:
        require_encoder(model, "Inferring a GRN")
        model.check_genes(adata)
        genes = pd.Index(model.genes_)
        if method == "knockout" and model.module.count_head is None:
            raise ValueError(
                "`method='knockout'` decodes cells with the count decoder, which this model lacks (trained with "
                "`count_weight=0` or without raw counts). Use `method='attention'`, or pretrain with the default "
                "`count_weight`."
            )
    if n_cells is not None and (isinstance(n_cells, bool) or not isinstance(n_cells, int | np.integer) or n_cells < 2):
        raise ValueError(f"`n_cells` must be a whole number of cells, at least 2, or None for all; not {n_cells!r}.")
    counts = get_matrix(adata, layer)  # a clear error for a missing layer
    rows = _regulator_rows(regulators, genes)
    groups = _groups(adata, groupby, max_groups=max_groups, key_of=keys.grn_group) if groupby is not None else {}
    rng = np.random.default_rng(seed)

    def subsample(cells: np.ndarray) -> np.ndarray:
        return cells if n_cells is None or cells.size <= n_cells else np.sort(rng.choice(cells, n_cells, replace=False))

    chosen = subsample(np.arange(adata.n_obs))
    group_cells = {group: subsample(cells) for group, cells in groups.items()}
    single = [g for g, cells in group_cells.items() if cells.size < 2]
    if single:
        raise ValueError(
            f"Group(s) {single[:5]} of `adata.obs[{groupby!r}]` have a single cell: a GRN needs at least 2. "
            "Merge or drop them first."
        )
    _warn_small_groups(group_cells, groupby)
    start = logg.info(
        f"inferring a GRN ({method}) from {chosen.size} cells" + (f" and {len(groups)} groups" if groups else "")
    )

    if method == "correlation":
        read = {None: chosen} | group_cells
        matrices = {g: _correlation(counts, cells, rows) for g, cells in read.items()}
        query = None
    else:
        with model.prepare_query(adata, layer=layer, copy=copy) as query:
            read = {None: chosen} | group_cells
            matrices = {g: _model_grn(model, query.adata, method, cells, rows, batch_size) for g, cells in read.items()}
    overall = matrices.pop(None)
    record = {
        "params": params_record(
            method=method,
            groupby=groupby,
            groups=list(groups) or None,
            layer=layer,
            n_cells=n_cells,
            regulators=None if regulators is None else len(rows),
            signed=method != "attention",
            seed=seed,
            model=None if model is None else type(model).__name__,
        )
    }
    if groups:
        record["groups"] = {
            "label": list(groups),
            "key": [keys.grn_group(g) for g in groups],
            "n_cells": [int(cells.size) for cells in group_cells.values()],
        }
    adata = adata.copy() if copy else adata
    if query is not None:
        query.write_binning(adata)
    adata.varp[keys.grn] = overall
    for group, matrix in matrices.items():
        adata.varp[keys.grn_group(group)] = matrix
    adata.uns[keys.grn] = record
    written = "".join(f"\n    'varp[{keys.grn_group(g)!r}]'" for g in groups)
    logg.info(f"    finished\nadded\n    'varp[{keys.grn!r}]', GRN (rows regulate columns){written}", time=start)
    return adata if copy else None


def _regulator_rows(regulators: Sequence[str] | None, genes: pd.Index) -> np.ndarray:
    """Indices of ``regulators`` among ``genes`` (all when ``None``); a KeyError names unknown ones."""
    if regulators is None:
        return np.arange(genes.size)
    names = [regulators] if isinstance(regulators, str) else list(dict.fromkeys(regulators))
    index = genes.get_indexer(names)
    missing = [name for name, i in zip(names, index, strict=True) if i < 0]
    if missing:
        raise KeyError(
            f"`regulators` not among the genes: {missing[:5]}{' ...' if len(missing) > 5 else ''}."
            f"{did_you_mean(str(missing[0]), genes)} Pass genes of `adata.var_names`."
        )
    if not names:
        raise ValueError("`regulators` is empty: pass at least one gene, or None for every gene.")
    return index


def _keep_rows(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``matrix`` as ``float32`` with rows outside ``rows`` and the diagonal set to 0."""
    out = np.zeros(matrix.shape, dtype=np.float32)
    out[rows] = matrix[rows]
    np.fill_diagonal(out, 0)
    return out


def _correlation(counts, cells: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return _keep_rows(correlation_grn(log_normalize(counts[cells])), rows)


def _model_grn(model: BioFormer, adata: ad.AnnData, method: str, cells: np.ndarray, rows: np.ndarray, batch_size):
    if method == "knockout":
        matrix = model.get_knockout_effects(adata, indices=cells, regulators=rows, batch_size=batch_size)
    else:
        n_layers = len(model.module.encoder.blocks)
        matrix = 0
        for layer in range(n_layers):
            weights = model.get_attention(adata, indices=cells, layer=layer, keep_heads=True, batch_size=batch_size)
            # what every target pays the key gene on average is the key's, not the pair's
            matrix = matrix + (weights - weights.mean(axis=0, keepdims=True)).mean(axis=-1) / n_layers
        matrix = matrix.T  # query (target) x key (regulator) -> regulator x target
    return _keep_rows(matrix, rows)
