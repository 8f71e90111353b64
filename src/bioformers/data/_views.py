"""Views of a cell for the two-view objective: binomial thinning of its counts, binned again in torch."""

from __future__ import annotations

import math

import torch


def thin(counts: torch.Tensor, keep: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binomial thinning: each count kept with probability ``keep`` of its cell, as if sequenced less deeply.

    Parameters
    ----------
    counts
        Raw counts, ``(cells, genes)``, whole numbers.
    keep
        Probability of keeping each molecule, ``(cells,)`` in (0, 1].
    generator
        Source of randomness.

    Returns
    -------
    :class:`~torch.Tensor`
        ``float32`` counts of the same shape, each at most the original.
    """
    probs = keep.float()[:, None].expand_as(counts)
    return torch.binomial(counts.float(), probs.contiguous(), generator=generator)


def value_bins(
    counts: torch.Tensor, *, target_sum: float | None, cutoff: float, bins_per_octave: int, max_bin: int
) -> torch.Tensor:
    """The value bins of :func:`bioformers.pp.bin` (``method="value"``), computed in torch on a minibatch.

    Cells are scaled to ``target_sum`` (not scaled when ``None``), then zeros are bin 0, values
    in (0, 1] bin 1, values up to ``cutoff`` are rounded half up, larger ones binned on a log2 scale
    with ``bins_per_octave`` bins per doubling; bins above ``max_bin`` become ``max_bin``.

    Parameters
    ----------
    counts
        Counts, ``(cells, genes)``; a cell may have none (all its bins are 0).
    target_sum, cutoff, bins_per_octave
        As recorded by :func:`bioformers.pp.bin`.
    max_bin
        The largest bin the model knows.

    Returns
    -------
    :class:`~torch.Tensor`
        ``int64`` bins, ``(cells, genes)``.
    """
    x = counts.double()
    if target_sum is not None:
        x = x * (target_sum / x.sum(dim=1, keepdim=True).clamp(min=1))
    bins = torch.floor(x + 0.5).clamp(min=1)
    log_bins = math.floor(cutoff + 0.5) + torch.ceil(
        (torch.log2(x.clamp(min=cutoff)) - math.log2(cutoff)) * bins_per_octave
    )
    bins = torch.where(x > cutoff, log_bins, bins)
    return torch.where(x > 0, bins, 0).clamp(max=max_bin).long()


def value_binning_args(binning: dict) -> dict:
    """The arguments of :func:`value_bins` recorded by :func:`bioformers.pp.bin` (``uns[...]["params"]``)."""
    return {
        "target_sum": binning.get("target_sum"),
        "cutoff": float(binning.get("cutoff", 8)),
        "bins_per_octave": int(binning.get("bins_per_octave", 3)),
    }
