"""Scanpy-style tools: train, embed, predict, and gene-level results."""

from ._annotate import annotate
from ._generate import generate
from ._genes import attention_grn, gene_embeddings, gene_programs, predict
from ._grn import grn
from ._in_silico import in_silico_perturb
from ._perturbation import predict_perturbation, train_perturbation
from ._pretrain import embed, pretrain

__all__ = [
    "annotate",
    "attention_grn",
    "embed",
    "gene_embeddings",
    "gene_programs",
    "generate",
    "grn",
    "in_silico_perturb",
    "predict",
    "predict_perturbation",
    "pretrain",
    "train_perturbation",
]
