"""Multi-head self-attention with a fast path and a weight-returning path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._docs import DOC_NN_N_HEADS, doc_params


@doc_params(n_heads=DOC_NN_N_HEADS)
class SelfAttention(nn.Module):
    """Multi-head self-attention.

    Three paths compute the same function:

    * on GPU, and on CPU for long sequences, :func:`torch.nn.functional.scaled_dot_product_attention`
      (FlashAttention on GPU), which never materialises the attention matrix;
    * on CPU for sequences up to :attr:`EXPLICIT_MAX_LENGTH`, plain batched matmuls and softmax over
      slices of the batch (see :func:`_explicit_attention`): at the small head widths of the default
      model (16) PyTorch's fused CPU kernel is several times slower than this (``benchmarks/perf.py``);
    * ``need_weights=True`` also returns the attention weights of every head, for GRNs.

    Parameters
    ----------
    n_hidden
        Width of the token representations.
    {n_heads}
    dropout
        Dropout on attention weights during training.
    """

    #: On CPU, sequences up to this length take the explicit path; longer ones take SDPA, which needs
    #: no ``length x length`` matrix per head in memory for the backward pass.
    EXPLICIT_MAX_LENGTH = 512

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
        cache: dict | None = None,
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
        cache
            Key-value cache for generating one token at a time (causal attention): an empty dict on the
            first call, which runs over the whole prefix; each later call passes one new token, which
            attends to every cached position and itself. The dict is updated in place.
        """
        batch, length, n_hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if "k" in cache:
                if length != 1:
                    raise ValueError("With a filled key-value cache, pass one new token at a time.")
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
                causal = False  # the new token may see every earlier position
            cache["k"], cache["v"] = k, v
        # boolean masks mean "may attend", as in SDPA
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        if causal and (attn_mask is not None or need_weights):
            tril = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            attn_mask = tril if attn_mask is None else attn_mask & tril
            causal = False
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            weights = _attention_weights(q, k, attn_mask)
            out = F.dropout(weights, dropout, self.training) @ v
        elif x.device.type == "cpu" and length <= self.EXPLICIT_MAX_LENGTH:
            out = _explicit_attention(q, k, v, attn_mask, causal, dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=causal)
        out = out.transpose(1, 2).reshape(batch, length, n_hidden)
        return self.out(out), weights


def _attention_weights(q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention weights ``(batch, heads, length, length)``, computed in float32."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.float().softmax(dim=-1).to(q.dtype)


# Elements of one slice's score tensor (8 MiB in bf16): small enough to stay in cache and below glibc's
# mmap threshold, so score tensors are neither spilled to memory nor page-faulted in fresh each step.
_SCORE_BUDGET = 2**22


def _explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, causal: bool, dropout: float
) -> torch.Tensor:
    """Attention as batched matmuls and a softmax, over slices of the batch.

    The scale goes on ``q`` (``length x head width``), not on the ``length x length`` scores; the
    softmax runs in the input precision (PyTorch accumulates it in float32 for bf16).
    """
    batch, heads, length, width = q.shape
    q = q * width**-0.5
    if causal:
        attn_mask = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    step = max(1, _SCORE_BUDGET // (heads * length * length))
    outs = []
    for start in range(0, batch, step):
        part = slice(start, start + step)
        scores = q[part] @ k[part].transpose(-2, -1)
        if attn_mask is not None:
            mask = attn_mask[part] if attn_mask.ndim == 4 else attn_mask
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = F.dropout(scores.softmax(dim=-1), dropout, training=dropout > 0)
        outs.append(weights @ v[part])
    return torch.cat(outs) if len(outs) > 1 else outs[0]
