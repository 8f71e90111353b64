"""The BioFormer network: gene + value tokens, a CLS token, a transformer encoder, two heads."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.distributions import NegativeBinomial
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from .._docs import (
    DOC_BINS,
    DOC_EXTERNAL,
    DOC_LOSS_OUTPUTS,
    DOC_N_BINS,
    DOC_NETWORK,
    DOC_OBJECTIVE,
    DOC_RETURNS_EMBED,
    doc_params,
    doc_returns_loss,
)
from .._keys import COUNTS_KEY
from ..data import mask_positions, n_masked, select_genes, thin, value_bins
from ..nn import TransformerEncoder, ValueEncoder
from ._objectives import redundancy_reduction

#: Smallest share of a cell's molecules that a thinned view keeps.
VIEW_MIN_DEPTH = 0.3


@doc_params(n_bins=DOC_N_BINS, network=DOC_NETWORK, objective=DOC_OBJECTIVE)
class BioFormerModule(BaseModuleClass):
    """Encoder-only BioFormer over binned expression.

    A cell is the sequence ``[CLS, g1, ..., gM]``; each gene position sums the gene's identity
    embedding and its value embedding. These objectives train it:

    * masked gene modelling: an MLP head predicts the bin of each masked gene (cross-entropy);
    * expression decoding from CLS: a linear map of the CLS state predicts the bin of every gene
      of the cell (MSE). It forces the cell embedding to summarise the whole profile, which masked
      modelling alone does not (scGPT's GEPC plays the same role). The decoder is also given the
      cell's depth (log number of expressed genes), as scVI's decoder is given library size, so
      the embedding need not spend its geometry on depth.
    * with ``count_weight``, count decoding from CLS: the cell's raw counts under a negative binomial
      whose mean is the library size times gene shares decoded from CLS and the batch token, as
      scVI's decoder (:meth:`count_nll`). It raised how well decoded expression tracks the data
      (PBMC 3k) and, with the batch token, how well three 10x chemistries mix (``benchmarks/README.md``).

    The CLS input is a learned token plus a linear projection of the cell's visible binned profile
    over all genes (masked genes hidden). Without it, CLS started from a constant and after a few
    hundred steps on PBMC 3k carried almost no cell-type signal (KMeans AvgBIO 0.20 vs 0.58 with it,
    2 layers, 200 steps); the projection gives the cell state a direct path to the whole profile,
    attention refines it.

    The expression decoder is linear and its loss weighted 10 against masked modelling: with an MLP
    decoder and weight 1, each PBMC cell type split into islands by depth (Leiden AvgBIO 0.49);
    linear, depth-aware and weighted 10 they are whole (0.79, PCA 0.77). See ``benchmarks/``.

    Parameters
    ----------
    n_genes
        Size of the gene vocabulary (genes of the AnnData).
    {n_bins}
    {network}
    {objective}
    n_extra_genes
        Gene tokens beyond the measured genes: perturbation targets that were not measured. They
        have an identity embedding but never a value (their value is the MASK value).
    n_batch
        Number of batches (0: no batch token). Each batch gets a learned token that the output heads
        read (the expression decoder and the masked-gene head), never the cell encoder: batch effects
        are explained by the token, so the CLS embedding need not carry them (as scVI's decoder, not
        its encoder, gets the batch), and a cell embeds the same without knowing its batch.
    batch_adversarial_weight
        Weight of an adversarial batch classifier on CLS (gradient reversal, as scGPT's DAR); 0 turns
        it off. Pushes batch information out of the embedding.
    count_weight
        Weight of the count objective (0: off, and no count decoder): the negative-binomial
        likelihood (:meth:`count_nll`) of the cell's raw counts, whose mean is the library size times
        gene shares decoded from CLS and the batch token (:meth:`decode_counts`). Needs the raw counts
        in the minibatch (registry key ``"counts"``).
    view_weight
        Weight of the two-view objective (0: off): the CLS state of the masked cell and of its counts
        thinned to a random depth (``bioformers.data.thin``), binned again, must agree under
        :func:`~bioformers.module.redundancy_reduction` (Barlow Twins) of a small projector's
        outputs. Needs the raw counts.
    view_binning
        How thinned views are binned: ``target_sum``, ``cutoff`` and ``bins_per_octave`` of the
        training data's value binning (``bioformers.data.value_bins``).

    Examples
    --------
    >>> import torch
    >>> from bioformers.module import BioFormerModule
    >>> module = BioFormerModule(n_genes=30, n_bins=10, n_hidden=16, n_layers=1, n_heads=2, max_seq_len=16).eval()
    >>> bins = torch.randint(0, 10, (4, 30))
    >>> module.embed(bins).shape
    torch.Size([4, 16])
    >>> module.predict_expression(bins).shape
    torch.Size([4, 30])
    """

    def __init__(
        self,
        n_genes: int,
        n_bins: int,
        *,
        n_hidden: int = 64,
        n_layers: int = 4,
        n_heads: int = 2,
        dropout: float = 0.1,
        max_seq_len: int = 256,
        value_encoder: Literal["linear", "embedding"] = "embedding",
        mask_ratio: float = 0.1,
        nonzero_ratio: float = 0.5,
        expression_weight: float = 10.0,
        n_extra_genes: int = 0,
        n_batch: int = 0,
        batch_adversarial_weight: float = 0.0,
        count_weight: float = 0.0,
        view_weight: float = 0.0,
        view_binning: dict | None = None,
    ):
        super().__init__()
        check_module_arguments(
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            max_seq_len=max_seq_len,
            value_encoder=value_encoder,
            mask_ratio=mask_ratio,
            nonzero_ratio=nonzero_ratio,
            expression_weight=expression_weight,
        )
        self.n_genes = n_genes
        self.n_bins = n_bins
        self.max_seq_len = max_seq_len
        self.mask_ratio = mask_ratio
        self.nonzero_ratio = nonzero_ratio
        self.expression_weight = expression_weight
        self.n_extra_genes = n_extra_genes
        self.n_batch = n_batch
        self.batch_adversarial_weight = batch_adversarial_weight
        self.count_weight = count_weight
        self.view_weight = view_weight
        self.view_binning = dict(view_binning or {})

        self.gene_embedding = nn.Embedding(n_genes + n_extra_genes, n_hidden)
        self.value_encoder = ValueEncoder(n_bins, n_hidden, value_encoder)
        self.cls_token = nn.Parameter(torch.zeros(n_hidden))
        self.encoder = TransformerEncoder(n_hidden, n_layers, n_heads, dropout)
        self.bin_head = nn.Sequential(
            nn.Linear(n_hidden, n_hidden), nn.GELU(), nn.LayerNorm(n_hidden), nn.Linear(n_hidden, n_bins)
        )
        self.profile_encoder = nn.Linear(n_genes, n_hidden, bias=False)
        self.batch_embedding = nn.Embedding(n_batch, n_hidden) if n_batch else None
        self.expression_head = nn.Linear(n_hidden + 1 + (n_hidden if n_batch else 0), n_genes)
        self.count_head = None
        if count_weight > 0:
            # scVI's decoder: gene frequencies from the cell state and batch, times the library size
            self.count_head = nn.Linear(n_hidden + (n_hidden if n_batch else 0), n_genes)
            self.log_dispersion = nn.Parameter(torch.zeros(n_genes))
        self.view_projector = None
        if view_weight > 0:
            self.view_projector = nn.Sequential(
                nn.Linear(n_hidden, 2 * n_hidden), nn.GELU(), nn.Linear(2 * n_hidden, 2 * n_hidden)
            )
        self.batch_classifier = None
        if n_batch and batch_adversarial_weight > 0:
            self.batch_classifier = nn.Sequential(
                nn.Linear(n_hidden, n_hidden), nn.GELU(), nn.Linear(n_hidden, n_batch)
            )
        self.apply(_init_weights)
        nn.init.normal_(self.cls_token, std=0.02)

    # --- scvi-tools module protocol -------------------------------------------------------------
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        return {"bins": tensors[REGISTRY_KEYS.X_KEY], "counts": tensors.get(COUNTS_KEY)}

    @auto_move_data
    @doc_params(bins=DOC_BINS)
    def inference(
        self, bins: torch.Tensor, masked: bool = True, counts: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Select each cell's genes, mask some of them (``masked=True``) and encode.

        Outside training mode, gene selection and masking are fixed per cell (see
        :mod:`bioformers.data`), so validation loss and embeddings are reproducible.

        Parameters
        ----------
        {bins}
        masked
            Mask positions for masked gene modelling; ``False`` encodes the whole sequence.

        Returns
        -------
        dict
            ``cls`` ``(cells, n_hidden)``, ``hidden`` ``(cells, length, n_hidden)``, ``values``
            ``(cells, length)``, ``mask`` (``None`` unmasked) and ``bins``.
        """
        bins = bins.long()
        genes, values = select_genes(bins, self.max_seq_len - 1, random=self.training)
        mask = mask_positions(values, self.mask_ratio, self.nonzero_ratio, random=self.training) if masked else None
        hidden, _ = self.encode(genes, values, mask, profile=self._visible_profile(bins, genes, values, mask))
        out = {"cls": hidden[:, 0], "hidden": hidden[:, 1:], "values": values, "mask": mask, "bins": bins}
        if self.view_projector is not None and self.training and counts is not None:
            out["cls_view"] = self._thinned_view(counts)
        return out

    def _thinned_view(self, counts: torch.Tensor) -> torch.Tensor:
        """CLS of a second view of each cell: its counts thinned to a random depth, binned again, encoded."""
        keep = torch.empty(len(counts), device=counts.device).uniform_(VIEW_MIN_DEPTH, 1.0)
        bins = value_bins(thin(counts, keep), max_bin=self.n_bins - 1, **self.view_binning)
        genes, values = select_genes(bins, self.max_seq_len - 1, random=True)
        hidden, _ = self.encode(genes, values, None, profile=self._visible_profile(bins, genes, values, None))
        return hidden[:, 0]

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict[str, torch.Tensor | None]:
        batch_index = tensors[REGISTRY_KEYS.BATCH_KEY] if self.n_batch else None
        return {k: inference_outputs[k] for k in ("cls", "hidden", "mask", "bins")} | {"batch_index": batch_index}

    def generative(
        self,
        cls: torch.Tensor,
        hidden: torch.Tensor,
        mask: torch.Tensor | None,
        bins: torch.Tensor,
        batch_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Bin logits at the masked positions and the expression decoded from CLS and the cell's depth.

        Every cell has the same number of masked positions (:func:`~bioformers.data.n_masked`), so they
        are gathered as a ``(cells, n_masked)`` block rather than by boolean indexing, whose
        data-dependent shape would make the GPU wait for the host at every step.

        Parameters
        ----------
        cls, hidden, mask, bins
            As :meth:`inference` returns them.
        batch_index
            Each cell's batch, ``(cells, 1)``; ``None`` without batch tokens.

        Returns
        -------
        dict
            ``expression`` ``(cells, n_genes)``; with a mask also ``masked_positions`` and
            ``bin_logits`` ``(cells, n_masked, n_bins)``.
        """
        batch = self.batch_token(batch_index, len(cls), cls.dtype)
        out = {"expression": self.decode_expression(cls, cell_depth(bins), batch)}
        if self.count_head is not None:
            out["count_logits"] = self.decode_counts(cls, batch)
        if mask is not None:
            positions = mask.to(torch.float32).topk(n_masked(mask.shape[1], self.mask_ratio), dim=1).indices
            out["masked_positions"] = positions
            masked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
            out["bin_logits"] = self.predict_bins(masked, batch)
        return out

    @doc_params(
        outputs=DOC_LOSS_OUTPUTS,
        returns_loss=doc_returns_loss("``mlm_loss``, ``expression_loss`` (and ``batch_loss``)"),
    )
    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        """Cross-entropy over bins at masked positions plus the weighted expression MSE.

        Parameters
        ----------
        tensors
            The minibatch (with the batch index when the network has batch tokens).
        {outputs}

        Returns
        -------
        {returns_loss}
        """
        positions = generative_outputs["masked_positions"]
        target = inference_outputs["values"].gather(1, positions).clamp(max=self.n_bins - 1)
        logits = generative_outputs["bin_logits"].float()
        mlm_per_cell = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(dim=1)

        bins = inference_outputs["bins"].clamp(max=self.n_bins - 1).float()
        expr_per_cell = (generative_outputs["expression"].float() - bins).pow(2).mean(dim=1)

        per_cell = mlm_per_cell + self.expression_weight * expr_per_cell
        extra = {"mlm_loss": mlm_per_cell.mean().detach(), "expression_loss": expr_per_cell.mean().detach()}
        if "cls_view" in inference_outputs:
            view = redundancy_reduction(
                self.view_projector(inference_outputs["cls"]).float(),
                self.view_projector(inference_outputs["cls_view"]).float(),
            )
            per_cell = per_cell + self.view_weight * view
            extra["view_loss"] = view.detach()
        if self.count_head is not None:
            count_per_cell = self.count_nll(generative_outputs["count_logits"], tensors[COUNTS_KEY])
            per_cell = per_cell + self.count_weight * count_per_cell
            extra["count_loss"] = count_per_cell.mean().detach()
        if self.batch_classifier is not None:
            # gradient reversal: the classifier learns to tell batches apart, the encoder to prevent it
            logits = self.batch_classifier(_reverse_gradient(inference_outputs["cls"])).float()
            batch_per_cell = F.cross_entropy(logits, tensors[REGISTRY_KEYS.BATCH_KEY].long().view(-1), reduction="none")
            per_cell = per_cell + self.batch_adversarial_weight * batch_per_cell
            extra["batch_loss"] = batch_per_cell.mean().detach()
        return LossOutput(loss=per_cell.mean(), reconstruction_loss=per_cell, extra_metrics=extra)

    @auto_move_data
    @doc_params(bins=DOC_BINS)
    def sample(
        self, bins: torch.Tensor, gene_mask: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw the genes in ``gene_mask`` from the masked-modelling head, given the rest of each cell.

        The encoder generates no cell from nothing (that is the decoder-only network's
        :meth:`~bioformers.module.BioFormerDecoderModule.sample`); what it can sample is the value of
        hidden genes given the visible ones, one draw per gene from its predicted bin distribution.

        Parameters
        ----------
        {bins}
        gene_mask
            True at the genes to draw, ``(cells, n_genes)``; at most ``max_seq_len - 1`` per cell.
        generator
            Source of randomness of the draws.

        Returns
        -------
        :class:`~torch.Tensor`
            ``bins`` with the masked genes replaced by draws, ``(cells, n_genes)``.
        """
        rows, columns, probs = self._masked_probabilities(bins.long(), gene_mask.bool())
        drawn = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        sampled = bins.long().clone()
        sampled[rows, columns] = drawn
        return sampled

    # --- building blocks used by the model class ---------------------------------------------------
    def _visible_profile(self, bins, genes, values, mask) -> torch.Tensor:
        """The cell's scaled bins over all genes, with masked genes hidden (set to 0)."""
        scale = 1.0 / max(self.n_bins - 1, 1)
        profile = bins.clamp(max=self.n_bins - 1).float() * scale
        if mask is not None:
            profile = profile.scatter(1, genes, torch.where(mask, 0.0, values.float() * scale))
        return profile

    def encode(
        self,
        genes: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        profile: torch.Tensor,
        external: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        attention_layer: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode ``[CLS, genes...]``; returns hidden states ``(cells, 1 + length, n_hidden)``.

        The CLS input is a learned token plus a linear projection of the cell's visible profile
        over all genes, so the cell state starts from the whole cell, not only the sequence.

        Parameters
        ----------
        genes, values
            Gene indices and their bins, ``(cells, length)``.
        mask
            True at masked positions (their value is hidden); ``None``: none.
        profile
            The cell's visible binned profile over all genes, scaled to [0, 1], ``(cells, n_genes)``.
        external
            Each position's external-token category, like ``genes`` (:meth:`external_tokens`); ``None``: none.
        padding_mask
            True at positions that are padding (no attention to them); ``None``: none.
        attention_layer
            Also return the attention weights of this block.

        Returns
        -------
        hidden : :class:`~torch.Tensor`
            ``(cells, 1 + length, n_hidden)``, CLS first.
        attention : :class:`~torch.Tensor` or None
            ``(cells, heads, 1 + length, 1 + length)`` with ``attention_layer``.
        """
        tokens = self.gene_embedding(genes) + self.value_encoder(values, mask)
        if external is not None:
            tokens = tokens + self.external_tokens(external)
        cls = (self.cls_token + self.profile_encoder(profile)).to(tokens.dtype).unsqueeze(1)
        if padding_mask is not None:
            padding_mask = torch.cat([padding_mask.new_zeros(padding_mask.shape[0], 1), padding_mask], dim=1)
        return self.encoder(torch.cat([cls, tokens], dim=1), padding_mask, attention_layer=attention_layer)

    @doc_params(external=DOC_EXTERNAL)
    def external_tokens(self, external: torch.Tensor) -> torch.Tensor:
        """Embedding of each position's external-token category; only networks with external tokens have them.

        Parameters
        ----------
        {external}

        Raises
        ------
        ValueError
            Always here; :class:`~bioformers.module.BioFormerPerturbationModule` has external tokens.
        """
        raise ValueError("This network has no external tokens: use `BioFormerPerturbationModule` for perturbations.")

    def batch_token(self, batch_index: torch.Tensor | None, n_cells: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Each cell's batch token, ``(cells, n_hidden)``; the mean token when the batch is not given.

        ``None`` for a network without batch tokens. The mean token gives batch-averaged predictions,
        e.g. for query cells from a batch the model never saw.

        Parameters
        ----------
        batch_index
            Each cell's batch code; ``None``: not given.
        n_cells
            Number of cells (for the mean token).
        dtype
            Floating-point type of the result.

        Returns
        -------
        :class:`~torch.Tensor` or None
            ``(cells, n_hidden)``.
        """
        if self.batch_embedding is None:
            return None
        if batch_index is None:
            return self.batch_embedding.weight.mean(dim=0).to(dtype).expand(n_cells, -1)
        return self.batch_embedding(batch_index.long().view(-1)).to(dtype)

    def decode_expression(
        self, cls: torch.Tensor, depth: torch.Tensor, batch: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predicted bin of every gene, ``(cells, n_genes)``, from CLS, the cell's depth and the batch token.

        Parameters
        ----------
        cls
            CLS states, ``(cells, n_hidden)``.
        depth
            Log of the number of expressed genes of each cell, ``(cells,)``.
        batch
            Batch tokens from :meth:`batch_token`; ``None`` without batch tokens.

        Returns
        -------
        :class:`~torch.Tensor`
            ``(cells, n_genes)``.
        """
        parts = [cls, depth.to(cls.dtype)[:, None]] + ([] if batch is None else [batch.to(cls.dtype)])
        return self.expression_head(torch.cat(parts, dim=1))

    def decode_counts(self, cls: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every gene's share of the cell's counts, ``(cells, n_genes)``, from CLS and the batch token.

        Their softmax is the cell's normalised expression (scVI's ``px_scale``); times the library
        size it is the mean of the negative binomial the counts are scored under (:meth:`count_nll`).

        Parameters
        ----------
        cls
            CLS states, ``(cells, n_hidden)``.
        batch
            Batch tokens from :meth:`batch_token`; ``None`` without batch tokens.

        Returns
        -------
        :class:`~torch.Tensor`
            ``(cells, n_genes)``.
        """
        parts = [cls] + ([] if batch is None else [batch.to(cls.dtype)])
        return self.count_head(torch.cat(parts, dim=1))

    @torch.no_grad()
    def start_count_decoder(self, shares) -> None:
        """Start the count decoder at the data's mean cell: its bias becomes the log of each gene's mean share.

        From a zero bias every gene starts at the same share, and a few hundred optimiser steps at a
        learning rate of 1e-3 cannot move logits the several units that separate rare genes from
        abundant ones; scVI trains for thousands of steps, bioformers' defaults for hundreds.

        Parameters
        ----------
        shares
            Mean share of each gene in a cell's counts, ``(n_genes,)``.
        """
        shares = torch.as_tensor(shares, dtype=torch.float32)
        self.count_head.bias.copy_(torch.log(shares + 1e-8 + 1e-3 / shares.numel()))

    def count_nll(self, count_logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Negative-binomial negative log-likelihood of each cell's counts, averaged over genes, ``(cells,)``.

        The mean is the decoded share of each gene times the cell's observed library size, the
        dispersion one learned value per gene, as in scVI's ``gene`` dispersion.
        """
        counts = counts.float()
        library = counts.sum(dim=1, keepdim=True)
        mu = library * count_logits.float().softmax(dim=-1)
        nb = NegativeBinomial(mu=mu, theta=self.log_dispersion.exp(), validate_args=False)
        return -nb.log_prob(counts).mean(dim=1)

    def predict_bins(self, hidden: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Bin logits of the genes at ``hidden``, given each cell's batch token.

        Parameters
        ----------
        hidden
            Hidden states of gene positions, ``(cells, positions, n_hidden)``.
        batch
            Batch tokens from :meth:`batch_token`; ``None`` without batch tokens.

        Returns
        -------
        :class:`~torch.Tensor`
            ``(cells, positions, n_bins)``.
        """
        if batch is not None:
            hidden = hidden + batch.to(hidden.dtype)[:, None]
        return self.bin_head(hidden)

    @auto_move_data
    @doc_params(bins=DOC_BINS, returns_embed=DOC_RETURNS_EMBED)
    def embed(self, bins: torch.Tensor) -> torch.Tensor:
        """CLS embedding of unmasked cells.

        Parameters
        ----------
        {bins}

        Returns
        -------
        {returns_embed}
        """
        return self.inference(bins, masked=False)["cls"]

    @auto_move_data
    @doc_params(bins=DOC_BINS)
    def predict_expression(self, bins: torch.Tensor) -> torch.Tensor:
        """Expected bin of every gene decoded from the unmasked cell's CLS state.

        Parameters
        ----------
        {bins}

        Returns
        -------
        :class:`~torch.Tensor`
            ``float32`` ``(cells, n_genes)``, clipped to the bin range.
        """
        cls = self.inference(bins, masked=False)["cls"]
        batch = self.batch_token(None, len(cls), cls.dtype)
        return self.decode_expression(cls, cell_depth(bins.long()), batch).float().clamp(0, self.n_bins - 1)

    @auto_move_data
    @doc_params(bins=DOC_BINS)
    def normalized_expression(self, bins: torch.Tensor) -> torch.Tensor:
        """Every gene's share of the cell's counts, decoded from the unmasked cell's CLS state (count decoder).

        Parameters
        ----------
        {bins}

        Returns
        -------
        :class:`~torch.Tensor`
            ``float32`` ``(cells, n_genes)``; each row sums to 1. Batch-averaged with batch tokens.
        """
        cls = self.inference(bins, masked=False)["cls"]
        batch = self.batch_token(None, len(cls), cls.dtype)
        return self.decode_counts(cls, batch).float().softmax(dim=-1)

    @auto_move_data
    @doc_params(bins=DOC_BINS)
    def predict_masked(self, bins: torch.Tensor, gene_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the genes in ``gene_mask`` from the rest of the cell, with their values hidden.

        Masked genes always enter the sequence (the caller keeps them below ``max_seq_len`` per cell);
        the other positions are chosen as usual.

        Parameters
        ----------
        {bins}
        gene_mask
            True at the genes to predict, ``(cells, n_genes)``.

        Returns
        -------
        expected : :class:`~torch.Tensor`
            Expected bin, ``(cells, n_genes)``; NaN where not masked.
        best : :class:`~torch.Tensor`
            Most likely bin, ``(cells, n_genes)``; -1 where not masked.
        """
        bins = bins.long()
        rows, columns, probs = self._masked_probabilities(bins, gene_mask.bool())
        expected = torch.full(bins.shape, float("nan"), device=bins.device)
        best = torch.full(bins.shape, -1, dtype=torch.long, device=bins.device)
        expected[rows, columns] = (probs * torch.arange(self.n_bins, device=bins.device)).sum(dim=-1)
        best[rows, columns] = probs.argmax(dim=-1)
        return expected, best

    def _masked_probabilities(
        self, bins: torch.Tensor, gene_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cell and gene index of every masked gene and its predicted bin distribution ``(masked, n_bins)``."""
        genes, values = select_genes(bins, self.max_seq_len - 1, random=False, include=gene_mask)
        mask = gene_mask.gather(1, genes)
        hidden, _ = self.encode(genes, values, mask, profile=self._visible_profile(bins, genes, values, mask))
        batch = self.batch_token(None, len(bins), hidden.dtype)
        probs = self.predict_bins(hidden[:, 1:], batch)[mask].float().softmax(dim=-1)
        rows, positions = mask.nonzero(as_tuple=True)
        return rows, genes[rows, positions], probs

    @auto_move_data
    @doc_params(bins=DOC_BINS)
    def attention(self, bins: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each unmasked cell's genes and the attention among them in ``layer``.

        Parameters
        ----------
        {bins}
        layer
            Transformer block (negative counts from the end).

        Returns
        -------
        genes : :class:`~torch.Tensor`
            Gene indices ``(cells, length)``.
        attention : :class:`~torch.Tensor`
            ``(cells, heads, length, length)`` (query gene x key gene, CLS left out: rows sum to 1
            minus the attention paid to CLS).
        """
        bins = bins.long()
        genes, values = select_genes(bins, self.max_seq_len - 1, random=False)
        profile = self._visible_profile(bins, genes, values, None)
        _, weights = self.encode(genes, values, None, profile=profile, attention_layer=layer)
        return genes, weights[:, :, 1:, 1:]


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def _reverse_gradient(x: torch.Tensor) -> torch.Tensor:
    """Identity forward, negated gradient backward (Ganin & Lempitsky 2015)."""
    return _GradientReversal.apply(x)


def cell_depth(bins: torch.Tensor) -> torch.Tensor:
    """Log of the number of expressed genes per cell, ``(cells,)``: the depth given to the decoder."""
    return torch.log1p((bins > 0).sum(dim=1).float())


def check_module_arguments(
    *,
    n_hidden: int,
    n_layers: int,
    n_heads: int,
    max_seq_len: int,
    value_encoder: str,
    mask_ratio: float = 0.1,
    nonzero_ratio: float = 0.5,
    expression_weight: float = 1.0,
) -> None:
    """Raise a ``ValueError`` naming the first invalid architecture or objective setting."""
    problems = [
        (
            n_hidden < 1 or n_heads < 1 or n_hidden % n_heads,
            f"`n_hidden` ({n_hidden}) must be a positive multiple of `n_heads` ({n_heads}).",
        ),
        (n_layers < 1, f"`n_layers` must be at least 1, not {n_layers}."),
        (max_seq_len < 2, f"`max_seq_len` must be at least 2 (CLS and one gene), not {max_seq_len}."),
        (
            value_encoder not in ("linear", "embedding"),
            f"`value_encoder` must be 'linear' or 'embedding', not {value_encoder!r}.",
        ),
        (not 0 < mask_ratio < 1, f"`mask_ratio` must lie in (0, 1), not {mask_ratio}."),
        (not 0 <= nonzero_ratio <= 1, f"`nonzero_ratio` must lie in [0, 1], not {nonzero_ratio}."),
        (expression_weight < 0, f"`expression_weight` must be >= 0, not {expression_weight}."),
    ]
    for failed, message in problems:
        if failed:
            raise ValueError(message)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
