"""The latent-token diffusion network behind :class:`bioformers.CellDiffusion`.

Three parts:

* an autoencoder: the cell's log-normalised expression -> ``(n_tokens, token_dim)`` latent tokens
  (an MLP, then a LayerNorm without parameters on each token, so every token has mean 0 and
  variance 1: the scale diffusion expects, without a fitted scale factor) -> expression again,
  through a hurdle decoder (the probability that each gene is detected, and its value if it is);
* a denoiser (:class:`bioformers.nn.Denoiser`): a transformer over the tokens of one cell whose
  LayerNorms take their scale, shift and residual gates from the timestep and the conditions
  (adaptive LayerNorm, DiT's adaLN-Zero);
* the conditions (:class:`bioformers.nn.ConditionEmbedding`), each kind embedded its own way and
  summed: categorical (an embedding), continuous (a small MLP on the standardised value) and a set
  of perturbed genes (embedded, mean-pooled with a padding mask). Every condition has a learned
  "none" embedding, used when it is not given and, during training, at random
  (``condition_dropout``), so the denoiser also learns the unconditional distribution that
  classifier-free guidance needs.

Diffusion is DDPM (cosine noise schedule, noise prediction, MSE); sampling is DDIM.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from .._docs import DOC_CONDITION_DROPOUT, DOC_DIFFUSION_WIDTHS, DOC_LOSS_INPUTS, doc_params, doc_returns_loss
from .._keys import PERTURBATION_KEY
from ..nn import ConditionEmbedding, Denoiser, cosine_alphas_cumprod

Stage = Literal["autoencoder", "diffusion", "joint"]

#: ``counts`` of the methods that read raw counts.
_DOC_COUNTS = """\
counts
    Raw counts, ``(cells, n_genes)``."""


def _hidden_layers(n_in: int, n_hidden: int) -> list[nn.Module]:
    """Two ``Linear -> LayerNorm -> GELU`` layers, the body of the autoencoder's encoder and decoder."""
    return [
        nn.Linear(n_in, n_hidden),
        nn.LayerNorm(n_hidden),
        nn.GELU(),
        nn.Linear(n_hidden, n_hidden),
        nn.LayerNorm(n_hidden),
        nn.GELU(),
    ]


@doc_params(widths=DOC_DIFFUSION_WIDTHS, condition_dropout=DOC_CONDITION_DROPOUT)
class CellDiffusionModule(BaseModuleClass):
    """Autoencoder to latent tokens, conditional denoiser over the tokens, DDPM loss and DDIM sampler.

    Parameters
    ----------
    n_genes
        Number of genes.
    n_tokens, token_dim
        Shape of each cell's latent tokens.
    n_hidden, n_layers, n_heads
        Width, depth and attention heads of the denoiser.
    {widths}
    categorical_sizes, n_continuous, n_set_items
        The conditions: the number of categories of each categorical condition, the number of
        continuous conditions, and the number of genes a set condition (perturbation) can hold.
    set_table
        Item indices of each registered set label, ``(n_labels, slots)``, -1 padding; turns the
        registered perturbation codes into sets during training.
    {condition_dropout}
    n_timesteps
        Steps of the DDPM forward process.
    n_noise_draws
        Timesteps and noises drawn per cell and training step.
    target_sum
        Counts per cell after normalisation (the input is ``log1p(counts / total * target_sum)``).

    Examples
    --------
    >>> import torch
    >>> from bioformers.module import CellDiffusionModule
    >>> module = CellDiffusionModule(30, n_tokens=4, token_dim=8, n_hidden=32, n_layers=1, n_encoder_hidden=64).eval()
    >>> counts = torch.poisson(torch.full((5, 30), 2.0))
    >>> z = module.encode(module.normalize(counts))
    >>> z.shape
    torch.Size([5, 4, 8])
    >>> unconditional = module.conditions(5, None, None, None, None)  # a model without conditions
    >>> module.decode_sample(module.sample(unconditional, None, n_steps=5)).shape
    torch.Size([5, 30])
    """

    def __init__(
        self,
        n_genes: int,
        *,
        n_tokens: int = 16,
        token_dim: int = 32,
        n_hidden: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        n_encoder_hidden: int = 512,
        dropout: float = 0.0,
        categorical_sizes: list[int] | None = None,
        n_continuous: int = 0,
        n_set_items: int = 0,
        set_table: torch.Tensor | None = None,
        condition_dropout: float = 0.1,
        n_timesteps: int = 1000,
        n_noise_draws: int = 4,
        target_sum: float = 1e4,
    ):
        super().__init__()
        self.n_genes, self.n_tokens, self.token_dim = n_genes, n_tokens, token_dim
        self.condition_dropout = condition_dropout
        self.target_sum = target_sum
        self.n_timesteps = n_timesteps
        self.n_noise_draws = n_noise_draws
        #: What :meth:`loss` trains (``"autoencoder"``, ``"diffusion"`` with the autoencoder frozen, or ``"joint"``).
        self.stage: Stage = "autoencoder"
        latent = n_tokens * token_dim
        self.encoder = nn.Sequential(*_hidden_layers(n_genes, n_encoder_hidden), nn.Linear(n_encoder_hidden, latent))
        self.decoder = nn.Sequential(*_hidden_layers(latent, n_encoder_hidden))
        self.detection_head = nn.Linear(n_encoder_hidden, n_genes)
        self.value_head = nn.Linear(n_encoder_hidden, n_genes)
        self.conditions = ConditionEmbedding(n_hidden, list(categorical_sizes or []), n_continuous, n_set_items)
        self.denoiser = Denoiser(n_tokens, token_dim, n_hidden, n_layers, n_heads, dropout)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(n_timesteps))
        # per-coordinate mean and sd of the training cells' tokens: diffusion runs on standardised tokens
        self.register_buffer("latent_mean", torch.zeros(n_tokens, token_dim))
        self.register_buffer("latent_std", torch.ones(n_tokens, token_dim))
        # the sampler keeps its estimate of the clean tokens within this many sds (the training range)
        self.register_buffer("latent_bound", torch.tensor(5.0))
        self.register_buffer(
            "set_table", set_table if set_table is not None else torch.full((1, 1), -1, dtype=torch.long)
        )

    # --- autoencoder ------------------------------------------------------------------------------
    @doc_params(counts=_DOC_COUNTS)
    def normalize(self, counts: torch.Tensor) -> torch.Tensor:
        """``log1p(counts / total * target_sum)``, per cell.

        Parameters
        ----------
        {counts}

        Returns
        -------
        :class:`~torch.Tensor`
            ``float32`` ``(cells, n_genes)``.
        """
        counts = counts.float()
        return torch.log1p(counts / counts.sum(dim=1, keepdim=True).clamp(min=1) * self.target_sum)

    def encode(self, expression: torch.Tensor) -> torch.Tensor:
        """Latent tokens of log-normalised expression, each token standardised.

        Parameters
        ----------
        expression
            Log-normalised expression from :meth:`normalize`, ``(cells, n_genes)``.

        Returns
        -------
        :class:`~torch.Tensor`
            ``(cells, n_tokens, token_dim)``.
        """
        z = self.encoder(expression).view(-1, self.n_tokens, self.token_dim)
        return F.layer_norm(z, (self.token_dim,))

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Detection logits and expression-if-detected (log-normalised, positive) of every gene.

        Parameters
        ----------
        z
            Latent tokens, ``(cells, n_tokens, token_dim)``.

        Returns
        -------
        logits : :class:`~torch.Tensor`
            Detection logits, ``(cells, n_genes)``.
        value : :class:`~torch.Tensor`
            Expression if detected, ``(cells, n_genes)``.
        """
        hidden = self.decoder(z.flatten(1))
        return self.detection_head(hidden), F.softplus(self.value_head(hidden))

    def reconstruction_loss(self, expression: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per cell: binary cross-entropy of detection plus the squared error of detected values.

        Parameters
        ----------
        expression
            Log-normalised expression, ``(cells, n_genes)``.
        z
            The cells' latent tokens, ``(cells, n_tokens, token_dim)``.

        Returns
        -------
        :class:`~torch.Tensor`
            ``(cells,)``.
        """
        logits, value = self.decode(z)
        detected = expression > 0
        detection = F.binary_cross_entropy_with_logits(logits.float(), detected.float(), reduction="none").mean(dim=1)
        squared = ((value.float() - expression) ** 2 * detected).sum(dim=1) / detected.sum(dim=1).clamp(min=1)
        return detection + squared

    def set_latent_scale(self, mean: torch.Tensor, std: torch.Tensor, bound: float | None = None) -> None:
        """Record the mean and standard deviation of each token coordinate over the training cells.

        Each token is standardised across its own features by the encoder, but across cells its
        coordinates vary far less than unit noise (on synthetic data, sd 0.14): without this
        second standardisation the noise drowns the differences between cells at once.

        Parameters
        ----------
        mean, std
            Per coordinate, ``(n_tokens, token_dim)``.
        bound
            How many sds from the mean the sampler keeps its clean-token estimate; ``None``: unchanged.
        """
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std.clamp(min=1e-4))
        if bound is not None:
            self.latent_bound.fill_(bound)

    def standardize(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder tokens -> the standardised tokens diffusion works on.

        Parameters
        ----------
        z
            Encoder tokens, ``(cells, n_tokens, token_dim)``.

        Returns
        -------
        :class:`~torch.Tensor`
            The standardised tokens, shaped like ``z``.
        """
        return (z - self.latent_mean) / self.latent_std

    def unstandardize(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised tokens -> encoder tokens (back on the per-token standardised surface the decoder knows).

        Parameters
        ----------
        z
            Standardised tokens (from :meth:`standardize` or the sampler), ``(cells, n_tokens, token_dim)``.

        Returns
        -------
        :class:`~torch.Tensor`
            Encoder tokens, shaped like ``z``.
        """
        return F.layer_norm(z * self.latent_std + self.latent_mean, (self.token_dim,))

    # --- diffusion --------------------------------------------------------------------------------
    def noise(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``z_t = sqrt(ᾱ_t) z_0 + sqrt(1 - ᾱ_t) ε``.

        Parameters
        ----------
        z0
            Standardised clean tokens, ``(cells, n_tokens, token_dim)``.
        t
            Each cell's timestep, ``(cells,)``.
        noise
            ``ε``, shaped like ``z0``.

        Returns
        -------
        :class:`~torch.Tensor`
            ``z_t``, shaped like ``z0``.
        """
        alpha = self.alphas_cumprod[t].view(-1, 1, 1)
        return alpha.sqrt() * z0 + (1 - alpha).sqrt() * noise

    def condition_drop(self, n_cells: int, device: torch.device) -> torch.Tensor | None:
        """Random "none" replacements for training: all conditions with probability p, each one with p.

        Parameters
        ----------
        n_cells
            Number of cells.
        device
            Device of the result.

        Returns
        -------
        :class:`~torch.Tensor` or None
            Boolean ``(cells, n_conditions)``, True where a condition becomes "none"; ``None`` without
            conditions or dropout.
        """
        n_keys = self.conditions.n_keys
        if not n_keys or not self.condition_dropout:
            return None
        every = torch.rand(n_cells, 1, device=device) < self.condition_dropout
        each = torch.rand(n_cells, n_keys, device=device) < self.condition_dropout
        return every | each

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The denoiser's noise estimate.

        Parameters
        ----------
        z_t
            Noisy standardised tokens, ``(cells, n_tokens, token_dim)``.
        t
            Each cell's timestep, ``(cells,)``.
        condition
            Condition vectors, ``(cells, n_hidden)``.

        Returns
        -------
        :class:`~torch.Tensor`
            Shaped like ``z_t``.
        """
        return self.denoiser(z_t, t, condition)

    # --- scvi-tools module protocol ----------------------------------------------------------------
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        return {"counts": tensors[REGISTRY_KEYS.X_KEY]}

    @auto_move_data
    @doc_params(counts=_DOC_COUNTS)
    def inference(self, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalise and encode; the encoder is not trained in the diffusion stage.

        Parameters
        ----------
        {counts}

        Returns
        -------
        dict
            ``expression`` (log-normalised) and ``z`` (latent tokens).
        """
        expression = self.normalize(counts)
        if self.stage == "diffusion":
            with torch.no_grad():
                z = self.encode(expression)
        else:
            z = self.encode(expression)
        return {"expression": expression, "z": z}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict[str, torch.Tensor | None]:
        n_cells = inference_outputs["z"].shape[0]
        cat = tensors.get(REGISTRY_KEYS.CAT_COVS_KEY)
        cont = tensors.get(REGISTRY_KEYS.CONT_COVS_KEY)
        codes = tensors.get(PERTURBATION_KEY)
        items = self.set_table[codes.long().view(-1)] if codes is not None else None
        condition = self.conditions(
            n_cells, cat, cont, items, None, drop=self.condition_drop(n_cells, inference_outputs["z"].device)
        )
        return {"z": inference_outputs["z"], "condition": condition}

    @auto_move_data
    def generative(self, z: torch.Tensor, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """Noise the tokens at a random timestep and predict the noise (not in the autoencoder stage).

        Parameters
        ----------
        z
            Latent tokens from :meth:`inference`.
        condition
            Condition vectors, ``(cells, n_hidden)``.

        Returns
        -------
        dict
            ``noise`` and ``predicted`` noise, ``n_noise_draws`` rows per cell; empty in the
            autoencoder stage.
        """
        if self.stage == "autoencoder":
            return {}
        # the diffusion loss never shapes the latent space (no collapse towards easy latents); each cell is
        # noised `n_noise_draws` times: more signal per step for the cheap denoiser, same data loading
        z = z.detach()
        if self.stage == "joint" and self.training:
            # the tokens move while the encoder learns: follow their scale
            with torch.no_grad():
                self.latent_mean.lerp_(z.float().mean(dim=0), 0.01)
                self.latent_std.lerp_(z.float().std(dim=0).clamp(min=1e-4), 0.01)
        z0 = self.standardize(z).repeat_interleave(self.n_noise_draws, dim=0)
        condition = condition.repeat_interleave(self.n_noise_draws, dim=0)
        t = torch.randint(0, self.n_timesteps, (z0.shape[0],), device=z0.device)
        noise = torch.randn_like(z0)
        return {"noise": noise, "predicted": self.predict_noise(self.noise(z0, t, noise), t, condition)}

    @doc_params(inputs=DOC_LOSS_INPUTS, returns_loss=doc_returns_loss("``reconstruction`` and ``diffusion``"))
    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        """Reconstruction loss (autoencoder, joint) plus noise-prediction MSE (diffusion, joint).

        Parameters
        ----------
        {inputs}

        Returns
        -------
        {returns_loss}
        """
        z = inference_outputs["z"]
        zero = torch.zeros(z.shape[0], device=z.device)
        reconstruction = zero
        if self.stage != "diffusion":
            reconstruction = self.reconstruction_loss(inference_outputs["expression"], z)
        diffusion = zero
        if self.stage != "autoencoder":
            error = generative_outputs["predicted"].float() - generative_outputs["noise"]
            diffusion = error.pow(2).mean(dim=(1, 2)).view(-1, self.n_noise_draws).mean(dim=1)
        per_cell = reconstruction + diffusion
        extra = {"reconstruction": reconstruction.mean().detach(), "diffusion": diffusion.mean().detach()}
        return LossOutput(loss=per_cell.mean(), reconstruction_loss=per_cell, extra_metrics=extra)

    # --- sampling ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def sample(
        self,
        condition: torch.Tensor,
        unconditional: torch.Tensor | None,
        *,
        n_steps: int = 50,
        guidance: float = 1.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """DDIM sampling of latent tokens (Song et al., 2021).

        The noise estimate is ``ε_u + guidance (ε_c - ε_u)`` (classifier-free guidance).

        Parameters
        ----------
        condition
            Condition vectors ``(cells, n_hidden)``.
        unconditional
            The "none" condition vectors, shaped like ``condition``; may be ``None`` when ``guidance=1``
            (the conditional estimate alone).
        n_steps
            DDIM steps.
        guidance
            Classifier-free guidance scale.
        eta
            0: deterministic given the starting noise; 1: DDPM's noise at every step.
        generator
            Random number generator; ``None``: torch's global one.

        Returns
        -------
        :class:`~torch.Tensor`
            Encoder tokens, ``(cells, n_tokens, token_dim)``.
        """
        n_cells, device = condition.shape[0], condition.device
        shape = (n_cells, self.n_tokens, self.token_dim)
        z = torch.randn(shape, generator=generator, device=device)
        timesteps = torch.linspace(self.n_timesteps - 1, 0, n_steps, device=device).round().long().unique_consecutive()
        for i, t in enumerate(timesteps):
            t_batch = t.expand(n_cells)
            noise = self.predict_noise(z, t_batch, condition).float()
            if unconditional is not None and guidance != 1.0:
                free = self.predict_noise(z, t_batch, unconditional).float()
                noise = free + guidance * (noise - free)
            alpha = self.alphas_cumprod[t]
            alpha_prev = self.alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else z.new_tensor(1.0)
            # at the noisiest steps sqrt(ᾱ) is about 1e-3, so the clean-token estimate amplifies any error
            # in the noise estimate a thousandfold: keep it in the training range (static thresholding)
            z0 = ((z - (1 - alpha).sqrt() * noise) / alpha.sqrt()).clamp(-self.latent_bound, self.latent_bound)
            noise = (z - alpha.sqrt() * z0) / (1 - alpha).sqrt()
            sigma = eta * ((1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)).sqrt()
            z = alpha_prev.sqrt() * z0 + (1 - alpha_prev - sigma**2).clamp(min=0).sqrt() * noise
            if eta > 0 and i + 1 < len(timesteps):
                z = z + sigma * torch.randn(shape, generator=generator, device=device)
        return self.unstandardize(z)

    @torch.inference_mode()
    def decode_sample(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Log-normalised expression of latent tokens: each gene detected with its decoded probability.

        Parameters
        ----------
        z
            Encoder tokens, ``(cells, n_tokens, token_dim)``.
        generator
            Random number generator of the detection draws; ``None``: torch's global one.

        Returns
        -------
        :class:`~torch.Tensor`
            ``float32`` ``(cells, n_genes)``.
        """
        logits, value = self.decode(z)
        detected = torch.rand(logits.shape, generator=generator, device=logits.device) < torch.sigmoid(logits.float())
        return value.float() * detected
