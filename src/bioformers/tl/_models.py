"""Which model a tool needs: a clear error naming how to train it, instead of a missing method."""

from __future__ import annotations

from ..model import BioFormer, BioFormerDecoder


def require_encoder(model, what: str) -> None:
    """Raise a ``ValueError`` saying that ``what`` needs the encoder (:class:`~bioformers.BioFormer`)."""
    if not isinstance(model, BioFormer):
        raise ValueError(
            f"{what} needs the encoder-only BioFormer (masked gene modelling, CLS expression decoder); this model is a "
            f"{type(model).__name__}. Train one with `bf.tl.pretrain(adata)` (architecture='encoder', the default)."
        )


def require_decoder(model, what: str) -> None:
    """Raise a ``ValueError`` saying that ``what`` needs the decoder (:class:`~bioformers.BioFormerDecoder`)."""
    if not isinstance(model, BioFormerDecoder):
        raise ValueError(
            f"{what} needs the decoder-only BioFormer; this model is a {type(model).__name__}. Train one with "
            "`bf.tl.pretrain(adata, architecture='decoder')` (add `labels_key=` to condition on cell types)."
        )
