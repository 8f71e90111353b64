"""``CellDiffusion``: a conditional latent-token diffusion model of expression (scvi-tools model)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from numbers import Integral, Real
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scvi
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalJointObsField, CategoricalObsField, LayerField, NumericalJointObsField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from .._docs import (
    DOC_ADATA_REGISTERED,
    DOC_BATCH_SIZE,
    DOC_CONDITION_DROPOUT,
    DOC_DIFFUSION_WIDTHS,
    DOC_DRAWS,
    DOC_MINIBATCH,
    DOC_RETURNS_SETUP,
    DOC_SCVI_FIELDS,
    DOC_SETUP_KWARGS,
    doc_params,
)
from .._keys import PERTURBATION_KEY
from .._private import registered
from .._validation import (
    check_anndata,
    check_batch_size,
    check_control,
    check_counts,
    check_obs_key,
    check_setup_kwargs,
    get_matrix,
)
from ..data._perturbation import LOG_TARGET_SUM
from ..module._diffusion import CellDiffusionModule
from ..train import TrainingSession, WarmupCosineTrainingPlan, default_precision
from .base import ConditionsMixin, SaveLoadMixin
from .base._training import train_in_session

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

ConditionKind = Literal["categorical", "continuous", "set"]


def default_epochs(n_obs: int) -> tuple[int, int]:
    """Autoencoder and diffusion epochs: about 1,500 and 4,000 optimiser steps of 128 cells (bounded)."""
    n_obs = max(n_obs, 1)
    autoencoder = int(np.clip(round(1_500 * 128 / n_obs), 5, 200))
    diffusion = int(np.clip(round(4_000 * 128 / n_obs), 10, 500))
    return autoencoder, diffusion


@doc_params(adata=DOC_ADATA_REGISTERED, widths=DOC_DIFFUSION_WIDTHS, condition_dropout=DOC_CONDITION_DROPOUT)
class CellDiffusion(ConditionsMixin, SaveLoadMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """Conditional diffusion over latent tokens: simulates cells of a cell type, perturbation, donor or dose.

    Each cell's expression (all genes, ``log1p`` of counts per 10,000) is encoded into a short
    sequence of latent tokens, ``(n_tokens, token_dim)``; a transformer learns to remove noise from
    those tokens given the diffusion timestep and the cell's conditions (adaptive LayerNorm), and a
    decoder maps tokens back to expression. Generating a cell runs the denoiser from pure noise
    (DDIM) and decodes the result: :func:`bioformers.tl.generate`. See
    :class:`~bioformers.module.CellDiffusionModule`.

    Parameters
    ----------
    {adata}
    n_tokens
        Latent tokens per cell.
    token_dim
        Width of each latent token.
    n_hidden
        Width of the denoiser.
    n_layers
        Transformer blocks of the denoiser.
    n_heads
        Attention heads per denoiser block.
    {widths}
    {condition_dropout}
        It teaches the model to generate with any condition left out (pass ``None`` for it) and is
        what classifier-free guidance (``guidance`` in :func:`bioformers.tl.generate`) needs; 0
        turns both off.
    n_timesteps
        Steps of the diffusion (noising) process.

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> bf.CellDiffusion.setup_anndata(adata, categorical_covariate_keys=["cell_type"])
    >>> model = bf.CellDiffusion(adata, n_tokens=4, token_dim=8, n_hidden=32, n_layers=1, n_encoder_hidden=64)
    >>> model.train(max_epochs=2, autoencoder_epochs=2, batch_size=50)
    >>> model.training_stages_
    {'autoencoder': 2, 'diffusion': 2}
    >>> cells = bf.tl.generate(model, {"cell_type": ["type_0", "type_1"]}, n_per_condition=5, n_steps=10)
    >>> cells.shape
    (10, 50)
    """

    _module_cls = CellDiffusionModule
    _training_plan_cls = WarmupCosineTrainingPlan

    def __init__(
        self,
        adata: AnnData | None = None,
        n_tokens: int = 16,
        token_dim: int = 32,
        n_hidden: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        n_encoder_hidden: int = 512,
        dropout: float = 0.0,
        condition_dropout: float = 0.1,
        n_timesteps: int = 1000,
    ):
        super().__init__(adata)
        _check_sizes(
            n_tokens=n_tokens,
            token_dim=token_dim,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_encoder_hidden=n_encoder_hidden,
            n_timesteps=n_timesteps,
        )
        if n_hidden % n_heads:
            raise ValueError(f"`n_hidden` ({n_hidden}) must be divisible by `n_heads` ({n_heads}).")
        for name, value in (("dropout", dropout), ("condition_dropout", condition_dropout)):
            if not 0 <= value < 1:
                raise ValueError(f"`{name}` must be in [0, 1), not {value}.")
        #: The model's genes, in order (the training data's ``var_names``).
        self.genes_ = np.asarray(adata.var_names).astype(str)
        #: One dict per registered condition, with its key, kind and known values.
        self.conditions_ = self._registered_conditions()
        continuous = self._condition_frame(kinds=("continuous",))
        set_condition = self._condition("set")
        self.module = self._module_cls(
            n_genes=adata.n_vars,
            n_tokens=n_tokens,
            token_dim=token_dim,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_encoder_hidden=n_encoder_hidden,
            dropout=dropout,
            categorical_sizes=[len(c["values"]) for c in self.conditions_ if c["kind"] == "categorical"],
            n_continuous=continuous.shape[1],
            n_set_items=len(set_condition["items"]) if set_condition else 0,
            set_table=torch.from_numpy(self._set_items(set_condition["values"])) if set_condition else None,
            condition_dropout=condition_dropout,
            n_timesteps=n_timesteps,
            target_sum=LOG_TARGET_SUM,
        )
        if continuous.shape[1]:
            values = torch.tensor(continuous.to_numpy(dtype=np.float64), dtype=torch.float32)
            self.module.conditions.set_continuous_scale(values.mean(dim=0), values.std(dim=0, unbiased=False))
        #: Condition combinations seen in training, and each continuous range (see :meth:`check_conditions`).
        self.seen_ = self._seen_conditions()
        #: Epochs trained per stage (``"autoencoder"``, ``"diffusion"``, ``"joint"``).
        self.training_stages_: dict[str, int] = {}
        self._model_summary_string = (
            f"CellDiffusion: {adata.n_vars} genes, {n_tokens} latent tokens x {token_dim}, "
            f"denoiser n_hidden={n_hidden}, n_layers={n_layers}, "
            f"conditions: {[c['key'] for c in self.conditions_] or 'none'}"
        )
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    @doc_params(kwargs=DOC_SETUP_KWARGS, returns_setup=DOC_RETURNS_SETUP, scvi_fields=DOC_SCVI_FIELDS)
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        perturbation_key: str | None = None,
        control: str = "control",
        **kwargs,
    ) -> None:
        """Register the raw counts and the conditions with scvi-tools.

        scvi-tools writes its bookkeeping into ``adata`` (``uns['_scvi_uuid']``, ...), so a view is
        refused: call ``.copy()`` on it first. Every check runs before that.

        Parameters
        ----------
        adata
            AnnData with raw counts (non-negative whole numbers, no empty cell). The model works on
            ``log1p`` of counts per 10,000 (``sc.pp.normalize_total(target_sum=1e4)`` then
            ``sc.pp.log1p``), computed inside.
        layer
            Layer with the counts; ``None``: ``X``.
        categorical_covariate_keys
            Columns of ``adata.obs`` with categorical conditions (cell type, batch, donor), each
            embedded by its own table.
        continuous_covariate_keys
            Columns of ``adata.obs`` with numeric conditions (dose, time), each mapped by its own small MLP.
        perturbation_key
            Column of ``adata.obs`` naming each cell's perturbation: ``control`` or the perturbed
            gene(s), several joined by ``+`` (``"STAT1+JAK2"``). It is a set condition: each gene is
            embedded and the set is mean-pooled, so combinations of seen genes can be asked for.
        control
            The label of unperturbed cells in ``perturbation_key`` (the empty set).
        {kwargs}

        Returns
        -------
        {returns_setup}

            ``adata.obsm['_scvi_extra_categorical_covs']`` : :class:`~pandas.DataFrame`
                Codes of the ``categorical_covariate_keys`` columns, when given.
            ``adata.obsm['_scvi_extra_continuous_covs']`` : :class:`~pandas.DataFrame`
                The ``continuous_covariate_keys`` columns, when given.
            {scvi_fields}

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=100, n_vars=30)
        >>> bf.CellDiffusion.setup_anndata(adata, categorical_covariate_keys=["cell_type", "batch"])
        >>> adata.obsm["_scvi_extra_categorical_covs"].columns.tolist()
        ['cell_type', 'batch']
        """
        setup_method_args = cls._get_setup_method_args(**locals())  # first: it records every local variable
        check_setup_kwargs(
            kwargs,
            setup=cls.setup_anndata,
            where="`bf.CellDiffusion.setup_anndata`",
            hints={
                key: f"CellDiffusion conditions on any `obs` column through `categorical_covariate_keys`: pass "
                f"`categorical_covariate_keys=[{kwargs[key]!r}]` instead of `{key}=`."
                for key in ("labels_key", "batch_key")
                if key in kwargs
            },
        )
        check_anndata(adata)
        counts = get_matrix(adata, layer)
        check_counts(counts, where="adata.X" if layer is None else f"adata.layers[{layer!r}]")
        categorical = _key_list(categorical_covariate_keys, "categorical_covariate_keys")
        continuous = _key_list(continuous_covariate_keys, "continuous_covariate_keys")
        keys = [*categorical, *continuous, *([perturbation_key] if perturbation_key is not None else [])]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"{repeated} named as more than one condition. Give each `obs` column one kind.")
        for key in categorical:
            check_obs_key(adata, key, argument="categorical_covariate_keys")
        for key in continuous:
            check_obs_key(adata, key, argument="continuous_covariate_keys")
            values = adata.obs[key]
            if not pd.api.types.is_numeric_dtype(values) or not np.isfinite(values.to_numpy(dtype=float)).all():
                raise ValueError(
                    f"`adata.obs[{key!r}]` (`continuous_covariate_keys=`) must hold finite numbers (it is "
                    f"{values.dtype}). Convert it, e.g. `adata.obs[{key!r}] = adata.obs[{key!r}].astype(float)`, or "
                    "register a column of labels with `categorical_covariate_keys=`."
                )
        check_obs_key(adata, perturbation_key, argument="perturbation_key")
        if perturbation_key is not None:
            check_control(adata.obs[perturbation_key], control, perturbation_key)
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical or None),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous or None),
        ]
        if perturbation_key is not None:
            fields.append(CategoricalObsField(PERTURBATION_KEY, perturbation_key))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # --- training --------------------------------------------------------------------------------
    @doc_params(batch_size=DOC_MINIBATCH)
    def train(
        self,
        max_epochs: int | None = None,
        *,
        autoencoder_epochs: int | None = None,
        schedule: Literal["pretrain", "joint"] = "pretrain",
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.05,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        precision: str | None = None,
        gradient_clip_val: float = 1.0,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the autoencoder, then the denoiser on its frozen latent tokens (or both at once).

        Parameters
        ----------
        max_epochs
            Epochs of the denoiser; ``None``: about 4,000 optimiser steps of 128 cells (10 to 500 epochs).
        autoencoder_epochs
            Epochs of the autoencoder alone, first (``schedule="pretrain"``); ``None``: about 1,500 steps
            of 128 cells (5 to 200 epochs).
        schedule
            ``"pretrain"``: the autoencoder first, then the denoiser on its frozen tokens (latent
            diffusion's usual recipe). ``"joint"``: both from the start for ``max_epochs``; the
            diffusion loss never reaches the encoder (its tokens are detached), so the denoiser
            chases latents that still move. ``benchmarks/diffusion_generate.py`` compares them.
        {batch_size}
        lr, weight_decay, warmup_fraction
            AdamW's peak learning rate and weight decay, and the warm-up fraction of each stage's
            steps (then cosine decay), as in :class:`~bioformers.train.WarmupCosineTrainingPlan`.
        accelerator, devices, precision, gradient_clip_val
            As in :meth:`bioformers.BioFormer.train`; ``precision=None`` uses bf16 autocast on CUDA and
            on CPUs with AMX/AVX512-BF16.
        plan_kwargs
            More arguments for the training plan.
        **trainer_kwargs
            Passed to scvi-tools' :meth:`~scvi.model.base.BaseModelClass.train` and Lightning's
            :class:`~lightning.pytorch.Trainer`. Every cell is trained on unless ``train_size`` (e.g.
            0.9) is given, which also gives a validation loss per epoch.

        Returns
        -------
        None
            The model is trained in place; ``model.training_stages_`` counts the epochs of each stage.

        Raises
        ------
        bioformers.train.NonFiniteLossError
            The loss or the gradients became NaN or infinite; training stops before that step.
            Ctrl-C stops training, keeping the last step's weights, with a warning (as in
            :meth:`bioformers.BioFormer.train`).

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> bf.CellDiffusion.setup_anndata(adata)
        >>> model = bf.CellDiffusion(adata, n_tokens=4, token_dim=8, n_hidden=32, n_layers=1, n_encoder_hidden=64)
        >>> model.train(max_epochs=2, schedule="joint", batch_size=50)
        >>> model.training_stages_
        {'joint': 2}
        """
        if schedule not in ("pretrain", "joint"):
            raise ValueError(f"`schedule` must be 'pretrain' or 'joint', not {schedule!r}.")
        n_obs = self.adata.n_obs
        check_batch_size(n_obs, batch_size)
        default_autoencoder, default_diffusion = default_epochs(n_obs)
        max_epochs = max_epochs or default_diffusion
        autoencoder_epochs = (autoencoder_epochs or default_autoencoder) if schedule == "pretrain" else 0
        for name, value in (("max_epochs", max_epochs), ("autoencoder_epochs", autoencoder_epochs)):
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
                raise ValueError(f"`{name}` must be a whole number of epochs, not {value!r}.")
        plan_kwargs = {"lr": lr, "weight_decay": weight_decay, "warmup_fraction": warmup_fraction} | (plan_kwargs or {})
        precision = precision or default_precision(accelerator)
        # a generator learns from every cell; pass `train_size=0.9` for a validation loss
        trainer_kwargs.setdefault("train_size", 1.0)
        stages = (
            [("autoencoder", autoencoder_epochs), ("diffusion", max_epochs)]
            if schedule == "pretrain"
            else [("joint", max_epochs)]
        )
        autoencoder = [self.module.encoder, self.module.decoder, self.module.detection_head, self.module.value_head]
        try:
            for stage, epochs in stages:
                if not epochs:
                    continue
                self.module.stage = stage
                for part in autoencoder:
                    part.requires_grad_(stage != "diffusion")
                for part in (self.module.denoiser, self.module.conditions):
                    part.requires_grad_(stage != "autoencoder")
                session = TrainingSession(
                    self.module,
                    run={"stage": stage, "max_epochs": epochs, "seed": scvi.settings.seed, "batch_size": batch_size},
                    subject=f"CellDiffusion ({stage} stage) on {n_obs:,} cells x {self.adata.n_vars:,} genes",
                )
                train_in_session(
                    self,
                    session,
                    max_epochs=epochs,
                    batch_size=batch_size,
                    accelerator=accelerator,
                    devices=devices,
                    plan_kwargs=plan_kwargs,
                    precision=precision,
                    gradient_clip_val=gradient_clip_val,
                    **session.trainer_kwargs(dict(trainer_kwargs)),
                )
                self.training_stages_[stage] = self.training_stages_.get(stage, 0) + int(self.trainer.current_epoch)
                if stage == "autoencoder":
                    self._fit_latent_scale(batch_size)
                if self.trainer.interrupted:
                    break
        finally:
            self.module.requires_grad_(True)
            self.module.stage = "diffusion"
            self.module.eval()

    @torch.inference_mode()
    def _fit_latent_scale(self, batch_size: int) -> None:
        """Standardise diffusion's tokens with the mean and sd of the training cells' tokens."""
        self.module.eval()
        loader = self._make_data_loader(adata=self.adata, batch_size=max(batch_size, 512), shuffle=False)
        z = torch.cat(
            [self.module.encode(self.module.normalize(t[REGISTRY_KEYS.X_KEY].to(self.device))) for t in loader]
        )
        mean, std = z.mean(dim=0).float(), z.std(dim=0).float().clamp(min=1e-4)
        self.module.set_latent_scale(mean, std, bound=max(float(((z - mean) / std).abs().max()), 3.0))

    # --- using the model -------------------------------------------------------------------------
    @torch.inference_mode()
    @doc_params(batch_size=DOC_BATCH_SIZE)
    def get_latent_representation(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, batch_size: int = 512
    ) -> np.ndarray:
        """Each cell's latent tokens from the autoencoder, flattened.

        Parameters
        ----------
        adata
            Raw counts with the model's genes in the model's order; registered like the training data.
            ``None``: the training data.
        indices
            Cells to encode; ``None``: all.
        {batch_size}

        Returns
        -------
        :class:`~numpy.ndarray`
            ``float32`` ``(n_cells, n_tokens * token_dim)``. Nothing is written into ``adata``.

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> bf.CellDiffusion.setup_anndata(adata)
        >>> model = bf.CellDiffusion(adata, n_tokens=4, token_dim=8, n_hidden=32, n_layers=1, n_encoder_hidden=64)
        >>> model.train(max_epochs=1, autoencoder_epochs=1, batch_size=50)
        >>> model.get_latent_representation().shape
        (200, 32)
        """
        self._check_if_trained(warn=False)
        self.module.eval()
        with registered(self, adata) as work:
            loader = self._make_data_loader(adata=work, indices=indices, batch_size=batch_size, shuffle=False)
            out = [
                self.module.encode(self.module.normalize(tensors[REGISTRY_KEYS.X_KEY].to(self.device)))
                .flatten(1)
                .float()
                .cpu()
                for tensors in loader
            ]
        return torch.cat(out).numpy()

    @torch.inference_mode()
    @doc_params(draws=DOC_DRAWS)
    def generate(
        self,
        table: pd.DataFrame,
        *,
        n_steps: int = 50,
        guidance: float = 1.0,
        eta: float = 0.0,
        seed: int = 0,
        batch_size: int = 512,
    ) -> sparse.csr_matrix:
        """Sample one cell per row of a checked condition table.

        Each gene is detected with the probability the decoder gives it. :func:`bioformers.tl.generate`
        wraps this into an AnnData. Same seed, same cells (on one machine).

        Parameters
        ----------
        table
            Conditions from :meth:`check_conditions`, one row per cell to generate.
        n_steps
            DDIM steps; fewer is faster and coarser.
        guidance
            Classifier-free guidance scale (1: the conditional model alone).
        eta
            DDIM noise (0: deterministic given the starting noise; 1: DDPM-like).
        {draws}

        Returns
        -------
        :class:`~scipy.sparse.csr_matrix`
            ``float32`` ``(len(table), n_genes)``: ``log1p`` of counts per 10,000.
        """
        self._check_if_trained(warn=False)
        if (
            isinstance(n_steps, bool)
            or not isinstance(n_steps, Integral)
            or not 1 <= n_steps <= self.module.n_timesteps
        ):
            raise ValueError(f"`n_steps` must be a whole number in [1, {self.module.n_timesteps}], not {n_steps!r}.")
        if not isinstance(guidance, Real) or not np.isfinite(guidance) or guidance < 0:
            raise ValueError(f"`guidance` must be a finite number >= 0 (1: no guidance), not {guidance!r}.")
        if guidance != 1 and not self.module.condition_dropout:
            raise ValueError(
                "Classifier-free guidance needs the unconditional model, which a model trained with "
                "`condition_dropout=0` never learned. Use `guidance=1`."
            )
        if not 0 <= eta <= 1:
            raise ValueError(f"`eta` must be in [0, 1], not {eta!r}.")
        encoded = self._encode_conditions(table)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        self.module.eval()
        parts = []
        for start in range(0, len(table), batch_size):
            rows = slice(start, min(start + batch_size, len(table)))
            condition = self._condition_vector(encoded, rows)
            free = self._condition_vector(encoded, rows, none=True) if guidance != 1 else None
            z = self.module.sample(
                condition, free, n_steps=n_steps, guidance=float(guidance), eta=eta, generator=generator
            )
            parts.append(sparse.csr_matrix(self.module.decode_sample(z, generator).cpu().numpy()))
        return sparse.vstack(parts, format="csr").astype(np.float32)

    # --- files: SaveLoadMixin; what only this model records ------------------------------------
    def _saved_attributes(self) -> dict:
        return {"training_stages": self.training_stages_}

    def _restore(self, attributes: dict) -> None:
        self.training_stages_ = dict(attributes.get("training_stages", {}))
        self.module.stage = "diffusion"


def _key_list(keys: Sequence[str] | None, argument: str) -> list[str]:
    if keys is None:
        return []
    if isinstance(keys, str):
        raise TypeError(f"`{argument}` takes a list of `obs` columns: pass `[{keys!r}]`.")
    return [str(k) for k in keys]


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"`{name}` must be a positive whole number, not {value!r}.")
