"""Training from disk: cells of a backed AnnData read in shuffled chunks, binned on the fly, one share per process.

:func:`~bioformers.data.binned_batches` streams cells in a fixed order for inference. Training needs
more: a new random order every epoch that still reads the file sequentially, the raw counts and
batch codes next to the bins (the count objective and the batch token read them), and, under DDP,
a disjoint share of the cells for every process with the same number of minibatches in each (DDP
steps all processes together; one with a batch more would wait forever).

The order is that of out-of-core loaders: the cells are cut into contiguous chunks, the chunks are
put in random order, and the cells of ``buffer_chunks`` consecutive chunks are shuffled together
before they are cut into minibatches. Each buffer is read as a few contiguous row ranges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from scipy import sparse
from scvi import REGISTRY_KEYS

from .._keys import COUNTS_KEY
from .._validation import check_counts
from ..pp._tokens import BINNING_ARGS, bin_matrix
from ._stream import _release_freed_memory

if TYPE_CHECKING:
    from anndata import AnnData

    from ..pp._genes import GeneAlignment

#: Chunks whose cells are shuffled together.
DEFAULT_BUFFER_CHUNKS = 8


def epoch_order(n_obs: int, *, chunk_size: int, buffer_chunks: int, seed: int) -> np.ndarray:
    """The order of all cells in one epoch: chunks in random order, cells shuffled within buffers of chunks.

    Parameters
    ----------
    n_obs
        Number of cells.
    chunk_size
        Contiguous cells read together.
    buffer_chunks
        Consecutive chunks (in the shuffled order) whose cells are shuffled together.
    seed
        Seed of this epoch's order (the run's seed plus the epoch).

    Returns
    -------
    :class:`~numpy.ndarray`
        A permutation of ``range(n_obs)``.

    Examples
    --------
    >>> from bioformers.data import epoch_order
    >>> order = epoch_order(10, chunk_size=3, buffer_chunks=1, seed=0)
    >>> sorted(order.tolist()) == list(range(10))
    True
    """
    rng = np.random.default_rng(seed)
    starts = rng.permutation(np.arange(0, n_obs, chunk_size))
    chunks = [np.arange(start, min(start + chunk_size, n_obs)) for start in starts]
    buffers = [np.concatenate(chunks[i : i + buffer_chunks]) for i in range(0, len(chunks), buffer_chunks)]
    return np.concatenate([rng.permutation(buffer) for buffer in buffers]) if buffers else np.arange(0)


def shard(order: np.ndarray, *, rank: int, world_size: int) -> np.ndarray:
    """The share of an epoch's ``order`` that process ``rank`` reads: equal shares, the last padded from the start.

    As PyTorch's ``DistributedSampler`` does, every share has ``ceil(n / world_size)`` cells, so every
    process runs the same number of steps; the few cells needed to fill the last share are taken
    from the start of the order (they are seen twice in that epoch).

    Examples
    --------
    >>> import numpy as np
    >>> from bioformers.data import shard
    >>> [shard(np.arange(5), rank=r, world_size=2).tolist() for r in (0, 1)]
    [[0, 1, 2], [3, 4, 0]]
    """
    size = -(-order.size // world_size)
    padded = np.concatenate([order, order[: size * world_size - order.size]])
    return padded[rank * size : (rank + 1) * size]


class StreamedCells(torch.utils.data.IterableDataset):
    """One epoch of training minibatches read from a backed AnnData (a process's share under DDP).

    Each minibatch is the dict of tensors the network reads: ``X`` (bins), ``batch`` and ``labels``
    (codes), and ``counts`` (raw counts, for the count objective), all in the model's gene order, and
    ``ind_x``, the cells' positions in ``adata`` (as scvi-tools' loader gives them).

    Parameters
    ----------
    adata
        The cells, backed (``anndata.read_h5ad(path, backed="r")``) or in memory; ``X`` holds the counts.
    binning
        The binning record the model was built with (``model.binning_``), with its ``target_sum``.
    genes
        Where the model's genes are in ``adata`` (:meth:`bioformers.BioFormer.align_genes`); `None`:
        exactly the model's genes.
    batch_codes, label_codes
        Each cell's code of the model's batch and label categories; `None`: all 0.
    batch_size
        Cells per minibatch.
    chunk_size, buffer_chunks
        Contiguous cells read at a time, and chunks shuffled together (see :func:`epoch_order`).
    seed
        Seed of the run; epoch ``e`` uses ``seed + e``.
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        binning: dict,
        genes: GeneAlignment | None = None,
        batch_codes: np.ndarray | None = None,
        label_codes: np.ndarray | None = None,
        batch_size: int,
        chunk_size: int,
        buffer_chunks: int = DEFAULT_BUFFER_CHUNKS,
        seed: int = 0,
    ):
        super().__init__()
        self.adata, self.genes = adata, None if genes is None or genes.is_identity else genes
        self.binning = {k: binning[k] for k in BINNING_ARGS if k in binning}
        zeros = np.zeros(adata.n_obs, dtype=np.int64)
        self.batch_codes = zeros if batch_codes is None else np.asarray(batch_codes, dtype=np.int64)
        self.label_codes = zeros if label_codes is None else np.asarray(label_codes, dtype=np.int64)
        self.batch_size, self.chunk_size, self.buffer_chunks, self.seed = batch_size, chunk_size, buffer_chunks, seed
        self.epoch, self.rank, self.world_size = 0, 0, 1

    @property
    def n_obs(self) -> int:
        """Cells in the data (all processes together)."""
        return self.adata.n_obs

    def __len__(self) -> int:
        """Minibatches of this process per epoch."""
        per_process = -(-self.n_obs // self.world_size)
        return -(-per_process // self.batch_size)

    def cells(self) -> np.ndarray:
        """The cells this process reads in the current epoch, in that order."""
        order = epoch_order(
            self.n_obs, chunk_size=self.chunk_size, buffer_chunks=self.buffer_chunks, seed=self.seed + self.epoch
        )
        return shard(order, rank=self.rank, world_size=self.world_size)

    def __iter__(self):
        cells = self.cells()
        buffer = self.chunk_size * self.buffer_chunks
        buffer -= buffer % self.batch_size  # whole minibatches per buffer: only the epoch's last one is short
        for start in range(0, cells.size, max(buffer, self.batch_size)):
            part = cells[start : start + max(buffer, self.batch_size)]
            counts, bins = self.read(part)
            for first in range(0, part.size, self.batch_size):
                rows = slice(first, first + self.batch_size)
                ids = part[rows]
                yield {
                    REGISTRY_KEYS.X_KEY: torch.from_numpy(bins[rows].toarray().astype(np.float32)),
                    COUNTS_KEY: torch.from_numpy(counts[rows].toarray().astype(np.float32)),
                    REGISTRY_KEYS.BATCH_KEY: torch.from_numpy(self.batch_codes[ids, None]),
                    REGISTRY_KEYS.LABELS_KEY: torch.from_numpy(self.label_codes[ids, None]),
                    REGISTRY_KEYS.INDICES_KEY: torch.from_numpy(ids[:, None]),  # which cells, as scvi-tools' loader
                }
            del counts, bins
            _release_freed_memory()

    def read(self, cells: np.ndarray) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
        """Raw counts and bins of ``cells`` (in that order), in the model's genes, checked and binned."""
        unique, inverse = np.unique(cells, return_inverse=True)  # h5py reads increasing rows
        counts = sparse.csr_matrix(self.adata.X[unique], dtype=np.float32)[inverse]
        if self.genes is not None:
            counts = self.genes.take(counts)
        where = f"adata.X (cells {unique[0]} to {unique[-1]}, in the model's genes)"
        check_counts(counts, where=where, require_integer=self.binning.get("method", "value") == "value")
        bins, _ = bin_matrix(counts, **self.binning)
        return counts, bins


class StreamingDataModule(LightningDataModule):
    """A Lightning data module over :class:`StreamedCells`, what ``model.train(datamodule=...)`` reads.

    Tells each epoch's data which epoch it is and which share of the cells this process reads
    (from the trainer, so a resumed run continues the same sequence of orders). There are no
    validation cells.
    """

    def __init__(self, cells: StreamedCells):
        super().__init__()
        self.cells = cells

    @property
    def n_obs(self) -> int:
        """Cells in the data; scvi-tools reads it to pick a number of epochs."""
        return self.cells.n_obs

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(_EpochAware(self), batch_size=None)


class _EpochAware(torch.utils.data.IterableDataset):
    """The module's cells, told the trainer's epoch and this process's rank each time an epoch starts."""

    def __init__(self, module: StreamingDataModule):
        super().__init__()
        self.module = module

    def _sync(self) -> StreamedCells:
        cells, trainer = self.module.cells, self.module.trainer
        if trainer is not None:
            cells.epoch, cells.rank, cells.world_size = trainer.current_epoch, trainer.global_rank, trainer.world_size
        return cells

    def __len__(self) -> int:
        return len(self._sync())

    def __iter__(self):
        return iter(self._sync())


def category_codes(values: pd.Series, categories: list[str]) -> np.ndarray:
    """Each value's position among ``categories`` (every value must be one of them)."""
    return pd.Categorical(values.astype(str), categories=categories).codes.astype(np.int64)


def count_statistics(
    adata: AnnData, *, genes: GeneAlignment | None = None, chunk_size: int, require_integer: bool = True
) -> dict[str, np.ndarray | float]:
    """One pass over the cells' counts, a chunk at a time: what training needs before it starts.

    Checks every chunk as :func:`bioformers.pp.bin` checks counts (so bad data are refused before
    training, not at the step that reaches them) and returns ``target_sum`` (the mean total count
    over the model's genes: value binning's scale), ``mean_shares`` (each gene's mean share of a
    cell's counts: the count decoder's start), ``largest_share`` (the largest share of its counts any
    cell has in one gene: with ``target_sum`` it gives the largest bin, so the bin vocabulary is that of
    binning all cells in memory) and ``cells_per_gene`` (cells where each gene has counts).
    """
    genes = None if genes is None or genes.is_identity else genes
    total, shares, cells_per_gene, largest = 0.0, None, None, 0.0
    for start in range(0, adata.n_obs, chunk_size):
        stop = min(start + chunk_size, adata.n_obs)
        raw = sparse.csr_matrix(adata.X[start:stop], dtype=np.float64)
        block = raw if genes is None else genes.take(raw)
        where = f"adata.X (cells {start} to {stop - 1}" + (", the model's genes)" if genes is not None else ")")
        if genes is not None:
            genes.check_cells(raw, block, where=where)
        check_counts(block, where=where, require_integer=require_integer)
        totals = np.asarray(block.sum(axis=1)).ravel()
        part = np.asarray((sparse.diags(1 / totals) @ block).sum(axis=0)).ravel()
        seen = np.asarray((block > 0).sum(axis=0)).ravel()
        total += totals.sum()
        largest = max(largest, float((block.max(axis=1).toarray().ravel() / totals).max()))
        shares = part if shares is None else shares + part
        cells_per_gene = seen if cells_per_gene is None else cells_per_gene + seen
        del raw, block
        _release_freed_memory()
    return {
        "target_sum": total / adata.n_obs,
        "mean_shares": shares / adata.n_obs,
        "largest_share": largest,
        "cells_per_gene": cells_per_gene,
    }
