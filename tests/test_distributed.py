"""Distributed data-parallel training (``strategy="ddp"``) on CPU: 2 processes, gloo backend.

Lightning's default DDP launcher starts the other processes by running ``sys.argv`` again, so the
training runs in a script of its own (written below into ``tmp_path``) and every process goes on
to the end of it. The script reports, per process, which training cells it was given and the
loss Lightning logged; the test checks the sharding, the synced loss, that the loss matches a
1-process run with the same global batch, and that only global rank 0 wrote anything (the model,
the AnnData, one training checkpoint per epoch).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import bioformers as bf

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)

N_OBS, N_VARS, N_HIDDEN, MAX_EPOCHS, LR, GLOBAL_BATCH = 256, 40, 16, 3, 3e-3, 32
ARCHITECTURE = {"n_hidden": N_HIDDEN, "n_layers": 1, "n_heads": 2, "max_seq_len": 24}

SCRIPT = f"""
import json, os, sys

import lightning.pytorch as pl

import bioformers as bf

out, devices, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


class Record(pl.Callback):
    # what this process saw: its training cells (positions in the training set) and the logged loss
    def on_train_start(self, trainer, pl_module):
        self.cells, self.batches = [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.cells.append(sorted(int(i) for batch in trainer.train_dataloader.sampler for i in batch))
        self.batches.append(0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches[-1] += 1

    def on_train_end(self, trainer, pl_module):
        self.rank, self.world_size = trainer.global_rank, trainer.world_size
        self.final_loss = float(trainer.callback_metrics["train_loss"])


record = Record()
adata = bf.datasets.synthetic(n_obs={N_OBS}, n_vars={N_VARS})
model = bf.tl.pretrain(
    adata, **{ARCHITECTURE!r}, max_epochs={MAX_EPOCHS}, batch_size=batch_size, lr={LR}, seed=0,
    accelerator="cpu", devices=devices, strategy="ddp", enable_progress_bar=False, callbacks=[record],
    log_save_dir=os.path.join(out, "logs"), save_checkpoints=os.path.join(out, "checkpoints"),
)
# every process runs on from here: save() writes on global rank 0 only, the user guards the rest
model.save(os.path.join(out, f"model_rank{{record.rank}}"))
if model.is_global_zero:
    adata.write_h5ad(os.path.join(out, f"adata_rank{{record.rank}}.h5ad"))

report = {{
    "rank": record.rank, "world_size": record.world_size, "is_global_zero": model.is_global_zero,
    "n_train": len(model.train_indices), "cells": record.cells, "batches": record.batches,
    "final_loss": record.final_loss, "history": model.loss_history(),
    "obsm": sorted(adata.obsm), "uns": sorted(adata.uns),
}}
os.makedirs(os.path.join(out, "..", "reports"), exist_ok=True)
with open(os.path.join(out, "..", "reports", f"rank{{record.rank}}.json"), "w") as f:
    json.dump(report, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ddp(
    tmp_path: Path, *, devices: int, batch_size: int, timeout: float = 240, script_text: str = SCRIPT
) -> tuple[Path, dict[int, dict]]:
    """Run the training script with Lightning's DDP launcher; return the output folder and per-rank reports."""
    script, out = tmp_path / "train_ddp.py", tmp_path / "out"
    script.write_text(script_text)
    out.mkdir()
    # a clean environment: no rank or cluster variables inherited (Lightning would take them as its
    # cluster), one thread per process, a free port for the process group
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_", "OMPI_", "PL_", "TORCHELASTIC_"))}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK"):
        env.pop(key, None)
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    # its own process group, so a hung run is killed with every process it started
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(devices), str(batch_size)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"DDP training did not finish in {timeout} s:\n{output[-5000:]}")
    assert proc.returncode == 0, f"DDP training failed (exit {proc.returncode}):\n{output[-5000:]}"
    reports = {}
    for path in sorted((tmp_path / "reports").glob("rank*.json")):
        report = json.loads(path.read_text())
        reports[report["rank"]] = report
    return out, reports


@pytest.fixture(scope="module")
def single_process_loss() -> list[float]:
    """Train loss per epoch of the same setup in this process, on one device with the same global batch."""
    adata = bf.datasets.synthetic(n_obs=N_OBS, n_vars=N_VARS)
    model = bf.tl.pretrain(
        adata,
        **ARCHITECTURE,
        max_epochs=MAX_EPOCHS,
        batch_size=GLOBAL_BATCH,
        lr=LR,
        seed=0,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
    )
    return model.loss_history()["train_loss"]


def test_ddp_on_two_cpu_processes(tmp_path, single_process_loss):
    devices = 2
    out, reports = _run_ddp(tmp_path, devices=devices, batch_size=GLOBAL_BATCH // devices)

    # both processes ran to the end of the script, in a world of 2
    assert sorted(reports) == [0, 1]
    zero, one = reports[0], reports[1]
    assert zero["world_size"] == one["world_size"] == devices
    assert zero["is_global_zero"] and not one["is_global_zero"]

    # each process trained on its own half of the training cells (scvi-tools' distributed sampler;
    # it repeats a cell to make the halves equal), every epoch, in batches of batch_size
    n_train = zero["n_train"]
    assert one["n_train"] == n_train
    for cells_zero, cells_one in zip(zero["cells"], one["cells"], strict=True):
        assert len(cells_zero) == len(cells_one) == -(-n_train // devices)
        assert set(cells_zero) | set(cells_one) == set(range(n_train))
        assert len(set(cells_zero) & set(cells_one)) == 2 * len(cells_zero) - n_train
    assert len(zero["cells"]) == MAX_EPOCHS
    assert zero["batches"] == one["batches"] == [-(-len(zero["cells"][0]) // (GLOBAL_BATCH // devices))] * MAX_EPOCHS

    # the logged loss is averaged across processes: both saw the same value, rank 0 recorded it
    history = zero["history"]["train_loss"]
    assert len(history) == MAX_EPOCHS
    assert zero["final_loss"] == one["final_loss"] == pytest.approx(history[-1])
    assert one["history"] == {"train_loss": [], "validation_loss": []}
    # and it matches one process with the same global batch (same number of optimiser steps): the
    # two runs differ only in the random masks, far less than what training changes
    assert history[-1] < history[0] - 5
    assert history[-1] == pytest.approx(single_process_loss[-1], rel=0.03)

    # only global rank 0 wrote: into its AnnData (embedding, record), the saved model, the h5ad
    assert zero["obsm"] == ["X_bioformers"]
    assert "bioformers" in zero["uns"]
    assert one["obsm"] == []
    assert "bioformers" not in one["uns"]
    # (logs/: scvi-tools' loss history under DDP, written by rank 0's logger)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    written = [path for path in written if not path.startswith(("logs/", "checkpoints/"))]
    assert written == ["adata_rank0.h5ad", "model_rank0/model.json", "model_rank0/model.safetensors"]
    # one checkpoint per epoch, written once (every process takes part, rank 0 writes)
    checkpoints = sorted(str(p.relative_to(out / "checkpoints")) for p in (out / "checkpoints").rglob("*"))
    epochs = [f"epoch_{epoch:04d}" for epoch in range(1, MAX_EPOCHS + 1)]
    assert checkpoints == sorted(
        [*epochs, *(f"{e}/checkpoint.json" for e in epochs), *(f"{e}/checkpoint.safetensors" for e in epochs)]
    )

    adata = ad.read_h5ad(out / "adata_rank0.h5ad")
    embedding = adata.obsm["X_bioformers"]
    assert embedding.shape == (N_OBS, N_HIDDEN)
    assert np.isfinite(embedding).all()
    assert adata.uns["bioformers"]["params"]["max_epochs"] == MAX_EPOCHS
    np.testing.assert_allclose(adata.uns["bioformers"]["history"]["train_loss"], history)
    # the saved weights are the trained ones: reloaded, they give the embedding rank 0 wrote
    model = bf.BioFormer.load(str(out / "model_rank0"), adata=adata)
    np.testing.assert_allclose(model.get_latent_representation(), embedding, rtol=1e-3, atol=1e-3)


# --- training from disk: each process reads its own share of a backed file ---------------------------
N_BACKED, CHUNK = 250, 40

BACKED_SCRIPT = f"""
import json, os, sys

import anndata as ad
import lightning.pytorch as pl
from scvi import REGISTRY_KEYS

import bioformers as bf

out, devices, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
path = os.path.join(out, "..", "cells.h5ad")  # written by the test


class Record(pl.Callback):
    # the cells of every minibatch this process trained on, per epoch
    def on_train_epoch_start(self, trainer, pl_module):
        self.cells = getattr(self, "cells", []) + [[]]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.cells[-1] += batch[REGISTRY_KEYS.INDICES_KEY].ravel().tolist()


record = Record()
adata = ad.read_h5ad(path, backed="r")
model = bf.tl.pretrain(
    adata, **{ARCHITECTURE!r}, max_epochs=2, batch_size=batch_size, lr={LR}, seed=0, chunk_size={CHUNK},
    accelerator="cpu", devices=devices, strategy="ddp", enable_progress_bar=False, callbacks=[record],
    log_save_dir=os.path.join(out, "logs"),
)
model.save(os.path.join(out, "model"))
report = {{
    "rank": model.trainer.global_rank, "cells": record.cells, "history": model.loss_history(),
    "obsm": sorted(adata.obsm),
}}
os.makedirs(os.path.join(out, "..", "reports"), exist_ok=True)
with open(os.path.join(out, "..", "reports", f"rank{{report['rank']}}.json"), "w") as f:
    json.dump(report, f)
"""


def test_ddp_reads_each_cell_of_a_backed_file_once_per_epoch(tmp_path):
    bf.datasets.synthetic(n_obs=N_BACKED, n_vars=N_VARS).write_h5ad(tmp_path / "cells.h5ad")
    out, reports = _run_ddp(tmp_path, devices=2, batch_size=16, script_text=BACKED_SCRIPT)
    assert sorted(reports) == [0, 1]
    share = -(-N_BACKED // 2)
    for epoch in range(2):
        zero, one = reports[0]["cells"][epoch], reports[1]["cells"][epoch]
        # equal shares (the same number of steps), every cell read, only the padding twice
        assert len(zero) == len(one) == share
        assert set(zero) | set(one) == set(range(N_BACKED))
        assert len(zero) + len(one) - len(set(zero) | set(one)) == 2 * share - N_BACKED
    assert reports[0]["cells"][0] != reports[0]["cells"][1], "a new order every epoch"
    # the losses are synced; rank 0 alone keeps them, writes the embedding and the model
    assert len(reports[0]["history"]["train_loss"]) == 2 and reports[1]["history"]["train_loss"] == []
    assert reports[0]["obsm"] == ["X_bioformers"] and reports[1]["obsm"] == []
    assert sorted(p.name for p in (out / "model").iterdir()) == ["model.json", "model.safetensors"]
