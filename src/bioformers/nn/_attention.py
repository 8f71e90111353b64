"""Multi-head self-attention with a fast path and a weight-returning path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention.

    The fast path calls :func:`torch.nn.functional.scaled_dot_product_attention` (FlashAttention on
    GPU, fused kernels on CPU) and never materialises the attention matrix. ``need_weights=True``
    takes an explicit path that also returns the attention weights of every head, for GRNs.

    Parameters
    ----------
    n_hidden
        Width of the token representations.
    n_heads
        Number of attention heads; must divide ``n_hidden``.
    dropout
        Dropout on attention weights during training.
    """

    def __init__(self, n_hidden: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if n_hidden % n_heads:
            raise ValueError(f"`n_hidden` ({n_hidden}) must be divisible by `n_heads` ({n_heads}).")
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(n_hidden, 3 * n_hidden)
        self.out = nn.Linear(n_hidden, n_hidden)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        *,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend over the sequence.

        Parameters
        ----------
        x
            Tokens, shape ``(batch, length, n_hidden)``.
        padding_mask
            ``True`` at padded positions, shape ``(batch, length)``; padded keys get no attention.
        causal
            Each position attends only to itself and earlier positions.
        need_weights
            Also return the attention weights of every head, ``(batch, n_heads, length, length)``.
        """
        batch, length, n_hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        attn_mask = None
        if padding_mask is not None:
            # boolean masks in SDPA mean "may attend"
            attn_mask = ~padding_mask[:, None, None, :]
            if causal:
                attn_mask = attn_mask & torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
                causal = False
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            if causal:
                attn_mask = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = scores.float().softmax(dim=-1).to(q.dtype)
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=causal)
            weights = None
        out = out.transpose(1, 2).reshape(batch, length, n_hidden)
        return self.out(out), weights
