"""Transformer blocks conditioned through their LayerNorms (adaptive LayerNorm), and the denoiser built from them."""

from __future__ import annotations

import torch
from torch import nn

from .._docs import DOC_NN_N_HEADS, doc_params
from ._attention import SelfAttention
from ._embedding import timestep_embedding


@doc_params(n_heads=DOC_NN_N_HEADS)
class AdaLNBlock(nn.Module):
    """A pre-LayerNorm transformer block whose norms and residual gates are set by a condition vector.

    ``scale``, ``shift`` and ``gate`` of both sub-layers come from a linear map of the condition,
    initialised at zero, so every block starts as the identity (adaLN-Zero, Peebles & Xie, 2023).

    Parameters
    ----------
    n_hidden
        Width of the tokens and of the condition vector.
    {n_heads}
    dropout
        Dropout on the output of both sub-layers.
    ffn_ratio
        Width of the feed-forward layer, in multiples of ``n_hidden``.
    """

    def __init__(self, n_hidden: int, n_heads: int, dropout: float = 0.0, ffn_ratio: int = 4):
        super().__init__()
        self.norm_attn = nn.LayerNorm(n_hidden, elementwise_affine=False)
        self.attn = SelfAttention(n_hidden, n_heads)
        self.norm_ffn = nn.LayerNorm(n_hidden, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(n_hidden, ffn_ratio * n_hidden), nn.GELU(), nn.Linear(ffn_ratio * n_hidden, n_hidden)
        )
        self.dropout = nn.Dropout(dropout)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(n_hidden, 6 * n_hidden))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The updated tokens.

        Parameters
        ----------
        x
            Tokens, ``(batch, length, n_hidden)``.
        condition
            One condition vector per sequence, ``(batch, n_hidden)``.

        Returns
        -------
        :class:`~torch.Tensor`
            Shaped like ``x``.
        """
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(condition)[:, None].chunk(6, dim=-1)
        attended, _ = self.attn(self.norm_attn(x) * (1 + scale1) + shift1)
        x = x + gate1 * self.dropout(attended)
        return x + gate2 * self.dropout(self.ffn(self.norm_ffn(x) * (1 + scale2) + shift2))


class Denoiser(nn.Module):
    """Predicts the noise in latent tokens from the noisy tokens, the timestep and the condition vector.

    A diffusion transformer (DiT) over a fixed number of tokens: the tokens are projected to
    ``n_hidden`` and given a learned position, the timestep's sinusoidal embedding goes through an
    MLP and is added to the condition vector, and that sum steers every :class:`AdaLNBlock` and the
    final LayerNorm. The output projection starts at zero, so the first estimate is no noise.

    Parameters
    ----------
    n_tokens
        Number of tokens of each sequence.
    token_dim
        Width of each token, in and out.
    n_hidden
        Width of the blocks and of the condition vector.
    n_layers
        Number of blocks.
    n_heads
        Attention heads of each block.
    dropout
        Dropout in the blocks.
    """

    def __init__(self, n_tokens: int, token_dim: int, n_hidden: int, n_layers: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_hidden = n_hidden
        self.input = nn.Linear(token_dim, n_hidden)
        self.position = nn.Parameter(torch.randn(n_tokens, n_hidden) * 0.02)
        self.time = nn.Sequential(nn.Linear(n_hidden, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_hidden))
        self.blocks = nn.ModuleList(AdaLNBlock(n_hidden, n_heads, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(n_hidden, elementwise_affine=False)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(n_hidden, 2 * n_hidden))
        self.output = nn.Linear(n_hidden, token_dim)
        for layer in (self.final_modulation[-1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The noise estimate.

        Parameters
        ----------
        z
            Noisy tokens, ``(batch, n_tokens, token_dim)``.
        t
            Integer timestep of each sequence, ``(batch,)``.
        condition
            Condition vectors, ``(batch, n_hidden)``.

        Returns
        -------
        :class:`~torch.Tensor`
            Shaped like ``z``.
        """
        c = self.time(timestep_embedding(t, self.n_hidden)) + condition
        x = self.input(z) + self.position
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)
        return self.output(self.norm(x) * (1 + scale) + shift)
