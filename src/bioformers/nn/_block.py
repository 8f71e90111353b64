"""Pre-LayerNorm transformer blocks."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._attention import SelfAttention


class TransformerBlock(nn.Module):
    """One pre-LayerNorm block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``.

    Pre-LN keeps training stable without a long warm-up, which matters for short runs on a laptop.
    """

    def __init__(self, n_hidden: int, n_heads: int, dropout: float = 0.1, ffn_ratio: int = 4):
        super().__init__()
        self.norm_attn = nn.LayerNorm(n_hidden)
        # no dropout on attention weights: it forces SDPA off its fused kernels onto the slow math path
        self.attn = SelfAttention(n_hidden, n_heads)
        self.norm_ffn = nn.LayerNorm(n_hidden)
        self.ffn = nn.Sequential(
            nn.Linear(n_hidden, ffn_ratio * n_hidden),
            nn.GELU(),
            nn.Linear(ffn_ratio * n_hidden, n_hidden),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        *,
        causal: bool = False,
        need_weights: bool = False,
        cache: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the updated tokens and, with ``need_weights``, the attention of every head.

        ``cache``: the key-value cache of this block's attention (see :class:`SelfAttention`).
        """
        attended, weights = self.attn(
            self.norm_attn(x), padding_mask, causal=causal, need_weights=need_weights, cache=cache
        )
        x = x + self.dropout(attended)
        x = x + self.dropout(self.ffn(self.norm_ffn(x)))
        return x, weights


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerBlock` with a final LayerNorm.

    With :attr:`activation_checkpointing` set, training keeps only each block's input and recomputes
    the block in the backward pass: activation memory no longer grows with depth, for about a third
    more compute. Worth it only for long sequences on a GPU short of memory.
    """

    def __init__(self, n_hidden: int, n_layers: int, n_heads: int, dropout: float = 0.1):
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(n_hidden, n_heads, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(n_hidden)
        self.activation_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        *,
        causal: bool = False,
        attention_layer: int | None = None,
        cache: list[dict] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode tokens; with ``attention_layer`` also return that layer's attention, ``(batch, heads, len, len)``.

        ``cache``: one key-value cache per block, for causal generation one token at a time (see
        :class:`SelfAttention`); ``[{} for _ in blocks]`` on the first call.
        """
        weights = None
        for i, block in enumerate(self.blocks):
            if cache is not None:
                x, _ = block(x, padding_mask, causal=causal, cache=cache[i])
                continue
            want = attention_layer is not None and i == attention_layer % len(self.blocks)
            if self.activation_checkpointing and self.training and torch.is_grad_enabled() and not want:
                x, layer_weights = checkpoint(block, x, padding_mask, causal=causal, use_reentrant=False)
            else:
                x, layer_weights = block(x, padding_mask, causal=causal, need_weights=want)
            if want:
                weights = layer_weights
        return self.norm(x), weights
