"""The BioFormer network with perturbation tokens: predicts a control cell's expression after perturbing genes."""

from __future__ import annotations

import torch
from scvi.module.base import LossOutput, auto_move_data
from torch import nn

from .._docs import DOC_EXTERNAL, doc_params
from ..data import select_genes
from ._bioformer import BioFormerModule, _init_weights


class BioFormerPerturbationModule(BioFormerModule):
    """:class:`~bioformers.module.BioFormerModule` plus external tokens that mark perturbed genes, and a response head.

    Every position adds an external token (0 = not perturbed, 1 = perturbed; more categories leave
    room for e.g. knock-down vs over-expression). The response, log-normalised expression of a
    perturbed control cell, is the control mean, plus (when any gene is perturbed) the mean response
    of the training perturbations, plus a change decoded from CLS for every gene, plus
    one decoded from each measured gene's own token where it is in the sequence, plus a bilinear
    interaction of that token with the perturbed tokens (``change_j = <Q h_j, K h_perturbed>``, the
    transformer analogue of the linear model of Ahlmann-Eltze et al., ``G W P^T``: a held-out target
    acts through its representation).

    A separate network rather than optional layers of the pretraining one: parameters that a loss
    never reaches would break DDP pretraining, and the pretrained weights load into it unchanged
    (every parameter of :class:`~bioformers.module.BioFormerModule` keeps its name).

    Parameters
    ----------
    n_genes, n_bins
        As in :class:`~bioformers.module.BioFormerModule`.
    n_external
        Categories of the external token (at least 2: not perturbed, perturbed).
    **kwargs
        Everything else of :class:`~bioformers.module.BioFormerModule` (``n_extra_genes`` gives a
        gene token to targets that are not measured genes).

    Examples
    --------
    >>> import torch
    >>> from bioformers.module import BioFormerPerturbationModule
    >>> module = BioFormerPerturbationModule(n_genes=30, n_bins=10, n_hidden=16, n_layers=1, max_seq_len=16).eval()
    >>> bins, targets = torch.randint(0, 10, (4, 30)), torch.tensor([[3], [5], [-1], [3]])
    >>> response = module.predict_response(bins, targets)
    >>> bool(torch.equal(response, module.control_mean.expand(4, -1)))  # a new network predicts "no change"
    True
    """

    def __init__(self, n_genes: int, n_bins: int, *, n_external: int = 2, **kwargs):
        super().__init__(n_genes, n_bins, **kwargs)
        if n_external < 2:
            raise ValueError(f"`n_external` must be at least 2 (not perturbed, perturbed), not {n_external}.")
        n_hidden = self.cls_token.shape[0]
        self.external_embedding = nn.Embedding(n_external, n_hidden)
        self.register_buffer("control_mean", torch.zeros(n_genes))
        # the mean response of the training perturbations: a perturbed cell starts from it (the
        # train-mean baseline) and the network learns what is specific to each perturbation
        self.register_buffer("mean_response", torch.zeros(n_genes))
        self.response_cls_head = nn.Linear(n_hidden, n_genes)
        self.response_token_head = nn.Sequential(nn.Linear(n_hidden, n_hidden), nn.GELU(), nn.Linear(n_hidden, 1))
        self.response_query = nn.Linear(n_hidden, n_hidden, bias=False)
        self.response_key = nn.Linear(n_hidden, n_hidden, bias=False)
        for layer in (
            self.external_embedding,
            self.response_cls_head,
            self.response_token_head,
            self.response_query,
            self.response_key,
        ):
            layer.apply(_init_weights)
        # "not perturbed" adds nothing, so a pretrained network starts fine-tuning unchanged,
        # and the response starts at "no change" (the control mean)
        nn.init.zeros_(self.external_embedding.weight[0])
        nn.init.zeros_(self.response_cls_head.weight)
        nn.init.zeros_(self.response_token_head[-1].weight)
        nn.init.zeros_(self.response_query.weight)

    @doc_params(external=DOC_EXTERNAL)
    def external_tokens(self, external: torch.Tensor) -> torch.Tensor:
        """Embedding of each position's external-token category, ``(cells, length, n_hidden)``.

        Parameters
        ----------
        {external}

        Returns
        -------
        :class:`~torch.Tensor`
            ``(cells, length, n_hidden)``.
        """
        return self.external_embedding(external)

    def perturbation_tokens(
        self, bins: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sequence of control cells whose ``targets`` are perturbed.

        A measured target is always in the sequence (its position is never dropped) and carries
        external token 1 on top of its control value; an unmeasured target is an extra token at the
        end with no value (MASK) and external token 1. Slots without an unmeasured target are padding.

        Parameters
        ----------
        bins
            Binned control cells, ``(cells, n_genes)``.
        targets
            Vocabulary indices ``(cells, slots)``, -1 for an empty slot.

        Returns
        -------
        tuple of :class:`~torch.Tensor`
            Genes, values, value mask (True: no value), external tokens and padding mask, each
            ``(cells, length)``.
        """
        n_genes = bins.shape[1]
        measured = (targets >= 0) & (targets < n_genes)
        # scatter_add of 0/1 flags, not index assignment: no data-dependent shapes
        perturbed = (
            torch.zeros(bins.shape, device=bins.device).scatter_add(
                1, torch.where(measured, targets, 0), measured.float()
            )
            > 0
        )
        genes, values = select_genes(
            bins, self.max_seq_len - 1 - targets.shape[1], random=self.training, include=perturbed
        )
        sequence = torch.zeros_like(genes, dtype=torch.bool)
        extra = targets >= n_genes
        return (
            torch.cat([genes, torch.where(extra, targets, 0)], dim=1),
            torch.cat([values, torch.zeros_like(targets)], dim=1),
            torch.cat([sequence, extra], dim=1),
            torch.cat([perturbed.gather(1, genes), extra], dim=1).long(),
            torch.cat([sequence, ~extra], dim=1),
        )

    @auto_move_data
    def predict_response(self, bins: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Log-normalised expression of each control cell after perturbing its ``targets``, ``(cells, n_genes)``.

        The prediction is the control mean, plus ``mean_response`` for a cell with any target (the
        train-mean baseline's prediction, set by the training), plus a change decoded from CLS for
        every gene, plus, for
        measured genes in the sequence, a change decoded from the gene's own token (which attends to
        the perturbed tokens) and a bilinear interaction of that token with the mean state of the
        perturbed tokens.

        Parameters
        ----------
        bins
            Binned control cells, ``(cells, n_genes)``.
        targets
            Vocabulary indices ``(cells, slots)``, -1 for an empty slot (see :meth:`perturbation_tokens`).

        Returns
        -------
        :class:`~torch.Tensor`
            ``(cells, n_genes)``.
        """
        bins = bins.long()
        genes, values, no_value, external, padding = self.perturbation_tokens(bins, targets)
        hidden, _ = self.encode(
            genes,
            values,
            no_value,
            profile=self._visible_profile(bins, genes, values, None),
            external=external,
            padding_mask=padding,
        )
        change = self.response_cls_head(hidden[:, 0]).float()
        tokens = hidden[:, 1:]
        marked = (external > 0).to(tokens.dtype)
        perturbed_state = (tokens * marked[..., None]).sum(dim=1) / marked.sum(dim=1, keepdim=True).clamp(min=1)
        interaction = (self.response_query(tokens) * self.response_key(perturbed_state)[:, None]).sum(dim=-1)
        token_change = (self.response_token_head(tokens).squeeze(-1) + interaction).float()
        measured = (genes < self.n_genes) & ~padding
        change = change.scatter_add(1, torch.where(measured, genes, 0), torch.where(measured, token_change, 0.0))
        perturbed = (targets >= 0).any(dim=1, keepdim=True).float()
        return self.control_mean + perturbed * self.mean_response + change

    def response_loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Weighted mean squared error of :meth:`predict_response` against the perturbed cells' expression.

        Parameters
        ----------
        batch
            ``bins`` (control cells), ``targets``, ``expression`` (the paired perturbed cells,
            log-normalised) and ``weight`` (per gene; larger on each perturbation's responding genes).

        Returns
        -------
        :class:`~scvi.module.base.LossOutput`
            The loss per cell and its mean.
        """
        predicted = self.predict_response(batch["bins"], batch["targets"])
        weight = batch["weight"].float()
        per_cell = ((predicted - batch["expression"].float()).pow(2) * weight).sum(dim=1) / weight.sum(dim=1)
        return LossOutput(loss=per_cell.mean(), reconstruction_loss=per_cell)
