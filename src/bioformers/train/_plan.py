"""The Lightning training plan: AdamW with linear warm-up then cosine decay."""

from __future__ import annotations

import math
from functools import cache

import torch
from scvi.train import TrainingPlan


class WarmupCosineTrainingPlan(TrainingPlan):
    """scvi-tools' :class:`~scvi.train.TrainingPlan` with a transformer schedule.

    Parameters
    ----------
    module
        The network (any of ``bioformers.module``).
    lr
        Peak learning rate, reached after warm-up.
    weight_decay
        AdamW weight decay (not applied to biases, norms and embeddings).
    warmup_fraction
        Fraction of all optimiser steps spent warming up linearly from 0 to ``lr``.
    min_lr_ratio
        The cosine decays to ``lr * min_lr_ratio`` at the last step.
    **kwargs
        Passed to :class:`~scvi.train.TrainingPlan`.

    Examples
    --------
    :meth:`bioformers.BioFormer.train` builds the plan; ``plan_kwargs`` reach it:

    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> bf.pp.bin(adata)
    >>> bf.BioFormer.setup_anndata(adata)
    >>> model = bf.BioFormer(adata, n_hidden=16, n_layers=1, n_heads=2)
    >>> model.train(max_epochs=1, batch_size=32, plan_kwargs={"min_lr_ratio": 0.1})
    >>> type(model.trainer.lightning_module).__name__, model.trainer.lightning_module.min_lr_ratio
    ('WarmupCosineTrainingPlan', 0.1)
    """

    def __init__(
        self,
        module,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.05,
        **kwargs,
    ):
        super().__init__(module, lr=lr, weight_decay=weight_decay, optimizer="AdamW", **kwargs)
        self.warmup_fraction = warmup_fraction
        self.min_lr_ratio = min_lr_ratio

    def configure_optimizers(self):
        """AdamW over two parameter groups and a per-step warm-up/cosine schedule.

        Returns
        -------
        dict
            The optimizer and its step-wise learning-rate scheduler, as Lightning expects.
        """
        decay, no_decay = [], []
        for name, param in self.module.named_parameters():
            if not param.requires_grad:
                continue
            (decay if param.ndim >= 2 and "embedding" not in name else no_decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=(0.9, 0.98),
            eps=1e-8,
        )
        total = total_steps(self.trainer)
        warmup = max(int(self.warmup_fraction * total), 1)
        floor = self.min_lr_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def compute_and_log_metrics(self, loss_output, metrics, mode):
        """scvi-tools' metric logging, under ``no_grad`` instead of ``inference_mode``.

        scvi-tools logs the extra metrics (``mlm_loss``, ``expression_loss``) inside
        ``torch.inference_mode``, so Lightning's running sums become inference tensors; under DDP
        Lightning reduces them across processes in place at the end of an epoch, which PyTorch
        refuses ("Inplace update to inference tensor outside InferenceMode"). ``no_grad`` logs the
        same values.

        Parameters
        ----------
        loss_output
            The module's :class:`~scvi.module.base.LossOutput` of the step.
        metrics
            scvi-tools' metric collection of the mode.
        mode
            ``"train"`` or ``"validation"``.
        """
        log = getattr(TrainingPlan.compute_and_log_metrics, "__wrapped__", TrainingPlan.compute_and_log_metrics)
        with torch.no_grad():
            return log(self, loss_output, metrics, mode)


@cache
def _cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16 on this CPU (read from the kernel's CPU flags; False where unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def default_precision(accelerator: str = "auto") -> str:
    """Lightning precision: bf16 autocast on CUDA with bf16 and on CPUs with AMX/AVX512-BF16, else fp32.

    Parameters
    ----------
    accelerator
        Lightning's ``accelerator`` argument: ``"auto"``, ``"gpu"`` and ``"cuda"`` use CUDA when
        available; anything else is the CPU.

    Returns
    -------
    str
        ``"bf16-mixed"`` or ``"32-true"``.

    Examples
    --------
    >>> import bioformers as bf
    >>> bf.train.default_precision("cpu") in ("bf16-mixed", "32-true")
    True
    """
    use_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if _cpu_has_fast_bf16() else "32-true"


class PerturbationTrainingPlan(WarmupCosineTrainingPlan):
    """The same optimiser and schedule, on the perturbation-response loss.

    Batches come from :class:`~bioformers.data.PerturbationPairs`;
    :meth:`~bioformers.module.BioFormerPerturbationModule.response_loss` scores them. scvi-tools' training and
    validation steps, logging and history are used unchanged.

    Parameters
    ----------
    module
        The :class:`~bioformers.module.BioFormerPerturbationModule` of a model set up with a perturbation column.
    lr, weight_decay, warmup_fraction, min_lr_ratio, **kwargs
        As in :class:`~bioformers.train.WarmupCosineTrainingPlan`.

    Examples
    --------
    :func:`bioformers.tl.train_perturbation` trains with it:

    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic_perturbation(n_obs=300, n_vars=24, n_programs=2, n_unmeasured=1)
    >>> model = bf.tl.train_perturbation(
    ...     adata, perturbation_key="perturbation", n_hidden=16, n_layers=1, max_epochs=1, batch_size=32
    ... )
    >>> type(model.trainer.lightning_module).__name__
    'PerturbationTrainingPlan'
    """

    def forward(self, batch, loss_kwargs=None):
        """The response loss of one batch of pairs, in the ``(inference, generative, loss)`` form scvi-tools expects.

        Parameters
        ----------
        batch
            A batch of :class:`~bioformers.data.PerturbationPairs`.
        loss_kwargs
            Ignored (scvi-tools passes its loss arguments).

        Returns
        -------
        tuple
            ``(None, None, loss_output)``.
        """
        return None, None, self.module.response_loss(batch)


def total_steps(trainer) -> int:
    """Optimiser steps of the whole run, for the learning-rate schedule.

    A data module that knows the length of its epochs (``steps_per_epoch``, training from disk) is
    asked directly: Lightning's ``estimated_stepping_batches`` builds the training loader and starts
    iterating it, which, called here, happens before a checkpoint is restored, so a loader resumed
    in the middle of an epoch would start the epoch over.
    """
    per_epoch = getattr(trainer.datamodule, "steps_per_epoch", None)
    if per_epoch is None:
        return max(int(trainer.estimated_stepping_batches), 1)
    steps = math.ceil(per_epoch(trainer.world_size) / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
    return max(min(steps, trainer.max_steps) if trainer.max_steps > 0 else steps, 1)
