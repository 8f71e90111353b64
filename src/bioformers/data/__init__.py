"""Turning rows of AnnData into token batches: chunked reading and binning, gene selection, masking."""

from ._stream import DEFAULT_CHUNK_SIZE, binned_batches
from ._tokenize import cell_uniforms, mask_positions, n_masked, prediction_masks, select_genes

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "binned_batches",
    "cell_uniforms",
    "mask_positions",
    "n_masked",
    "prediction_masks",
    "select_genes",
]
