"""``BioFormerDecoder``: the decoder-only network as a scvi-tools model; it generates cells."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from scvi.model.base import BaseModelClass

from .._docs import DOC_ADATA_REGISTERED, doc_params
from ..module import BioFormerDecoderModule
from ..train import WarmupCosineTrainingPlan
from .base import GenerationMixin, QueryMixin, SaveLoadMixin, TokenSetupMixin, TokenTrainingMixin

if TYPE_CHECKING:
    from anndata import AnnData


@doc_params(adata=DOC_ADATA_REGISTERED)
class BioFormerDecoder(GenerationMixin, QueryMixin, TokenSetupMixin, TokenTrainingMixin, SaveLoadMixin, BaseModelClass):
    """A decoder-only BioFormer: causal attention over each cell's genes in descending order of value.

    The model predicts each next gene and its bin, so it generates cells
    (:meth:`generate`, :func:`bioformers.tl.generate`), conditioned on the registered ``labels_key``
    and ``batch_key`` through tokens after its start token. Its cell embedding is the state of the
    last gene, which has seen the whole cell. See :class:`~bioformers.module.BioFormerDecoderModule`.

    ``bf.tl.pretrain(adata, architecture="decoder")`` builds and trains one; ``bf.BioFormer.load``
    opens its saved directories as well as this class's own ``load``.

    Parameters
    ----------
    {adata}
        Set up without ``perturbation_key``.
    n_hidden, n_layers, n_heads, dropout, max_seq_len, value_encoder, n_bins
        As in :class:`~bioformers.BioFormer`.

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> bf.pp.bin(adata)
    >>> bf.BioFormerDecoder.setup_anndata(adata, labels_key="cell_type")
    >>> model = bf.BioFormerDecoder(adata, n_hidden=16, n_layers=1, n_heads=2)
    >>> model.train(max_epochs=1, batch_size=32)
    >>> model.generate(2, labels=["type_0", None]).shape
    (2, 50)
    """

    _module_cls = BioFormerDecoderModule
    _training_plan_cls = WarmupCosineTrainingPlan
    #: Causal attention over genes in descending order of value, next-gene objective.
    architecture = "decoder"

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_hidden: int = 64,
        n_layers: int = 4,
        n_heads: int = 2,
        dropout: float = 0.1,
        max_seq_len: int = 256,
        value_encoder: Literal["linear", "embedding"] = "embedding",
        n_bins: int | None = None,
    ):
        super().__init__(adata, registry)
        if self.registry_["setup_args"].get("perturbation_key") is not None:
            raise ValueError(
                "Perturbation fine-tuning needs the encoder: set up the AnnData without `perturbation_key` for a "
                "decoder, or use `bf.BioFormer`."
            )
        n_bins = self._n_bins(n_bins)
        self._init_tokens(adata)
        self.module = self._module_cls(
            self.genes_.size,
            n_bins,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            dropout=dropout,
            max_seq_len=max_seq_len,
            value_encoder=value_encoder,
            n_labels=self._n_categories("labels"),
            n_batch=self._n_categories("batch"),
        )
        self._model_summary_string = (
            f"BioFormerDecoder: {self.genes_.size} genes, {n_bins} bins, n_hidden={n_hidden}, n_layers={n_layers}, "
            f"n_heads={n_heads}, max_seq_len={max_seq_len}, value_encoder={value_encoder!r}"
        )
        self.init_params_ = self._get_init_params(locals())
