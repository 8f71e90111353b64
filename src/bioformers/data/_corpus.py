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

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from lightning.pytorch import LightningDataModule
from scipy import sparse
from scvi import REGISTRY_KEYS

from .._keys import COUNTS_KEY
from .._validation import check_counts
from ..pp._tokens import BINNING_ARGS, bin_matrix
from ._stream import _release_freed_memory

if TYPE_CHECKING:
    from ..pp._genes import GeneAlignment

#: Chunks whose cells are shuffled together.
DEFAULT_BUFFER_CHUNKS = 8


def epoch_order(n_obs: int | Sequence[int], *, chunk_size: int, buffer_chunks: int, seed: int) -> np.ndarray:
    """The order of all cells in one epoch: chunks in random order, cells shuffled within buffers of chunks.

    Parameters
    ----------
    n_obs
        Number of cells; or the numbers of cells of several AnnData read one after the other (cell
        ``i`` of the second is ``n_obs[0] + i``), whose chunks never span two of them.
    chunk_size
        Contiguous cells read together.
    buffer_chunks
        Consecutive chunks (in the shuffled order) whose cells are shuffled together.
    seed
        Seed of this epoch's order (the run's seed plus the epoch).

    Returns
    -------
    :class:`~numpy.ndarray`
        A permutation of ``range(sum(n_obs))``.

    Examples
    --------
    >>> from bioformers.data import epoch_order
    >>> order = epoch_order(10, chunk_size=3, buffer_chunks=1, seed=0)
    >>> sorted(order.tolist()) == list(range(10))
    True
    """
    sizes = [n_obs] if isinstance(n_obs, int | np.integer) else list(n_obs)
    offsets = np.cumsum([0, *sizes])
    chunks = [
        np.arange(offset + start, offset + min(start + chunk_size, size))
        for offset, size in zip(offsets, sizes, strict=False)
        for start in range(0, size, chunk_size)
    ]
    rng = np.random.default_rng(seed)
    chunks = [chunks[i] for i in rng.permutation(len(chunks))]
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
    """One epoch of training minibatches read from backed AnnData (a process's share under DDP).

    Each minibatch is the dict of tensors the network reads: ``X`` (bins), ``batch`` and ``labels``
    (codes), and ``counts`` (raw counts, for the count objective), all in the model's gene order, and
    ``ind_x``, the cells' positions (in the sources one after the other, as scvi-tools' loader gives them).

    Parameters
    ----------
    adata
        The cells, backed (``anndata.read_h5ad(path, backed="r")``) or in memory, counts in ``X``; or
        a list of such AnnData (e.g. files with different genes), read as one corpus.
    binning
        The binning record the model was built with (``model.binning_``), with its ``target_sum``.
    genes
        Where the model's genes are in each AnnData (``bioformers.pp._genes.align_genes``), one
        per AnnData; `None`: exactly the model's genes.
    batch_codes, label_codes
        Each cell's code of the model's batch and label categories (all AnnData one after the
        other); `None`: all 0.
    batch_size
        Cells per minibatch.
    chunk_size, buffer_chunks
        Contiguous cells read at a time, and chunks shuffled together (see :func:`epoch_order`).
        Chunks never span two AnnData.
    seed
        Seed of the run; epoch ``e`` uses ``seed + e``.
    """

    def __init__(
        self,
        adata: AnnData | Sequence[AnnData],
        *,
        binning: dict,
        genes: GeneAlignment | Sequence[GeneAlignment | None] | None = None,
        batch_codes: np.ndarray | None = None,
        label_codes: np.ndarray | None = None,
        batch_size: int,
        chunk_size: int,
        buffer_chunks: int = DEFAULT_BUFFER_CHUNKS,
        seed: int = 0,
    ):
        super().__init__()
        self.sources = [adata] if isinstance(adata, AnnData) else list(adata)
        genes = genes if isinstance(genes, Sequence) else [genes] * len(self.sources)
        self.genes = [None if g is None or g.is_identity else g for g in genes]
        self.offsets = np.cumsum([0] + [source.n_obs for source in self.sources])
        self.binning = {k: binning[k] for k in BINNING_ARGS if k in binning}
        zeros = np.zeros(self.n_obs, dtype=np.int64)
        self.batch_codes = zeros if batch_codes is None else np.asarray(batch_codes, dtype=np.int64)
        self.label_codes = zeros if label_codes is None else np.asarray(label_codes, dtype=np.int64)
        self.batch_size, self.chunk_size, self.buffer_chunks, self.seed = batch_size, chunk_size, buffer_chunks, seed
        self.epoch, self.rank, self.world_size = 0, 0, 1

    @property
    def n_obs(self) -> int:
        """Cells in the data (all AnnData, all processes together)."""
        return int(self.offsets[-1])

    def __len__(self) -> int:
        """Minibatches of this process per epoch."""
        return self.n_batches(self.world_size)

    def n_batches(self, world_size: int) -> int:
        """Minibatches of each process per epoch with ``world_size`` processes (equal shares, see :func:`shard`)."""
        per_process = -(-self.n_obs // world_size)
        return -(-per_process // self.batch_size)

    def cells(self) -> np.ndarray:
        """The cells this process reads in the current epoch, in that order."""
        sizes = [source.n_obs for source in self.sources]
        order = epoch_order(
            sizes, chunk_size=self.chunk_size, buffer_chunks=self.buffer_chunks, seed=self.seed + self.epoch
        )
        return shard(order, rank=self.rank, world_size=self.world_size)

    def __iter__(self):
        return self.batches()

    def batches(self, skip: int = 0):
        """The minibatches of the current epoch after the first ``skip`` (resuming mid-epoch: those are not read)."""
        cells = self.cells()[skip * self.batch_size :]
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
        which = np.searchsorted(self.offsets, cells, side="right") - 1
        blocks, positions = [], []
        for i in np.unique(which):
            rows = cells[which == i] - self.offsets[i]
            unique, inverse = np.unique(rows, return_inverse=True)  # h5py reads increasing rows
            block = sparse.csr_matrix(self.sources[i].X[unique], dtype=np.float32)
            block = block if self.genes[i] is None else self.genes[i].take(block)
            where = f"adata.X{f' of AnnData {i}' if len(self.sources) > 1 else ''} (cells {unique[0]} to {unique[-1]}"
            check_counts(block, where=where + ", in the model's genes)", require_integer=self.is_value_binning)
            blocks.append(block[inverse])
            positions.append(np.flatnonzero(which == i))
        counts = sparse.vstack(blocks).tocsr()[np.argsort(np.concatenate(positions), kind="stable")]
        bins, _ = bin_matrix(counts, **self.binning)
        return counts, bins

    @property
    def is_value_binning(self) -> bool:
        """Whether the binning scales cells to ``target_sum`` (value bins, whose counts must be integers)."""
        return self.binning.get("method", "value") == "value"


class StreamingDataModule(LightningDataModule):
    """A Lightning data module over :class:`StreamedCells`, what ``model.train(datamodule=...)`` reads.

    Tells each epoch's data which epoch it is and which share of the cells this process reads
    (from the trainer, so a resumed run continues the same sequence of orders), and resumes in the
    middle of an epoch from a checkpoint written there. There are no validation cells.
    """

    def __init__(self, cells: StreamedCells):
        super().__init__()
        self.cells = cells

    @property
    def n_obs(self) -> int:
        """Cells in the data; scvi-tools reads it to pick a number of epochs."""
        return self.cells.n_obs

    def steps_per_epoch(self, world_size: int) -> int:
        """Minibatches of one process in an epoch, with ``world_size`` processes (for the learning-rate schedule)."""
        return self.cells.n_batches(world_size)

    def train_dataloader(self) -> _StreamLoader:
        """The loader of the training minibatches: one epoch per iteration, resumable mid-epoch."""
        return _StreamLoader(self)


class _StreamLoader:
    """The minibatches of an epoch, told the trainer's epoch and this process's rank when the epoch starts.

    Lightning saves the ``state_dict`` of such a loader in its checkpoints (it is "stateful"): the
    epoch and the minibatches already trained on. Resuming from a checkpoint written mid-epoch, the
    loader skips those minibatches without reading them, so the run continues exactly where it stopped.
    """

    def __init__(self, module: StreamingDataModule):
        self.module = module
        self._resume: dict | None = None

    def _sync(self) -> StreamedCells:
        cells, trainer = self.module.cells, self.module.trainer
        if trainer is not None:
            cells.epoch, cells.rank, cells.world_size = trainer.current_epoch, trainer.global_rank, trainer.world_size
        return cells

    def __len__(self) -> int:
        return len(self._sync())

    def __iter__(self):
        cells = self._sync()
        resume, self._resume = self._resume, None
        return cells.batches(skip=resume["batches"] if resume and resume["epoch"] == cells.epoch else 0)

    def state_dict(self) -> dict:
        """The epoch and the minibatches of it trained on so far (read when Lightning writes a checkpoint)."""
        trainer = self.module.trainer
        return {"epoch": trainer.current_epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        """Skip ``state["batches"]`` minibatches when epoch ``state["epoch"]`` is iterated next."""
        self._resume = dict(state)


def category_codes(values: pd.Series, categories: list[str]) -> np.ndarray:
    """Each value's position among ``categories`` (every value must be one of them)."""
    return pd.Categorical(values.astype(str), categories=categories).codes.astype(np.int64)


def count_statistics(
    adata: AnnData | Sequence[AnnData],
    *,
    genes: GeneAlignment | Sequence[GeneAlignment | None] | None = None,
    chunk_size: int,
    require_integer: bool = True,
) -> dict[str, np.ndarray | float]:
    """One pass over the cells' counts, a chunk at a time: what training needs before it starts.

    Checks every chunk as :func:`bioformers.pp.bin` checks counts (so bad data are refused before
    training, not at the step that reaches them) and returns ``target_sum`` (the mean total count
    over the model's genes: value binning's scale), ``mean_shares`` (each gene's mean share of a
    cell's counts: the count decoder's start), ``largest_share`` (the largest share of its counts any
    cell has in one gene: with ``target_sum`` it gives the largest bin, so the bin vocabulary is that of
    binning all cells in memory) and ``cells_per_gene`` (cells where each gene has counts).
    ``adata`` and ``genes`` as for :class:`StreamedCells`.
    """
    sources = [adata] if isinstance(adata, AnnData) else list(adata)
    alignments = genes if isinstance(genes, Sequence) else [genes] * len(sources)
    total, shares, cells_per_gene, largest, n_obs = 0.0, 0.0, 0, 0.0, 0
    for i, (source, alignment) in enumerate(zip(sources, alignments, strict=True)):
        alignment = None if alignment is None or alignment.is_identity else alignment
        name = f"adata.X{f' of AnnData {i}' if len(sources) > 1 else ''}"
        for start in range(0, source.n_obs, chunk_size):
            stop = min(start + chunk_size, source.n_obs)
            raw = sparse.csr_matrix(source.X[start:stop], dtype=np.float64)
            block = raw if alignment is None else alignment.take(raw)
            where = f"{name} (cells {start} to {stop - 1}" + (", the model's genes)" if alignment is not None else ")")
            if alignment is not None:
                alignment.check_cells(raw, block, where=where)
            check_counts(block, where=where, require_integer=require_integer)
            totals = np.asarray(block.sum(axis=1)).ravel()
            shares = shares + np.asarray((sparse.diags(1 / totals) @ block).sum(axis=0)).ravel()
            cells_per_gene = cells_per_gene + np.asarray((block > 0).sum(axis=0)).ravel()
            largest = max(largest, float((block.max(axis=1).toarray().ravel() / totals).max()))
            total += totals.sum()
            del raw, block
            _release_freed_memory()
        n_obs += source.n_obs
    return {
        "target_sum": total / n_obs,
        "mean_shares": shares / n_obs,
        "largest_share": largest,
        "cells_per_gene": cells_per_gene,
    }
