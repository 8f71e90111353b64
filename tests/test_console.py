"""What training prints: quiet by default, Lightning's messages from Scanpy's "hint" verbosity, a useful bar."""

from __future__ import annotations

import io
import logging
import warnings

import pytest
import scanpy as sc
import scvi

import bioformers as bf
from bioformers._logging import LIGHTNING_LOGGERS
from bioformers.train._progress import TrainingProgressBar

# what Lightning says on every run, as logged messages or warnings
LIGHTNING_NOISE = [
    "GPU available",
    "TPU available",
    "litlogger",
    "Loading `train_dataloader`",
    "Automatic Mixed Precision",
    "`Trainer.fit` stopped",
    "LeafSpec",
    "smaller than the logging interval",
    "v_num",
]
TRAIN = {"max_epochs": 2, "batch_size": 32, "lr": 3e-3, "accelerator": "cpu", "precision": "bf16-mixed"}


class Console:
    """Everything a training call could show: stdout/stderr, Lightning's log records, warnings, Scanpy's log."""

    def __init__(self, capfd):
        self.capfd = capfd
        self.records: list[logging.LogRecord] = []
        self.scanpy = io.StringIO()

    def __enter__(self):
        self.capfd.readouterr()
        handler = logging.Handler(level=logging.DEBUG)
        handler.emit = self.records.append
        self.handler = handler
        for name in LIGHTNING_LOGGERS:
            logging.getLogger(name).addHandler(handler)
        self._warnings = warnings.catch_warnings(record=True)
        self.warnings = self._warnings.__enter__()
        warnings.simplefilter("always")
        self._logfile = sc.settings.logfile
        sc.settings.logfile = self.scanpy
        return self

    def __exit__(self, *exc):
        sc.settings.logfile = self._logfile
        self._warnings.__exit__(*exc)
        for name in LIGHTNING_LOGGERS:
            logging.getLogger(name).removeHandler(self.handler)
        out, err = self.capfd.readouterr()
        self.text = "\n".join(
            [out, err, *(r.getMessage() for r in self.records), *(str(w.message) for w in self.warnings)]
        )
        self.log = self.scanpy.getvalue()


@pytest.fixture
def verbosity():
    """Set ``sc.settings.verbosity`` for one test; restored afterwards."""
    before = sc.settings.verbosity
    yield lambda level: setattr(sc.settings, "verbosity", level)
    sc.settings.verbosity = before


def _model(counts, tiny_model):
    bf.pp.bin(counts)
    bf.BioFormer.setup_anndata(counts)
    scvi.settings.seed = 0
    return bf.BioFormer(counts, **tiny_model)


def test_training_prints_only_the_start_line_and_bar_by_default(counts, tiny_model, capfd, verbosity):
    verbosity("warning")  # Scanpy's default
    model = _model(counts, tiny_model)
    levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    filters = list(warnings.filters)
    with Console(capfd) as console:
        model.train(**TRAIN)
    noise = [message for message in LIGHTNING_NOISE if message in console.text]
    assert not noise, f"printed at default verbosity: {noise}\n{console.text}"
    assert not [r for r in console.records if r.levelno < logging.WARNING]
    start = "training BioFormer on 200 cells x 40 genes (20 held out for validation): 2 epochs of 6 steps of 32 cells"
    assert start in console.text
    assert "Epoch 2/2" in console.text and "cells/s=" in console.text
    # nothing changed outside the call
    assert {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS} == levels
    assert warnings.filters == filters


def test_lightning_messages_show_from_hint_verbosity(counts, tiny_model, capfd, verbosity):
    verbosity("hint")
    model = _model(counts, tiny_model)
    with Console(capfd) as console:
        model.train(**TRAIN, enable_progress_bar=False)
    for message in ("GPU available", "Loading `train_dataloader`", "smaller than the logging interval"):
        assert message in console.text


def test_info_verbosity_logs_the_start_line_without_lightning(counts, tiny_model, capfd, verbosity):
    verbosity("info")
    model = _model(counts, tiny_model)
    with Console(capfd) as console:
        model.train(**TRAIN, enable_progress_bar=False)
    assert "training BioFormer on 200 cells x 40 genes" in console.log
    assert "Loading `train_dataloader`" not in console.text
    assert "Epoch" not in console.text  # no bar


@pytest.mark.parametrize("tool", ["annotate", "train_perturbation", "CellDiffusion"])
def test_every_training_run_is_quiet(tool, pretrained, capfd, verbosity):
    verbosity("warning")
    model, adata = pretrained
    with Console(capfd) as console:
        if tool == "annotate":
            reference = adata.copy()
            bf.tl.annotate(reference, model, labels_key="cell_type", max_epochs=2, accelerator="cpu")
            start = "training cell-type classifier (3 classes) on"
        elif tool == "train_perturbation":
            screen = bf.datasets.synthetic_perturbation(n_obs=200, n_vars=30, seed=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scanpy's and pandas' warnings of the DE ranking
                bf.tl.train_perturbation(
                    screen, perturbation_key="perturbation", n_hidden=16, n_layers=1, n_heads=2, **TRAIN
                )
            start = "training BioFormer on"
        else:
            cells = bf.datasets.synthetic(n_obs=200, n_vars=50)
            bf.CellDiffusion.setup_anndata(cells)
            diffusion = bf.CellDiffusion(cells, n_tokens=4, token_dim=8, n_hidden=32, n_layers=1, n_encoder_hidden=64)
            diffusion.train(max_epochs=1, autoencoder_epochs=1, batch_size=50, accelerator="cpu")
            start = "training CellDiffusion (diffusion stage) on 200 cells x 50 genes: 1 epoch of 4 steps of 50 cells"
    noise = [message for message in LIGHTNING_NOISE if message in console.text]
    assert not noise, f"{tool} printed {noise}"
    assert start in console.text and "cells/s=" in console.text


def test_progress_bar_shows_epoch_losses_and_cells_per_second_not_v_num(counts, tiny_model, capfd):
    model = _model(counts, tiny_model)
    model.train(**TRAIN)
    bar = model.trainer.progress_bar_callback
    assert isinstance(bar, TrainingProgressBar)
    metrics = bar.get_metrics(model.trainer, model.trainer.lightning_module)
    assert "v_num" not in metrics
    assert list(metrics) == ["train_loss", "validation_loss", "cells/s"]
    assert float(metrics["validation_loss"]) == pytest.approx(model.loss_history()["validation_loss"][-1], rel=1e-3)
    out = capfd.readouterr().out
    final = out.replace("\r", "\n").strip().splitlines()[-1]
    # tqdm: steps of the whole run, time spent < time left, then the postfix
    assert final.startswith("Epoch 2/2: 100%") and "12/12 [" in final
    assert "train_loss=" in final and "validation_loss=" in final and "cells/s=" in final


def test_progress_bar_off_still_works(counts, tiny_model, capfd):
    model = _model(counts, tiny_model)
    model.train(**TRAIN, enable_progress_bar=False)
    assert model.trainer.progress_bar_callback is None
    assert "Epoch" not in capfd.readouterr().out


def test_pretrain_does_not_say_seed_set(counts, tiny_model, capfd, verbosity):
    verbosity("warning")
    with Console(capfd) as console:
        bf.tl.pretrain(counts, **tiny_model, **TRAIN, enable_progress_bar=False)
    assert "Seed set to" not in console.text
