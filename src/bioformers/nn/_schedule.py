"""The noise schedule of diffusion: how much signal is left at each timestep."""

from __future__ import annotations

import math

import torch


def cosine_alphas_cumprod(n_timesteps: int, offset: float = 0.008) -> torch.Tensor:
    """Cumulative signal fraction ``ᾱ_t`` of the cosine schedule (Nichol & Dhariwal, 2021), ``t = 1..T``.

    Parameters
    ----------
    n_timesteps
        Number of timesteps ``T``.
    offset
        The small offset ``s`` that keeps the noise at the first steps above zero.

    Returns
    -------
    :class:`~torch.Tensor`
        ``float32`` ``(n_timesteps,)``, decreasing from about 1 (signal) towards 0 (noise).
    """
    steps = torch.arange(n_timesteps + 1, dtype=torch.float64) / n_timesteps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0).float()
