"""Gene selection and masking for one minibatch of binned cells.

Batches arrive from scvi-tools' loader as dense ``(cells, genes)`` blocks of bin indices: only the
minibatch is ever dense, never the whole matrix.

Randomness has two sources. During training it comes from torch's generator (fresh samples every
epoch, seeded by the training seed). Outside training it comes from a hash of the cell's own
values, so a cell's sequence, and therefore its embedding, never depends on which other cells share
its batch or where it sits in the AnnData.
"""

from __future__ import annotations

import math

import torch

_MOD = 2**31  # hash arithmetic stays below 2**62, so int64 never overflows
_MULT = 1_103_515_245
_INC = 12_345


def _mix(h: torch.Tensor) -> torch.Tensor:
    """A few rounds of a 31-bit multiplicative hash (vectorised, identical on every device)."""
    for _ in range(3):
        h = (h * _MULT + _INC) % _MOD
        h = h ^ (h >> 13)
    return h


def cell_uniforms(bins: torch.Tensor, salt: int) -> torch.Tensor:
    """Uniform numbers in ``[0, 1)`` per (cell, gene), fixed by the cell's binned values alone.

    Parameters
    ----------
    bins
        Bin indices, ``(cells, genes)``, integer.
    salt
        Separates independent streams (gene selection vs. masking).
    """
    n_genes = bins.shape[1]
    gene = torch.arange(n_genes, device=bins.device, dtype=torch.int64)
    gene_weight = _mix(gene + 7 * salt + 1) % 65_521 + 1
    key = _mix((bins.to(torch.int64) * gene_weight).sum(dim=1) % _MOD + salt)
    h = _mix((key[:, None] * 40_503 + gene[None, :] * 2_654_435 + salt) % _MOD)
    # keep 24 bits, which float32 holds exactly: the result is strictly below 1
    return (h >> 7).to(torch.float32) / 2**24


def _uniforms(bins: torch.Tensor, random: bool, salt: int) -> torch.Tensor:
    if random:
        return torch.rand(bins.shape, device=bins.device)
    return cell_uniforms(bins, salt)


def select_genes(
    bins: torch.Tensor, n_genes: int, *, random: bool, include: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the genes of each cell's sequence.

    All genes when they fit in ``n_genes``; otherwise every expressed gene plus sampled unexpressed
    genes up to ``n_genes`` (expressed genes are themselves sampled only when there are more than
    ``n_genes`` of them). Genes marked in ``include`` (boolean, like ``bins``), e.g. genes to
    predict, come first; callers keep them to at most ``n_genes`` per cell.

    Returns
    -------
    Gene indices and their bins, both ``(cells, min(n_genes, genes))``, genes in ascending order.
    """
    n_cells, n_all = bins.shape
    if n_all <= n_genes:
        genes = torch.arange(n_all, device=bins.device).expand(n_cells, n_all)
        return genes, bins
    priority = _uniforms(bins, random, salt=1) + (bins > 0).to(torch.float32)
    if include is not None:
        priority = priority + 2 * include.to(torch.float32)
    genes = priority.topk(n_genes, dim=1, sorted=False).indices.sort(dim=1).values
    return genes, bins.gather(1, genes)


def _choose(scores: torch.Tensor, eligible: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Per row, the ``count`` eligible positions with the smallest scores."""
    scores = scores.masked_fill(~eligible, float("inf"))
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return eligible & (ranks < count[:, None])


def n_masked(length: int, mask_ratio: float) -> int:
    """Number of positions masked for masked gene modelling in every cell of a sequence length.

    A fraction ``mask_ratio`` of the positions, rounded, at least one and at most all.

    Parameters
    ----------
    length
        Sequence length (genes per cell, CLS not counted).
    mask_ratio
        Fraction of positions to mask.

    Returns
    -------
    int
        The number of masked positions.

    Examples
    --------
    >>> from bioformers.data import n_masked
    >>> n_masked(255, 0.1), n_masked(4, 0.1), n_masked(3, 1.5)
    (26, 1, 3)
    """
    return min(length, max(1, round(mask_ratio * length)))


def mask_positions(values: torch.Tensor, mask_ratio: float, nonzero_ratio: float, *, random: bool) -> torch.Tensor:
    """Choose the positions to mask for masked gene modelling.

    Exactly :func:`n_masked` positions of each cell are masked, a fraction ``mask_ratio`` of its
    positions (at least one), so the masked positions of a batch form a ``(cells, n_masked)`` block
    with no data-dependent shape (no host-device sync on GPU); of those, a fraction
    ``nonzero_ratio`` are expressed genes, so the model cannot win by predicting zeros everywhere.
    When a cell has too few expressed (or unexpressed) genes, the rest come from the other group.

    Returns
    -------
    Boolean mask, same shape as ``values``.
    """
    length = values.shape[1]
    nonzero = values > 0
    n_nonzero = nonzero.sum(dim=1)
    n_zero = length - n_nonzero
    n_mask = torch.full_like(n_nonzero, n_masked(length, mask_ratio))
    want_nonzero = torch.round(n_mask * nonzero_ratio).to(n_mask.dtype)
    take_zero = torch.minimum(n_mask - torch.minimum(want_nonzero, n_nonzero), n_zero)
    take_nonzero = torch.minimum(n_mask - take_zero, n_nonzero)
    scores = _uniforms(values, random, salt=2)
    return _choose(scores, nonzero, take_nonzero) | _choose(scores, ~nonzero, take_zero)


def prediction_masks(bins: torch.Tensor, n_genes: int, mask_ratio: float) -> list[torch.Tensor]:
    """Masks that together hide every gene of each cell's sequence exactly once.

    The cell's sequence (:func:`select_genes`, deterministic) is split into ``ceil(1 / mask_ratio)``
    groups of about equal size, fixed by the cell's own values; each mask hides one group, so every
    gene is predicted once from the rest of the cell with about ``mask_ratio`` of it hidden.

    Returns
    -------
    Boolean masks over all genes, each ``(cells, genes)``.
    """
    n_passes = math.ceil(1 / mask_ratio - 1e-9)
    genes, _ = select_genes(bins, n_genes, random=False)
    order = cell_uniforms(bins, salt=3).gather(1, genes).argsort(dim=1).argsort(dim=1)
    group = order % n_passes
    masks = []
    for k in range(n_passes):
        mask = torch.zeros(bins.shape, dtype=torch.bool, device=bins.device)
        masks.append(mask.scatter(1, genes, group == k))
    return masks


def order_by_value(
    bins: torch.Tensor, n_genes: int, *, random: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each cell's expressed genes in descending order of value: the sequence of the decoder-only model.

    Ties (genes in the same bin) are ordered at random during training (``random=True``) and by the
    cell's own values otherwise (:func:`cell_uniforms`), so the order never depends on the batch.
    Cells with more than ``n_genes`` expressed genes keep their ``n_genes`` highest.

    Returns
    -------
    Gene indices and their bins, both ``(cells, n_genes)`` (padding: gene 0, bin 0), and each cell's
    number of expressed genes (before truncation), ``(cells,)``.
    """
    bins = bins.long()
    n_expressed = (bins > 0).sum(dim=1)
    # below 1, the tie-breaker never changes the order of different bins; unexpressed genes go last
    priority = bins.to(torch.float32) + _uniforms(bins, random, salt=4) - 2 * (bins == 0).to(torch.float32)
    k = min(n_genes, bins.shape[1])
    genes = priority.topk(k, dim=1, sorted=True).indices
    values = bins.gather(1, genes)
    if k < n_genes:
        pad = n_genes - k
        genes = torch.cat([genes, genes.new_zeros(len(bins), pad)], dim=1)
        values = torch.cat([values, values.new_zeros(len(bins), pad)], dim=1)
    valid = torch.arange(n_genes, device=bins.device) < n_expressed[:, None]
    return torch.where(valid, genes, 0), torch.where(valid, values, 0), n_expressed
