"""What ``bf.tl.pretrain`` writes into the AnnData after training: in memory, from disk or fine-tuned alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scanpy import logging as logg

from .._record import params_record

if TYPE_CHECKING:
    from anndata import AnnData

    from .._keys import Keys


def write_results(adata: AnnData, model, keys: Keys, binned: tuple | None, params: dict, copy: bool, *, cells=None):
    """Embed with the trained model and write embedding, record and binned layer into ``adata`` (rank 0 only).

    ``cells``: the model trained from disk and holds no AnnData; ``adata`` is embedded a chunk at a time,
    its genes matched to the model's by this alignment.
    """
    if not model.is_global_zero:
        # distributed run (e.g. strategy="ddp"): every process reaches this line, rank 0 writes the rest
        logg.info("not global rank 0 of a distributed run: trained, only the binned layer written here")
        write_binned(adata, keys.binned, binned)
        return (adata, model) if copy else model
    embedding = (
        model.get_latent_representation() if cells is None else model.get_latent_representation(adata, genes=cells)
    )
    record = {
        "params": params_record(
            **params, max_epochs=len(model.loss_history()["train_loss"]), model=type(model).__name__
        ),
        "history": model.loss_history(),
    }
    write_binned(adata, keys.binned, binned)
    adata.obsm[keys.embedding] = embedding
    adata.uns[keys.record] = record
    logg.info(f"added\n    'obsm[{keys.embedding!r}]', cell embeddings\n    'uns[{keys.record!r}]', training record")
    return (adata, model) if copy else model


def write_binned(adata: AnnData, key: str, binned: tuple | None) -> None:
    """Write the binned layer and its record, computed on a private AnnData (nothing when it was not binned)."""
    if binned is not None:
        adata.layers[key], adata.uns[key] = binned
