"""Embeddings of the integers the networks read: binned expression values and diffusion timesteps."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .._docs import DOC_N_BINS, doc_params


@doc_params(n_bins=DOC_N_BINS)
class ValueEncoder(nn.Module):
    """Embed bin indices, with a learned MASK value for masked positions.

    Parameters
    ----------
    {n_bins}
    n_hidden
        Embedding width.
    kind
        ``"embedding"``: one free vector per bin (bioformers' default: on PBMC 3k it gave KMeans
        AvgBIO 0.58 vs 0.52 and a lower masked-modelling loss after 200 steps). ``"linear"``: a
        linear layer on the bin index scaled to ``[0, 1]`` (the paper's default).
    """

    def __init__(self, n_bins: int, n_hidden: int, kind: Literal["linear", "embedding"] = "embedding"):
        super().__init__()
        if kind not in ("linear", "embedding"):
            raise ValueError(f"`value_encoder` must be 'linear' or 'embedding', not {kind!r}.")
        self.kind = kind
        self.n_bins = n_bins
        if kind == "linear":
            self.encoder = nn.Linear(1, n_hidden)
        else:
            self.encoder = nn.Embedding(n_bins, n_hidden)
        # no LayerNorm here: it is scale-invariant, so after a linear layer it would map every
        # nonzero bin to the same vector
        self.mask_value = nn.Parameter(torch.zeros(n_hidden))

    def forward(self, bins: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        """Embed ``bins`` (long, any shape); positions where ``masked`` is True get the MASK value."""
        bins = bins.clamp(max=self.n_bins - 1)
        if self.kind == "linear":
            scale = max(self.n_bins - 1, 1)
            emb = self.encoder((bins.to(self.encoder.weight.dtype) / scale).unsqueeze(-1))
        else:
            emb = self.encoder(bins)
        if masked is not None:
            emb = torch.where(masked.unsqueeze(-1), self.mask_value.to(emb.dtype), emb)
        return emb


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (cosines, then sines, of geometrically spaced frequencies).

    Parameters
    ----------
    t
        Timesteps, ``(batch,)``.
    dim
        Width of the embedding; an odd width ends with a zero.
    max_period
        Period of the slowest frequency.

    Returns
    -------
    :class:`~torch.Tensor`
        ``float32`` ``(batch, dim)``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(embedding, (0, dim % 2))
