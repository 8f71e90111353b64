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
from ._genes import MAX_GROUPS, _groups, _subsample, _warn_small_groups
from ._models import require_encoder

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..model import BioFormer

#: The readouts of :func:`grn`.
METHODS = ("knockout", "attention", "correlation")
#: Cells read by default (per group): the knockout readout decodes each cell once per gene it expresses.
DEFAULT_N_CELLS = 500
#: Genes knocked out to estimate the shift shared by every knockout, and how often they must be expressed.
N_BACKGROUND, BACKGROUND_DETECTION = 50, 0.1


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
      regulator, its bin is set to 0 and the cell is decoded again by the count decoder; the effect
      on a target is the mean drop of its normalised expression (counts per the training
      ``target_sum``; :meth:`bioformers.BioFormer.get_knockout_effects`). Knocking out *any*
      expressed gene shifts the decoded cell in much the same direction, so each row then loses
      its projection on that shared shift, the mean effect of knocking out 50 random genes
      expressed in at least 10% of the read cells: what is left is what this regulator does that
      others do not. Signed: positive when the regulator raises the target in the model, negative
      when it lowers it. Directed, unlike correlation; an effect the model learned from
      co-variation across cells, not a measured causal one (see the benchmark in the method
      page: it still ranks targets largely by their expression).
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
        The knockout readout decodes each cell once per regulator (and background gene) it
        expresses, so its time grows with ``n_cells`` times the genes a cell expresses.
    regulators
        Genes whose rows are computed (``None``: every gene); the other rows are 0. With
        ``"knockout"`` this is what sets the time: e.g. only the transcription factors.
    max_groups
        Most groups allowed in ``groupby``: each is a dense ``n_vars x n_vars`` matrix in ``varp``.
    {batch_size}
    seed
        Seed of the cell subsample and of the knockout readout's background genes.
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
        if method == "knockout":
            model.check_count_decoder("Knockout effects (`method='knockout'`)")
    if n_cells is not None and (isinstance(n_cells, bool) or not isinstance(n_cells, int | np.integer) or n_cells < 2):
        raise ValueError(f"`n_cells` must be a whole number of cells, at least 2, or None for all; not {n_cells!r}.")
    counts = get_matrix(adata, layer)  # a clear error for a missing layer
    rows = _regulator_rows(regulators, genes)
    groups = _groups(adata, groupby, max_groups=max_groups, key_of=keys.grn_group) if groupby is not None else {}
    chosen, group_cells = _subsample(adata.n_obs, groups, n_cells, seed)
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
            matrices = {
                g: _model_grn(model, query.adata, method, cells, rows, batch_size, seed) for g, cells in read.items()
            }
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


def _model_grn(
    model: BioFormer, adata: ad.AnnData, method: str, cells: np.ndarray, rows: np.ndarray, batch_size, seed: int
) -> np.ndarray:
    if method == "knockout":
        background = _background_genes(model, adata, cells, seed)
        computed = np.union1d(rows, background)
        effects = model.get_knockout_effects(adata, indices=cells, regulators=computed, batch_size=batch_size)
        matrix = _without_shared_shift(effects, rows, background)
    else:
        n_layers = len(model.module.encoder.blocks)
        matrix = 0
        for layer in range(n_layers):
            weights = model.get_attention(adata, indices=cells, layer=layer, keep_heads=True, batch_size=batch_size)
            # what every target pays the key gene on average is the key's, not the pair's
            matrix = matrix + (weights - weights.mean(axis=0, keepdims=True)).mean(axis=-1) / n_layers
        matrix = matrix.T  # query (target) x key (regulator) -> regulator x target
    return _keep_rows(matrix, rows)


def _background_genes(model: BioFormer, adata: ad.AnnData, cells: np.ndarray, seed: int) -> np.ndarray:
    """:data:`N_BACKGROUND` random genes expressed in at least :data:`BACKGROUND_DETECTION` of ``cells``.

    Their knockouts estimate the shift that removing any expressed gene causes. Fewer qualifying
    genes: the most often expressed ones.
    """
    expressed = np.zeros(model.genes_.size)
    for bins in model.binned_batches(adata, cells, 256):
        expressed += (bins > 0).sum(dim=0).cpu().numpy()
    detected = expressed / max(cells.size, 1)
    common = np.flatnonzero(detected >= BACKGROUND_DETECTION)
    if common.size <= N_BACKGROUND:
        return np.sort(np.argsort(-detected, kind="stable")[: max(common.size, min(N_BACKGROUND, detected.size))])
    return np.sort(np.random.default_rng(seed).choice(common, N_BACKGROUND, replace=False))


def _without_shared_shift(effects: np.ndarray, rows: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Each row of ``rows`` minus its projection on the mean knockout effect of the ``background`` genes.

    Knocking out any expressed gene moves the decoded cell in much the same direction (one gene fewer
    in the cell), scaled by how much the gene weighs in it; what is left is the regulator's own effect.
    A background gene's own row is left out of the mean it is corrected with.
    """
    effects = effects.astype(np.float64)
    active = background[np.abs(effects[background]).sum(axis=1) > 0]  # genes no read cell expresses have no row
    total = effects[active].sum(axis=0)
    out = effects.copy()
    for row in rows:
        own = row in active
        shared = (total - effects[row]) if own else total
        shared = shared / max(active.size - own, 1)
        shared[row] = 0  # the regulator's own column is not a target
        norm = shared @ shared
        if norm > 0:
            out[row] = effects[row] - (effects[row] @ shared / norm) * shared
    return out
