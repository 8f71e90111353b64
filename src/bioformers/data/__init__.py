"""Turning rows of binned expression into token sequences: gene selection and masking."""

from ._tokenize import cell_uniforms, mask_positions, prediction_masks, select_genes

__all__ = ["cell_uniforms", "mask_positions", "prediction_masks", "select_genes"]
