"""Scanpy-style tools: train, embed, predict, and gene-level results."""

from ._genes import attention_grn, gene_embeddings, gene_programs, predict
from ._perturbation import predict_perturbation, train_perturbation
from ._pretrain import embed, pretrain

__all__ = [
    "attention_grn",
    "embed",
    "gene_embeddings",
    "gene_programs",
    "predict",
    "predict_perturbation",
    "pretrain",
    "train_perturbation",
]
