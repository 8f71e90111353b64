"""Embedding of the conditions a generative model is asked for: categorical, continuous and a set (perturbed genes)."""

from __future__ import annotations

import torch
from torch import nn


class ConditionEmbedding(nn.Module):
    """Embeds every condition of a cell into one ``n_hidden`` vector (their sum).

    Parameters
    ----------
    n_hidden
        Width of the condition vector.
    categorical_sizes
        Number of categories of each categorical condition; code ``size`` means "none".
    n_continuous
        Number of continuous conditions (NaN means "none"); each is standardised with the training
        mean and standard deviation (:meth:`set_continuous_scale`) and mapped by its own MLP.
    n_set_items
        Size of the vocabulary of the set condition (perturbed genes); 0: no set condition.
    """

    def __init__(self, n_hidden: int, categorical_sizes: list[int], n_continuous: int, n_set_items: int):
        super().__init__()
        self.categorical = nn.ModuleList(nn.Embedding(size + 1, n_hidden) for size in categorical_sizes)
        self.continuous = nn.ModuleList(
            nn.Sequential(nn.Linear(1, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_hidden)) for _ in range(n_continuous)
        )
        self.continuous_none = nn.Parameter(torch.zeros(n_continuous, n_hidden))
        self.register_buffer("continuous_mean", torch.zeros(n_continuous))
        self.register_buffer("continuous_std", torch.ones(n_continuous))
        self.n_set_items = n_set_items
        if n_set_items:
            self.set_items = nn.Embedding(n_set_items, n_hidden)
            self.set_projection = nn.Sequential(nn.Linear(n_hidden, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_hidden))
            # the empty set (control cells) and the unknown set (not given) are two learned vectors
            self.set_empty = nn.Parameter(torch.zeros(n_hidden))
            self.set_none = nn.Parameter(torch.zeros(n_hidden))
        for embedding in self.categorical:
            nn.init.normal_(embedding.weight, std=0.02)

    @property
    def n_keys(self) -> int:
        """Number of conditions (categorical + continuous + set)."""
        return len(self.categorical) + len(self.continuous) + int(self.n_set_items > 0)

    def set_continuous_scale(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Record the training mean and standard deviation of the continuous conditions.

        Parameters
        ----------
        mean, std
            One value per continuous condition, ``(n_continuous,)``; standard deviations are kept
            at 1e-6 or more.
        """
        self.continuous_mean.copy_(mean)
        self.continuous_std.copy_(std.clamp(min=1e-6))

    def forward(
        self,
        n_cells: int,
        categorical: torch.Tensor | None,
        continuous: torch.Tensor | None,
        set_items: torch.Tensor | None,
        set_none: torch.Tensor | None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The condition vector of every cell.

        Parameters
        ----------
        n_cells
            Number of cells.
        categorical
            Codes, ``(n_cells, n_categorical)``; ``None`` without categorical conditions.
        continuous
            Values, ``(n_cells, n_continuous)``, NaN for "none"; ``None`` without continuous conditions.
        set_items
            Item indices, ``(n_cells, slots)``, -1 padding (a row of -1 is the empty set); ``None``
            without a set condition.
        set_none
            Cells whose set is not given, ``(n_cells,)``; ``None``: every cell's set is given.
        drop
            ``(n_cells, n_keys)`` booleans replacing conditions by "none" (classifier-free guidance
            training); ``None``: nothing replaced.

        Returns
        -------
        :class:`~torch.Tensor`
            ``(n_cells, n_hidden)``.
        """
        device = self.continuous_none.device
        out = torch.zeros(n_cells, self.continuous_none.shape[1], device=device)
        key = 0
        for i, embedding in enumerate(self.categorical):
            codes = categorical[:, i].long()
            if drop is not None:
                codes = torch.where(drop[:, key], embedding.num_embeddings - 1, codes)
            out = out + embedding(codes)
            key += 1
        for i, mlp in enumerate(self.continuous):
            value = continuous[:, i].float()
            none = torch.isnan(value)
            if drop is not None:
                none = none | drop[:, key]
            scaled = ((value - self.continuous_mean[i]) / self.continuous_std[i]).nan_to_num(0.0)
            out = out + torch.where(none[:, None], self.continuous_none[i], mlp(scaled[:, None]))
            key += 1
        if self.n_set_items:
            present = set_items >= 0
            items = self.set_items(set_items.clamp(min=0)) * present[..., None]
            count = present.sum(dim=1, keepdim=True)
            pooled = self.set_projection(items.sum(dim=1) / count.clamp(min=1))
            pooled = torch.where(count > 0, pooled, self.set_empty)
            none = set_none.bool() if set_none is not None else torch.zeros(n_cells, dtype=torch.bool, device=device)
            if drop is not None:
                none = none | drop[:, key]
            out = out + torch.where(none[:, None], self.set_none, pooled)
        return out
