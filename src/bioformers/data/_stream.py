"""Cells read from (backed) AnnData a chunk at a time and binned like the training data.

scvi-tools' data loader reads the registered binned layer, which must be in memory. A backed
AnnData (``read_h5ad(path, backed="r")``) keeps only ``X`` on disk, and a binned copy of it would
be as large as the data. So cells are read here a chunk of rows at a time, binned with the
model's recorded settings (:func:`bioformers.pp.bin` arithmetic, row by row, so chunking never
changes a bin) and handed out as dense minibatches. At most one chunk of counts and its bins
(both sparse) and one dense minibatch are held at once, whatever the number of cells.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
from anndata.abc import CSCDataset
from scipy import sparse

from .._validation import check_counts, get_matrix
from ..pp._counts import cell_totals
from ..pp._tokens import BINNING_ARGS, bin_matrix

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from anndata import AnnData

    from ..pp._genes import GeneAlignment

#: Cells read (and binned) at a time when streaming.
DEFAULT_CHUNK_SIZE = 4096


def binned_batches(
    adata: AnnData,
    *,
    binning: dict,
    binned_layer: str,
    counts_layer: str | None = None,
    indices: Sequence[int] | None = None,
    batch_size: int,
    chunk_size: int | None = None,
    genes: GeneAlignment | None = None,
) -> Iterator[np.ndarray]:
    """Dense ``float32`` minibatches ``(cells, genes)`` of bin indices, in the order of ``indices``.

    Reads ``adata.layers[binned_layer]`` when the AnnData has it; otherwise the counts
    (``adata.X`` or ``adata.layers[counts_layer]``), each chunk checked (as :func:`bioformers.pp.bin`
    checks counts) and binned with ``binning``. Value binning scales cells to ``binning["target_sum"]``;
    a record without one (models trained before it was recorded) gets the mean total count of all
    cells of ``adata``, from a first pass over them, which is what binning the AnnData whole uses.

    The source is checked when this is called; counts are checked chunk by chunk as they are read,
    so a bad cell raises when its chunk is reached.

    With ``genes``, each chunk's columns are first put in the model's gene order (model genes the
    AnnData lacks as zeros, genes the model does not know dropped), so counts are checked and
    cells' totals summed over the model's genes only: the genes the training data was binned on.

    Parameters
    ----------
    adata
        AnnData, in memory or backed. For a view of a backed AnnData, anndata reads the view's
        ``X`` into memory whole.
    binning
        ``adata.uns["<key>_binned"]["params"]`` of the training data (``model.binning_``).
    binned_layer
        Layer of binned values, read as it is when present.
    counts_layer
        Layer of counts to bin when ``binned_layer`` is absent; `None` means ``adata.X``.
    indices
        Cells to read; `None` means all, in order.
    batch_size
        Cells per minibatch: chunks hold a whole number of minibatches, so every minibatch but the
        last has exactly ``batch_size`` cells, as from scvi-tools' loader.
    chunk_size
        Cells read and binned at a time, rounded down to whole minibatches (at least one);
        `None` means ``DEFAULT_CHUNK_SIZE`` (4,096).
    genes
        How the AnnData's genes map to the model's (:meth:`bioformers.BioFormer.align_genes`); `None`:
        the AnnData has exactly the model's genes.

    Returns
    -------
    :class:`~collections.abc.Iterator` of :class:`~numpy.ndarray`
        ``float32`` minibatches ``(cells, n_model_genes)``, each ``batch_size`` cells but the last.
        Nothing is written into ``adata``.

    Examples
    --------
    >>> import os, tempfile
    >>> import anndata as ad
    >>> import numpy as np
    >>> import bioformers as bf
    >>> path = os.path.join(tempfile.mkdtemp(), "cells.h5ad")
    >>> bf.datasets.synthetic(n_obs=100, n_vars=30).write_h5ad(path)
    >>> adata = ad.read_h5ad(path, backed="r")
    >>> binning = {"method": "value", "target_sum": 1000.0}
    >>> batches = list(bf.data.binned_batches(adata, binning=binning, binned_layer="bins", batch_size=32))
    >>> [batch.shape for batch in batches]
    [(32, 30), (32, 30), (32, 30), (4, 30)]

    The same bins as binning the AnnData in memory:

    >>> memory = ad.read_h5ad(path)
    >>> bf.pp.bin(memory, target_sum=1000.0)
    >>> bool(np.array_equal(np.concatenate(batches), memory.layers["bioformers_binned"].toarray()))
    True
    """
    if binned_layer in adata.layers:
        source, where, binning = adata.layers[binned_layer], f"adata.layers[{binned_layer!r}]", None
    else:
        if not binning:
            raise KeyError(
                f"The AnnData lacks the binned values the model reads (`layers[{binned_layer!r}]`), and the model "
                "has no record of how its training data was binned. Bin the AnnData the way the training data was "
                "binned into that layer first."
            )
        source = get_matrix(adata, counts_layer)
        where = "adata.X" if counts_layer is None else f"adata.layers[{counts_layer!r}]"
        binning = {k: binning[k] for k in BINNING_ARGS if k in binning}
    check_row_access(source, where)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive number of cells or None, not {chunk_size}.")
    rows = max((chunk_size or DEFAULT_CHUNK_SIZE) // batch_size, 1) * batch_size
    if genes is not None and genes.is_identity:
        genes = None
    return _batches(adata.n_obs, source, where, binning, indices, batch_size, rows, genes)


def check_row_access(source, where: str) -> None:
    """Raise if reading a few cells of ``source`` would read all of it (a backed CSC matrix)."""
    if isinstance(source, CSCDataset):
        raise ValueError(
            f"{where} is stored on disk as CSC (gene by gene), so reading cells would read the whole matrix. "
            "Store it as CSR: `adata = anndata.read_h5ad(path); adata.X = scipy.sparse.csr_matrix(adata.X); "
            "adata.write_h5ad(path)` (or in chunks of cells for data larger than memory)."
        )


def _batches(n_obs, source, where, binning, indices, batch_size, rows, genes) -> Iterator[np.ndarray]:
    scaled = binning is not None and binning.get("method", "value") == "value" and binning.get("normalize", True)
    if scaled and "target_sum" not in binning:
        totals = [cell_totals(_aligned(block, genes)) for _, block in _row_blocks(source, n_obs, None, rows)]
        binning["target_sum"] = np.concatenate(totals).mean()
    for cells, block in _row_blocks(source, n_obs, indices, rows):
        raw, block = block, _aligned(block, genes)
        if binning is not None:
            part = f"{where} ({cells}" + (", the model's genes)" if genes is not None else ")")
            if genes is not None:
                genes.check_cells(raw, block, where=part)
            check_counts(block, where=part, require_integer=bool(scaled))
            block, _ = bin_matrix(block, **binning)
        for start in range(0, block.shape[0], batch_size):
            yield block[start : start + batch_size].toarray().astype(np.float32)
        del block
        _release_freed_memory()


def _aligned(block: sparse.csr_matrix, genes: GeneAlignment | None) -> sparse.csr_matrix:
    return block if genes is None else genes.take(block)


def _release_freed_memory() -> None:
    """Return the memory freed by the last chunk to the operating system (glibc; a no-op elsewhere).

    glibc keeps freed heap memory for reuse; the chunks' arrays, freed between the network's own
    allocations, leave it fragmented, and the resident set grew with the number of chunks read:
    +1.3 GiB after 100k cells without this, +0.35 GiB with it (``benchmarks/embed_large.py``
    settings, measured at the peak; the memory in use stayed flat either way).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return None


def _row_blocks(source, n_obs: int, indices, rows: int) -> Iterator[tuple[str, sparse.csr_matrix]]:
    """``(description, CSR block)`` of the chosen rows, ``rows`` at a time, read from memory or disk."""
    if indices is None:
        for start in range(0, n_obs, rows):
            stop = min(start + rows, n_obs)
            yield f"cells {start} to {stop - 1}", sparse.csr_matrix(source[start:stop])
        return
    indices = np.asarray(indices)
    for start in range(0, indices.size, rows):
        # h5py reads only increasing, unique rows; read those and put them in the order asked for
        unique, inverse = np.unique(indices[start : start + rows], return_inverse=True)
        yield f"indices {start} to {start + inverse.size - 1}", sparse.csr_matrix(source[unique])[inverse]
