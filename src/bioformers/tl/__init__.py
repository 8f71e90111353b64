"""Scanpy-style tools: train, embed."""

from ._pretrain import embed, pretrain

__all__ = ["embed", "pretrain"]
