"""Speed, FLOP utilisation and memory of bioformers on this machine, next to a naive transformer and scVI.

One command (``make perf`` runs the same; ``--quick`` checks the script in a few minutes)::

    python benchmarks/perf.py [--device cpu|cuda] [--quick] [--phases peak,train,...]

Each phase runs in a fresh subprocess (``perf.py --phase NAME --out FILE.json``), so its peak memory
(``ru_maxrss``; on CUDA also ``torch.cuda.max_memory_allocated``) is its own. On PBMC 3k (bundled,
2,638 cells) with 2,000 ``seurat_v3`` highly variable genes, value binning and the default model:

* ``peak``: fp32 and bf16 GFLOP/s of square matmuls (median of several after warm-up); the bf16
  (or fp32) peak is the denominator of every model FLOP utilisation (MFU) below.
* ``train``: ``BioFormer(adata).train()`` with default epochs and precision: seconds per epoch
  (median over epochs after the first), cells/s and tokens/s, total seconds; FLOPs of one training
  step counted by ``torch.utils.flop_counter.FlopCounterMode`` (per operator; attention ops it has
  no formula for are added analytically and listed), MFU.
* ``embed``: the trained model in a fresh process: ``get_latent_representation()`` of every cell
  (median of 3), FLOPs per embedded cell, MFU, and KMeans / Leiden AvgBIO of the embedding.
* ``naive``: the textbook reference, a plain fp32 ``torch.nn.TransformerEncoder`` of the same width,
  heads, layers and feed-forward size over all 2,000 genes of each cell (dense values, MSE on 15%
  masked values, AdamW), a few timed steps: cells/s and the ratio bioformers / naive.
* ``scvi``: ``scvi.model.SCVI`` on the raw counts, ``train(early_stopping=True)``, default epochs:
  seconds, epochs run, KMeans AvgBIO.
* ``scale_cells``: seconds per epoch for 1k-8k cells synthesised from PBMC 3k (cells resampled with
  replacement, counts redrawn as Poisson(x)), default model, one epoch each without validation;
  the first batches are a warm-up, and microseconds per cell are measured after them.
* ``scale_seq``: ``max_seq_len`` 256-2048 on 1k synthesised cells with 4,000 HVGs: seconds per epoch,
  tokens/s and MFU.
* ``large``: runs ``benchmarks/embed_large.py`` (backed 10k-100k cells) if it exists, and shows its table.

Writes ``benchmarks/results/perf_<device>.json`` and ``.md`` (``perf_<device>_quick.*`` with ``--quick``,
``..._partial.*`` when ``--phases`` leaves some out) and prints the tables. Timings are wall-clock on
whatever else the machine is running: the load average at start and end is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from statistics import median

import anndata as ad
import lightning
import numpy as np
import scanpy as sc
import scvi
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.dataloaders import AnnDataLoader
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import bioformers as bf
from bioformers.train import default_precision

RESULTS = Path(__file__).parent / "results"
EMBED_LARGE = Path(__file__).parent / "embed_large.py"
SEED = 0


@dataclass(frozen=True)
class Sizes:
    """How much each phase measures; ``QUICK`` only checks that the script works."""

    matmul_n: tuple[int, ...] = (2048, 4096)
    matmul_n_cuda: tuple[int, ...] = (4096, 8192)
    matmul_repeats: int = 5
    train_cells: int | None = None  # None: all of PBMC 3k
    train_epochs: int | None = None  # None: the model's default for the data size
    embed_repeats: int = 3
    naive_batch: int = 8
    naive_steps: int = 5
    scvi_epochs: int | None = None  # None: scvi-tools' default
    scale_cells: tuple[int, ...] = (1000, 2000, 4000, 8000)
    seq_lens: tuple[int, ...] = (256, 512, 1024, 2048)
    seq_cells: int = 1000
    seq_hvgs: int = 4000
    warmup_batches: int = 3
    quick: bool = False


FULL = Sizes()
QUICK = Sizes(
    matmul_n=(512, 1024),
    matmul_n_cuda=(1024, 2048),
    matmul_repeats=3,
    train_cells=256,
    train_epochs=2,
    naive_batch=2,
    naive_steps=2,
    scvi_epochs=5,
    scale_cells=(256, 512),
    seq_lens=(128, 256),
    seq_cells=256,
    warmup_batches=1,
    quick=True,
)


# --- data -----------------------------------------------------------------------------------------
def pbmc_counts(n_top_genes: int = 2000, n_cells: int | None = None) -> ad.AnnData:
    """PBMC 3k raw counts on its ``n_top_genes`` seurat_v3 HVGs (optionally a random subset of cells)."""
    adata = bf.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=n_top_genes)
    adata = adata[:, adata.var["highly_variable"]].copy()
    if n_cells is not None and n_cells < adata.n_obs:
        rows = np.sort(np.random.default_rng(SEED).choice(adata.n_obs, n_cells, replace=False))
        adata = adata[rows].copy()
    return adata


def synthesize(counts: ad.AnnData, n_cells: int, seed: int = SEED) -> ad.AnnData:
    """``n_cells`` cells like ``counts``: rows resampled with replacement, each count redrawn as Poisson(x)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, counts.n_obs, n_cells)
    X = sparse.csr_matrix(counts.X[rows], dtype=np.float32)
    X.data = rng.poisson(X.data).astype(np.float32)
    X.eliminate_zeros()
    obs = counts.obs.iloc[rows].reset_index(drop=True)
    obs.index = obs.index.astype(str)
    return ad.AnnData(X, obs=obs, var=counts.var.copy())


def binned(adata: ad.AnnData) -> ad.AnnData:
    """Value-bin the counts and register them with :class:`bioformers.BioFormer` (in place)."""
    bf.pp.bin(adata)
    bf.BioFormer.setup_anndata(adata)
    return adata


# --- measuring ------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str):
    """The autocast the training uses (Lightning's ``bf16-mixed`` when the default precision is bf16)."""
    if default_precision(device) == "bf16-mixed":
        return torch.autocast(device, dtype=torch.bfloat16)
    return nullcontext()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def sequence_length(module, n_genes: int) -> int:
    """Tokens per cell, CLS included."""
    return min(n_genes, module.max_seq_len - 1) + 1


class EpochTimer(Callback):
    """Wall time of each training epoch, of its training batches, and of the batches after a warm-up."""

    def __init__(self, warmup_batches: int = 0):
        self.warmup_batches = warmup_batches
        self.epochs: list[dict] = []

    def _now(self, pl_module) -> float:
        sync(pl_module.device.type)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = self._last = self._warm = self._now(pl_module)
        self._cells = self._warm_cells = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._last = self._now(pl_module)
        self._cells += len(batch[REGISTRY_KEYS.X_KEY])
        if batch_idx + 1 == self.warmup_batches:
            self._warm, self._warm_cells = self._last, self._cells

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(
            {
                "seconds": self._now(pl_module) - self._start,  # includes validation
                "train_seconds": self._last - self._start,
                "cells": self._cells,
                "steady_seconds": self._last - self._warm,
                "steady_cells": self._cells - self._warm_cells,
            }
        )


def train_model(
    adata: ad.AnnData, device: str, *, warmup_batches: int = 0, model_kwargs: dict | None = None, **train_kwargs
):
    """A default (or ``model_kwargs``) BioFormer trained on ``adata``; returns the model, its timer and seconds."""
    scvi.settings.seed = SEED
    model = bf.BioFormer(adata, **(model_kwargs or {}))
    timer = EpochTimer(warmup_batches)
    start = time.perf_counter()
    model.train(accelerator=device, callbacks=[timer], enable_progress_bar=False, **train_kwargs)
    return model, timer, time.perf_counter() - start


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


#: Attention kernels FlopCounterMode has no formula for (torch 2.13: the fused CPU kernels), counted
#: analytically like their CUDA counterparts: 2 matmuls forward, 5 backward (scores recomputed).
EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
    torch.ops.aten._scaled_dot_product_fused_attention_overrideable: _sdpa_flops,
    torch.ops.aten._scaled_dot_product_fused_attention_overrideable_backward: _sdpa_backward_flops,
}
#: Ops that do matmul-like work: any of them dispatched without a FLOP formula is reported as uncounted.
MATMUL_LIKE = re.compile(r"mm|matmul|linear|attention|conv|einsum|dot")


class _OpRecorder(TorchDispatchMode):
    """Records the aten ops that do their own work (not those that decompose into other ops, like ``linear``)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd):
            self.ops[func.overloadpacket] += 1
        return func(*args, **(kwargs or {}))


def count_flops(step, n_cells: int) -> dict:
    """FLOPs of ``step()`` per cell, by operator, with the attention ops added analytically or left uncounted.

    ``uncounted`` lists matmul-like ops that ran without a FLOP formula: their work is missing from the total.
    """
    recorder = _OpRecorder()
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter, recorder:
        step()
    builtin, ran = flop_counter.flop_registry, recorder.ops
    return {
        "flops_per_cell": counter.get_total_flops() / n_cells,
        "by_op_per_cell": {str(op): n / n_cells for op, n in counter.get_flop_counts()["Global"].items()},
        "added_analytically": sorted(str(op) for op in ran if op in EXTRA_FLOP_FORMULAS and op not in builtin),
        "uncounted": sorted(
            str(op) for op in ran if op not in builtin and op not in EXTRA_FLOP_FORMULAS and MATMUL_LIKE.search(str(op))
        ),
    }


def minibatch(model, n_cells: int) -> dict[str, torch.Tensor]:
    """A real, shuffled minibatch from the model's registered AnnData."""
    loader = AnnDataLoader(model.adata_manager, batch_size=min(n_cells, model.adata.n_obs), shuffle=True)
    return next(iter(loader))


def train_step_flops(model, device: str, n_cells: int = 64) -> dict:
    """FLOPs of one training step (forward + backward), as the training plan runs it.

    scvi-tools' ``TrainingPlan.training_step`` calls ``module(batch)`` (``inference``, ``generative``,
    ``loss``) under the precision plugin's autocast; Lightning then runs the backward outside it.
    """
    module, batch = model.module, minibatch(model, n_cells)
    module.train()

    def step():
        with autocast(device):
            _, _, losses = module(batch)
        losses.loss.backward()

    flops = count_flops(step, len(batch[REGISTRY_KEYS.X_KEY]))
    module.zero_grad(set_to_none=True)
    module.eval()
    return flops


def embed_flops(model, device: str, n_cells: int = 256) -> dict:
    """FLOPs of ``module.embed`` per cell, under the autocast ``get_latent_representation`` uses."""
    bins = minibatch(model, n_cells)[REGISTRY_KEYS.X_KEY]
    model.module.eval()

    def step():
        with torch.inference_mode(), autocast(device):
            model.module.embed(bins)

    return count_flops(step, len(bins))


def timed(fn, repeats: int, device: str) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


# --- phases (each runs in its own process) ----------------------------------------------------------
def phase_peak(sizes: Sizes, device: str, workdir: Path) -> dict:
    """GFLOP/s of square matmuls in fp32 and bf16 (2 warm-up calls, median of the repeats)."""
    torch.manual_seed(SEED)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for n in sizes.matmul_n_cuda if device == "cuda" else sizes.matmul_n:
            a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
            timed(lambda a=a, b=b: a @ b, 2, device)
            seconds = median(timed(lambda a=a, b=b: a @ b, sizes.matmul_repeats, device))
            rows.append({"dtype": str(dtype).removeprefix("torch."), "n": n, "gflops": 2 * n**3 / seconds / 1e9})
    peak = {d: max(r["gflops"] for r in rows if r["dtype"] == d) for d in ("float32", "bfloat16")}
    return {"matmuls": rows, "repeats": sizes.matmul_repeats, "peak_gflops": peak}


def phase_train(sizes: Sizes, device: str, workdir: Path) -> dict:
    """Default model, default epochs and precision on PBMC 3k; saves it for ``embed``."""
    adata = binned(pbmc_counts(n_cells=sizes.train_cells))
    model, timer, seconds = train_model(adata, device, max_epochs=sizes.train_epochs)
    rss = peak_rss_gib()
    model.save(str(workdir / "model"), overwrite=True)
    epochs = timer.epochs[1:] or timer.epochs  # the first epoch is a warm-up
    seq_len = sequence_length(model.module, adata.n_vars)
    cells = epochs[0]["cells"]
    train_seconds = median(e["train_seconds"] for e in epochs)
    cells_per_s = cells / train_seconds
    return {
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "train_cells_per_epoch": cells,
        "seq_len": seq_len,
        "precision": default_precision(device),
        "epochs": len(timer.epochs),
        "timed_epochs": len(epochs),
        "total_seconds": seconds,
        "epoch_seconds": median(e["seconds"] for e in epochs),
        "epoch_train_seconds": train_seconds,
        "cells_per_s": cells_per_s,
        "tokens_per_s": cells_per_s * seq_len,
        "peak_rss_gib": rss,
        "flops": train_step_flops(model, device),
    }


def phase_embed(sizes: Sizes, device: str, workdir: Path) -> dict:
    """The trained model in a fresh process: embedding speed, FLOPs and AvgBIO."""
    adata = binned(pbmc_counts(n_cells=sizes.train_cells))
    model = bf.BioFormer.load(str(workdir / "model"), adata=adata, accelerator=device)

    def embed():
        adata.obsm["X_bioformers"] = model.get_latent_representation()

    embed()  # warm-up
    times = timed(embed, sizes.embed_repeats, device)
    rss = peak_rss_gib()
    seconds = median(times)
    return {
        "n_cells": adata.n_obs,
        "seq_len": sequence_length(model.module, adata.n_vars),
        "precision": default_precision(device),
        "repeats": len(times),
        "seconds": seconds,
        "cells_per_s": adata.n_obs / seconds,
        "peak_rss_gib": rss,
        "flops": embed_flops(model, device),
        "avg_bio": avg_bio_scores(adata, "X_bioformers", ("kmeans", "leiden")),
    }


def avg_bio_scores(adata: ad.AnnData, rep: str, clusterings: tuple[str, ...]) -> dict[str, dict]:
    return {c: bf.metrics.avg_bio(adata, label_key="cell_type", use_rep=rep, cluster=c) for c in clusterings}


class NaiveTransformer(nn.Module):
    """The textbook model: every gene a token (gene embedding + linear embedding of its log1p value)."""

    def __init__(self, n_genes: int, d_model: int, n_heads: int, n_layers: int, d_ffn: int):
        super().__init__()
        self.genes = nn.Embedding(n_genes, d_model)
        self.value = nn.Linear(1, d_model)
        self.mask_token = nn.Parameter(torch.zeros(d_model))
        layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ffn, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 1)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE of the masked values reconstructed from the rest of the cell."""
        tokens = self.genes.weight + self.value(values.unsqueeze(-1))
        tokens = torch.where(mask.unsqueeze(-1), self.mask_token, tokens)
        predicted = self.head(self.encoder(tokens)).squeeze(-1)
        return F.mse_loss(predicted[mask], values[mask])


def architecture(model) -> dict[str, int]:
    """Width, heads, layers and feed-forward width of a BioFormer, read from its module."""
    module = model.module
    block = module.encoder.blocks[0]
    return {
        "d_model": module.gene_embedding.embedding_dim,
        "n_heads": model.init_params_["non_kwargs"]["n_heads"],
        "n_layers": len(module.encoder.blocks),
        "d_ffn": next(m for m in block.ffn.modules() if isinstance(m, nn.Linear)).out_features,
    }


def phase_naive(sizes: Sizes, device: str, workdir: Path) -> dict:
    """fp32 nn.TransformerEncoder over all genes: one counted warm-up step, then timed AdamW steps."""
    adata = binned(pbmc_counts())
    arch = architecture(bf.BioFormer(adata))
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    values = torch.as_tensor(lognorm.X.toarray(), dtype=torch.float32)

    torch.manual_seed(SEED)
    net = NaiveTransformer(adata.n_vars, **arch).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step():
        rows = torch.randint(0, len(values), (sizes.naive_batch,))
        x = values[rows].to(device)
        loss = net(x, torch.rand(x.shape, device=device) < 0.15)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    flops = count_flops(step, sizes.naive_batch)  # also the warm-up step
    step_seconds = median(timed(step, sizes.naive_steps, device))
    cells_per_s = sizes.naive_batch / step_seconds
    return {
        "architecture": arch,
        "precision": "32-true",
        "seq_len": adata.n_vars,
        "batch_size": sizes.naive_batch,
        "timed_steps": sizes.naive_steps,
        "step_seconds": step_seconds,
        "cells_per_s": cells_per_s,
        "tokens_per_s": cells_per_s * adata.n_vars,
        "flops": flops,
    }


def phase_scvi(sizes: Sizes, device: str, workdir: Path) -> dict:
    """scVI with defaults and early stopping on the same raw counts."""
    adata = pbmc_counts(n_cells=sizes.train_cells)
    scvi.settings.seed = SEED
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata)
    epochs_arg = {} if sizes.scvi_epochs is None else {"max_epochs": sizes.scvi_epochs}
    start = time.perf_counter()
    model.train(early_stopping=True, accelerator=device, enable_progress_bar=False, **epochs_arg)
    seconds = time.perf_counter() - start
    adata.obsm["X_scVI"] = model.get_latent_representation()
    return {
        "n_cells": adata.n_obs,
        "seconds": seconds,
        "epochs": len(model.history["elbo_train"]),
        "max_epochs": model.trainer.max_epochs,
        "avg_bio": avg_bio_scores(adata, "X_scVI", ("kmeans",)),
    }


def one_epoch(adata: ad.AnnData, device: str, sizes: Sizes, **model_kwargs) -> tuple[dict, bf.BioFormer]:
    """One training epoch without validation; speed measured after the warm-up batches."""
    model, timer, _ = train_model(
        adata,
        device,
        warmup_batches=sizes.warmup_batches,
        model_kwargs=model_kwargs,
        max_epochs=1,
        train_size=1.0,
        limit_val_batches=0,
    )
    epoch = timer.epochs[0]
    seq_len = sequence_length(model.module, adata.n_vars)
    cells_per_s = epoch["steady_cells"] / epoch["steady_seconds"]
    return {
        "n_cells": adata.n_obs,
        "seq_len": seq_len,
        "epoch_seconds": epoch["seconds"],
        "us_per_cell": 1e6 / cells_per_s,
        "steady_epoch_seconds": epoch["cells"] / cells_per_s,
        "cells_per_s": cells_per_s,
        "tokens_per_s": cells_per_s * seq_len,
    }, model


def phase_scale_cells(sizes: Sizes, device: str, workdir: Path) -> dict:
    """Seconds per epoch for more and more cells synthesised from PBMC 3k."""
    counts = pbmc_counts()
    rows = []
    for n in sizes.scale_cells:
        row, _ = one_epoch(binned(synthesize(counts, n)), device, sizes)
        rows.append(row)
    return {"warmup_batches": sizes.warmup_batches, "rows": rows}


def phase_scale_seq(sizes: Sizes, device: str, workdir: Path) -> dict:
    """Seconds per epoch and MFU for longer and longer sequences (cells synthesised from PBMC 3k)."""
    adata = binned(synthesize(pbmc_counts(n_top_genes=sizes.seq_hvgs), sizes.seq_cells))
    rows = []
    for max_seq_len in sizes.seq_lens:
        row, model = one_epoch(adata, device, sizes, max_seq_len=max_seq_len)
        row["flops"] = train_step_flops(model, device, n_cells=16)
        rows.append(row)
    return {
        "warmup_batches": sizes.warmup_batches,
        "n_genes": adata.n_vars,
        "precision": default_precision(device),
        "rows": rows,
    }


def phase_large(sizes: Sizes, device: str, workdir: Path) -> dict:
    """``benchmarks/embed_large.py``'s table (it runs its own subprocesses), its JSON written into ``workdir``."""
    if not EMBED_LARGE.exists():
        return {"skipped": f"{EMBED_LARGE.name} not found"}
    out = workdir / "embed_large.json"
    command = [sys.executable, str(EMBED_LARGE), "--out", str(out), *(["--quick"] if sizes.quick else [])]
    subprocess.run(command, check=True)
    table = json.loads(out.read_text())
    return {k: table[k] for k in ("n_cells", "seconds", "cells_per_s", "peak_rss_gib", "embed_rss_gib") if k in table}


PHASES = {
    "peak": phase_peak,
    "train": phase_train,
    "embed": phase_embed,
    "naive": phase_naive,
    "scvi": phase_scvi,
    "scale_cells": phase_scale_cells,
    "scale_seq": phase_scale_seq,
    "large": phase_large,
}
REQUIRES = {"embed": "train"}


def run_child(phase: str, sizes: Sizes, device: str, workdir: Path, out: Path) -> None:
    """The ``--phase`` entry point: run one phase and write its results and the process's peak memory."""
    result = PHASES[phase](sizes, device, workdir)
    result["process_peak_rss_gib"] = peak_rss_gib()
    if device == "cuda":
        result["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    out.write_text(json.dumps(result, indent=1))


# --- report -----------------------------------------------------------------------------------------
def machine(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "device": device,
        "torch": torch.__version__,
        "scvi-tools": scvi.__version__,
        "lightning": lightning.__version__,
        "bioformers": bf.__version__,
        "python": platform.python_version(),
        "date": datetime.now().isoformat(timespec="seconds"),
    }


def derive(results: dict) -> None:
    """Add the figures that combine phases: MFU against the measured peak, bioformers / naive speed."""
    peaks = results.get("peak", {}).get("peak_gflops", {})

    def mfu(flops: dict, cells_per_s: float, precision: str) -> float | None:
        peak = peaks.get("bfloat16" if precision.startswith("bf16") else "float32")
        return flops["flops_per_cell"] * cells_per_s / (peak * 1e9) if peak else None

    for phase in ("train", "embed", "naive"):
        if phase in results:
            r = results[phase]
            r["mfu"] = mfu(r["flops"], r["cells_per_s"], r["precision"])
    if "scale_seq" in results:
        for row in results["scale_seq"]["rows"]:
            row["mfu"] = mfu(row["flops"], row["cells_per_s"], results["scale_seq"]["precision"])
    if "train" in results and "naive" in results:
        results["naive"]["bioformers_speedup"] = results["train"]["cells_per_s"] / results["naive"]["cells_per_s"]


def table(rows: list[dict]) -> list[str]:
    """A markdown table whose columns are the keys of the rows."""

    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(cell(row[k]) for k in header) + " |" for row in rows), ""]


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def gflop(flops: dict) -> float:
    return flops["flops_per_cell"] / 1e9


def section_peak(p: dict) -> list[str]:
    rows = [{"dtype": r["dtype"], "n": r["n"], "GFLOP/s": r["gflops"]} for r in p["matmuls"]]
    return [f"## Matmul peak (n x n, median of {p['repeats']} after 2 warm-up calls)", "", *table(rows)]


def section_train(t: dict) -> list[str]:
    row = {
        "epochs": t["epochs"],
        "precision": t["precision"],
        "tokens/cell": t["seq_len"],
        "s/epoch": t["epoch_seconds"],
        "s/epoch (train batches)": t["epoch_train_seconds"],
        "cells/s": t["cells_per_s"],
        "tokens/s": t["tokens_per_s"],
        "total s": t["total_seconds"],
        "GFLOP/cell": gflop(t["flops"]),
        "MFU": pct(t["mfu"]),
        "peak RSS GiB": t["peak_rss_gib"],
    }
    return [
        f"## Training: PBMC 3k, {t['n_cells']:,} cells x {t['n_genes']:,} genes, `BioFormer(adata).train()`",
        "",
        *table([row]),
        f"s/epoch: median of the {t['timed_epochs']} epochs after the first, validation included; train batches: "
        f"the {t['train_cells_per_epoch']:,} training cells only, which cells/s, tokens/s and MFU are based on. "
        "GFLOP/cell: forward + backward of one step (FlopCounterMode, batch of 64).",
        "",
    ]


def section_embed(e: dict) -> list[str]:
    row = {
        "cells": e["n_cells"],
        "seconds": e["seconds"],
        "cells/s": e["cells_per_s"],
        "GFLOP/cell": gflop(e["flops"]),
        "MFU": pct(e["mfu"]),
        "peak RSS GiB": e["peak_rss_gib"],
        **{f"AvgBIO {c}": s["avg_bio"] for c, s in e["avg_bio"].items()},
    }
    title = f"## Embedding: `get_latent_representation()` of the trained model (median of {e['repeats']})"
    return [title, "", *table([row])]


def section_baselines(results: dict) -> list[str]:
    rows = []
    if "train" in results:
        t = results["train"]
        rows.append({"model": "bioformers (default)", "precision": t["precision"], "tokens/cell": t["seq_len"]})
        rows[-1] |= {"cells/s": t["cells_per_s"], "MFU": pct(t["mfu"]), "note": f"{t['epochs']} epochs"}
    if "naive" in results:
        n, a = results["naive"], results["naive"]["architecture"]
        name = f"naive `nn.TransformerEncoder` (d={a['d_model']}, {a['n_heads']} heads, {a['n_layers']} layers)"
        rows.append({"model": name, "precision": n["precision"], "tokens/cell": n["seq_len"]})
        rows[-1] |= {"cells/s": n["cells_per_s"], "MFU": pct(n["mfu"])}
        rows[-1]["note"] = f"median of {n['timed_steps']} steps of {n['batch_size']} cells"
    if "scvi" in results:
        s = results["scvi"]
        rows.append({"model": "scVI (defaults, early stopping)", "precision": "32-true", "tokens/cell": "-"})
        rows[-1] |= {"cells/s": s["n_cells"] * s["epochs"] / s["seconds"], "MFU": "-"}
        rows[-1]["note"] = (
            f"{s['seconds']:.0f} s, {s['epochs']} of {s['max_epochs']} epochs, "
            f"KMeans AvgBIO {s['avg_bio']['kmeans']['avg_bio']:.3f}"
        )
    if not rows:
        return []
    lines = ["## Training speed against the naive transformer and scVI", "", *table(rows)]
    if "bioformers_speedup" in results.get("naive", {}):
        lines += [f"bioformers / naive: {results['naive']['bioformers_speedup']:,.0f}x the cells per second.", ""]
    if "scvi" in results:
        lines += ["scVI cells/s: cells x epochs / training seconds (validation included).", ""]
    return lines


def section_scale_cells(s: dict) -> list[str]:
    rows = [
        {
            "cells": r["n_cells"],
            "s/epoch": r["epoch_seconds"],
            "s/epoch (steady)": r["steady_epoch_seconds"],
            "µs/cell": r["us_per_cell"],
            "cells/s": r["cells_per_s"],
        }
        for r in s["rows"]
    ]
    us = [r["us_per_cell"] for r in s["rows"]]
    return [
        "## Scaling in cells (synthesised from PBMC 3k, default model, one epoch without validation)",
        "",
        *table(rows),
        f"s/epoch: the whole epoch; steady, µs/cell and cells/s: after {s['warmup_batches']} warm-up batches. "
        f"Largest over smallest µs/cell across sizes: {max(us) / min(us):.2f} "
        "(constant µs/cell = time linear in cells).",
        "",
    ]


def section_scale_seq(s: dict) -> list[str]:
    rows = [
        {
            "max_seq_len": r["seq_len"],
            "s/epoch": r["epoch_seconds"],
            "s/epoch (steady)": r["steady_epoch_seconds"],
            "cells/s": r["cells_per_s"],
            "tokens/s": r["tokens_per_s"],
            "GFLOP/cell": gflop(r["flops"]),
            "MFU": pct(r["mfu"]),
        }
        for r in s["rows"]
    ]
    title = f"## Scaling in sequence length ({s['rows'][0]['n_cells']:,} synthesised cells, {s['n_genes']:,} HVGs)"
    return [title, "", *table(rows), f"Speed after {s['warmup_batches']} warm-up batches of one epoch.", ""]


def section_large(g: dict) -> list[str]:
    lines = ["## Large data: `benchmarks/embed_large.py` (backed AnnData)", ""]
    if "skipped" in g:
        return [*lines, f"skipped: {g['skipped']}", ""]
    keys = [k for k in ("n_cells", "seconds", "cells_per_s", "peak_rss_gib", "embed_rss_gib") if k in g]
    return lines + table([dict(zip(keys, values, strict=True)) for values in zip(*(g[k] for k in keys), strict=True)])


def section_memory(results: dict) -> list[str]:
    rows = [
        {
            "phase": phase,
            "peak RSS GiB": r["process_peak_rss_gib"],
            "CUDA max allocated GiB": r.get("cuda_max_allocated_gib"),
        }
        for phase, r in results.items()
        if "process_peak_rss_gib" in r
    ]
    return ["## Peak memory of each phase's process", "", *table(rows)] if rows else []


def section_flops(results: dict) -> list[str]:
    counted = [
        (name, results[phase]["flops"])
        for phase, name in (("train", "training step"), ("embed", "embedding"), ("naive", "naive training step"))
        if phase in results
    ]
    for row in results.get("scale_seq", {}).get("rows", []):
        counted.append((f"training step, max_seq_len {row['seq_len']}", row["flops"]))
    lines = []
    for name, flops in counted:
        by_op = ", ".join(f"`{op}` {n / 1e9:.3g}" for op, n in sorted(flops["by_op_per_cell"].items()))
        lines.append(f"* {name}, GFLOP per cell by operator: {by_op}.")
        if flops["added_analytically"]:
            lines.append(f"  Added analytically (no formula in torch): {', '.join(flops['added_analytically'])}.")
        if flops["uncounted"]:
            lines.append(f"  **Dispatched but not counted**: {', '.join(flops['uncounted'])}.")
    return ["## FLOP counts (torch.utils.flop_counter.FlopCounterMode)", "", *lines, ""] if lines else []


#: The report, in order: (phase whose results the section shows, or None for sections over all results).
SECTIONS = [
    ("peak", section_peak),
    ("train", section_train),
    ("embed", section_embed),
    (None, section_baselines),
    ("scale_cells", section_scale_cells),
    ("scale_seq", section_scale_seq),
    ("large", section_large),
    (None, section_memory),
    (None, section_flops),
]


def report(results: dict, info: dict) -> str:
    """Markdown tables of everything measured."""
    m = info["machine"]
    lines = [
        f"# bioformers performance: {m['gpu'] or m['cpu']} ({m['device']}{', --quick' if info['quick'] else ''})",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads; torch {m['torch']}, scvi-tools "
        f"{m['scvi-tools']}, lightning {m['lightning']}, bioformers {m['bioformers']}; {m['date']}. "
        f"Load average {info['load_start']:.1f} at start, {info['load_end']:.1f} at end. Times are medians: "
        "matmuls over the stated repeats, training over the epochs after the first, embedding over repeated runs "
        "after a warm-up, the naive model over its timed steps after a warm-up step. MFU = counted FLOPs per cell "
        "x cells/s / the measured matmul peak of the precision used (bf16 for bf16-mixed).",
        "",
    ]
    for phase, section in SECTIONS:
        if phase is None:
            lines += section(results)
        elif phase in results:
            lines += section(results[phase])
    if info["failed"]:
        lines += ["## Failed phases", "", *(f"* {p}: {msg}" for p, msg in info["failed"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script in a few minutes")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {', '.join(PHASES)}")
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.phase:
        run_child(args.phase, sizes, args.device, args.workdir, args.out)
        return

    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    phases = [p for p in PHASES if p in phases or any(REQUIRES.get(q) == p for q in phases)]
    info = {"machine": machine(args.device), "quick": args.quick, "load_start": os.getloadavg()[0], "failed": {}}
    results = {}
    with tempfile.TemporaryDirectory(prefix="bioformers_perf_") as tmp:
        workdir = Path(tmp)
        for phase in phases:
            if REQUIRES.get(phase) in info["failed"]:
                info["failed"][phase] = f"needs {REQUIRES[phase]}, which failed"
                continue
            out, log = workdir / f"{phase}.json", workdir / f"{phase}.log"
            command = [sys.executable, __file__, "--phase", phase, "--out", str(out), "--workdir", str(workdir)]
            command += ["--device", args.device] + (["--quick"] if args.quick else [])
            start = time.perf_counter()
            with open(log, "w") as f:
                code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT).returncode
            print(f"{phase}: {time.perf_counter() - start:.0f} s" + (f", FAILED (exit {code})" if code else ""))
            if code:
                tail = log.read_text().splitlines()[-30:]
                print("\n".join(tail), file=sys.stderr)
                info["failed"][phase] = tail[-1] if tail else f"exit {code}"
            else:
                results[phase] = json.loads(out.read_text())
    info["load_end"] = os.getloadavg()[0]
    derive(results)
    text = report(results, info)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    # a run of some phases does not overwrite the results of a run of all of them
    stem = f"perf_{args.device}{'_quick' if args.quick else ''}{'' if phases == list(PHASES) else '_partial'}"
    (RESULTS / f"{stem}.md").write_text(text + "\n")
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({**info, "sizes": asdict(sizes), "phases": phases, **results}, indent=1)
    )


if __name__ == "__main__":
    main()
