"""Control -> perturbed cell pairs for learning perturbation responses.

Each perturbed (or control) training cell is the target of one pair; its source is a control cell
drawn at random, afresh every epoch, from a seeded generator (the random matching of GEARS and
scGPT: a CRISPR screen does not observe the same cell before and after). The network sees the
control cell's bins with the perturbation's targets marked and learns the target cell's
log-normalised expression.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
import torch
from lightning.pytorch import LightningDataModule
from scipy import sparse
from torch.utils.data import DataLoader

from .._docs import DOC_PAIRS_BATCH_SIZE, doc_params

#: Separates the targets of a combination in a perturbation label, e.g. ``"STAT1+JAK2"``.
COMBINATION_SEPARATOR = "+"

#: The scale of log-normalised expression: counts per 10,000, then ``log1p`` (Scanpy's usual choice).
LOG_TARGET_SUM = 1e4


def perturbation_targets(label: str, control: str) -> list[str]:
    """The genes a perturbation label names: none for ``control``, one per ``+``-separated part."""
    if label == control:
        return []
    return [part.strip() for part in str(label).split(COMBINATION_SEPARATOR)]


def log_normalize(counts) -> sparse.csr_matrix:
    """Scanpy's ``normalize_total(target_sum=LOG_TARGET_SUM)`` then ``log1p``, as CSR ``float32``."""
    cells = ad.AnnData(sparse.csr_matrix(counts, dtype=np.float32))
    sc.pp.normalize_total(cells, target_sum=LOG_TARGET_SUM)
    sc.pp.log1p(cells)
    return cells.X


@doc_params(batch_size=DOC_PAIRS_BATCH_SIZE)
class PerturbationPairs(LightningDataModule):
    """Minibatches of control -> target pairs.

    Parameters
    ----------
    control_bins
        Binned control cells that serve as sources, ``(n_controls, n_genes)``.
    expression
        Log-normalised expression of the target cells, ``(n_targets, n_genes)``.
    groups
        Perturbation of each target cell, as a row of ``targets`` and ``weights``.
    targets
        Vocabulary indices of each perturbation's targets, ``(n_perturbations, slots)``, -1 where empty.
    weights
        Loss weight of each gene for each perturbation, ``(n_perturbations, n_genes)``.
    {batch_size}
    seed
        Seeds the order of target cells and the choice of control cells.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import sparse
    >>> from bioformers.data import PerturbationPairs
    >>> rng = np.random.default_rng(0)
    >>> controls = sparse.csr_matrix(rng.integers(0, 5, (10, 6)))
    >>> expression = sparse.csr_matrix(rng.random((20, 6)))
    >>> pairs = PerturbationPairs(
    ...     controls, expression, rng.integers(0, 2, 20), [[-1], [3]], np.ones((2, 6)), batch_size=8, seed=0
    ... )
    >>> batch = next(iter(pairs.train_dataloader()))
    >>> {name: tuple(value.shape) for name, value in batch.items()}
    {'bins': (8, 6), 'expression': (8, 6), 'targets': (8, 1), 'weight': (8, 6)}
    """

    def __init__(
        self,
        control_bins: sparse.csr_matrix,
        expression: sparse.csr_matrix,
        groups: np.ndarray,
        targets: np.ndarray,
        weights: np.ndarray,
        *,
        batch_size: int,
        seed: int,
    ):
        super().__init__()
        self.control_bins = control_bins
        self.expression = expression
        self.groups = np.asarray(groups)
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.weights = torch.as_tensor(weights, dtype=torch.float32)
        self.batch_size = batch_size
        self._order = torch.Generator().manual_seed(seed)
        self._controls = np.random.default_rng(seed)

    def _collate(self, cells: list[int]) -> dict[str, torch.Tensor]:
        cells = np.asarray(cells)
        controls = self._controls.integers(self.control_bins.shape[0], size=cells.size)
        group = torch.from_numpy(self.groups[cells])
        return {
            "bins": torch.from_numpy(self.control_bins[controls].toarray()),
            "expression": torch.from_numpy(self.expression[cells].toarray()),
            "targets": self.targets[group],
            "weight": self.weights[group],
        }

    def state_dict(self) -> dict:
        """States of the cell-order and control-cell generators, saved in training checkpoints.

        With them a resumed run draws the same orders and pairs as an uninterrupted one.

        Returns
        -------
        dict
            ``order`` (torch generator state) and ``controls`` (numpy bit generator state).
        """
        return {"order": self._order.get_state(), "controls": self._controls.bit_generator.state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the generators from :meth:`state_dict`.

        Parameters
        ----------
        state_dict
            What :meth:`state_dict` returned.
        """
        self._order.set_state(state_dict["order"])
        self._controls.bit_generator.state = state_dict["controls"]

    def train_dataloader(self) -> DataLoader:
        """Every target cell once per epoch, shuffled, each with a fresh random control cell.

        Returns
        -------
        :class:`~torch.utils.data.DataLoader`
            Minibatches of ``bins`` (control cells), ``expression`` (target cells), ``targets`` and
            ``weight``, as :meth:`bioformers.module.BioFormerPerturbationModule.response_loss` reads them.
        """
        return DataLoader(
            range(self.expression.shape[0]),
            batch_size=self.batch_size,
            shuffle=True,
            generator=self._order,
            collate_fn=self._collate,
        )
