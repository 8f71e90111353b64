"""Turning rows of AnnData into token batches: chunked reading and binning, gene selection, masking."""

from ._corpus import StreamedCells, StreamingDataModule, epoch_order, shard
from ._perturbation import (
    COMBINATION_SEPARATOR,
    LOG_TARGET_SUM,
    PerturbationPairs,
    log_normalize,
    perturbation_targets,
)
from ._stream import DEFAULT_CHUNK_SIZE, binned_batches
from ._tokenize import cell_uniforms, mask_positions, n_masked, order_by_value, prediction_masks, select_genes
from ._views import thin, value_binning_args, value_bins

__all__ = [
    "COMBINATION_SEPARATOR",
    "DEFAULT_CHUNK_SIZE",
    "LOG_TARGET_SUM",
    "PerturbationPairs",
    "StreamedCells",
    "StreamingDataModule",
    "binned_batches",
    "cell_uniforms",
    "epoch_order",
    "log_normalize",
    "mask_positions",
    "n_masked",
    "order_by_value",
    "perturbation_targets",
    "prediction_masks",
    "select_genes",
    "shard",
    "thin",
    "value_binning_args",
    "value_bins",
]
