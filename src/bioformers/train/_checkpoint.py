"""Training checkpoints that are safe to load and resume a run exactly.

Lightning's own ``.ckpt`` file is a torch pickle. ``torch.load(weights_only=True)`` restricts the
unpickler to tensors and plain containers, but it is still an unpickler (CVE-2025-32434 ran code
through it in torch < 2.6), and the random states an exact resume needs (numpy's) are not on its
allow-list. bioformers promises that opening a file never unpickles, so a checkpoint is stored
like a saved model: every tensor in one safetensors file, everything else in JSON. The format is
a Lightning ``CheckpointIO`` plugin (:class:`SafeCheckpointIO`), so Lightning still collects and
restores its own state (weights, optimizer and scheduler state, loop counters) through
``trainer.save_checkpoint`` and ``fit(ckpt_path=...)``; :class:`ResumeState` adds what Lightning
leaves out: the random states and the loss history.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import CheckpointIO
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .._record import package_version

if TYPE_CHECKING:
    import lightning.pytorch as pl

#: Names inside one checkpoint directory.
CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_TENSORS = "checkpoint.safetensors"
#: ``format`` field of every ``checkpoint.json``.
CHECKPOINT_FORMAT = "bioformers-training-checkpoint"
#: Key of bioformers' own entries in a Lightning checkpoint dictionary.
STATE_KEY = "bioformers"

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_CHECKPOINT_DIR = re.compile(r"(epoch|step)_(\d+)")


def checkpoint_path(dirpath: str, epoch: int) -> str:
    """The directory of the checkpoint written after ``epoch`` finished epochs."""
    return os.path.join(dirpath, f"epoch_{epoch:04d}")


def step_checkpoint_path(dirpath: str, step: int) -> str:
    """The directory of the checkpoint written after ``step`` optimiser steps, in the middle of an epoch."""
    return os.path.join(dirpath, f"step_{step:09d}")


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-ready copy of ``obj`` with every tensor moved into ``tensors`` (named by where it was)."""
    if isinstance(obj, torch.Tensor):
        name = path if path not in tensors else f"{path}#{len(tensors)}"
        # a copy: safetensors refuses tensors that share memory (tied weights, views)
        tensors[name] = obj.detach().cpu().clone().contiguous()
        return {_TENSOR: name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        # non-string keys (optimizer state is keyed by parameter index) keep their type
        return {
            _ITEMS: [
                [_encode(k, f"{path}/key{i}", tensors), _encode(v, f"{path}/{i}", tensors)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(
        f"Cannot store a {type(obj).__name__} at {path or '/'} of a training checkpoint: checkpoints hold only "
        "tensors (safetensors) and JSON values, so that loading them never unpickles. Keep such objects out of "
        "callback and data-module state."
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if obj.keys() == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if obj.keys() == {_TUPLE}:
            return tuple(_decode(v, tensors) for v in obj[_TUPLE])
        if obj.keys() == {_ITEMS}:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj[_ITEMS]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def find_checkpoint(path: str | os.PathLike) -> str:
    """The checkpoint directory ``path`` names: itself, or the latest ``epoch_NNNN`` inside it.

    Raises
    ------
    FileNotFoundError
        Nothing there, or no bioformers checkpoint in the directory.
    ValueError
        ``path`` is a file (e.g. a Lightning ``.ckpt`` pickle), which is never opened.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, CHECKPOINT_JSON)):
        return path
    if os.path.isdir(path):
        found = [
            name
            for name in os.listdir(path)
            if _CHECKPOINT_DIR.fullmatch(name) and os.path.isfile(os.path.join(path, name, CHECKPOINT_JSON))
        ]
        if found:
            # the most optimiser steps; of an epoch's end and a step checkpoint at the same step, the epoch's
            latest = max(found, key=lambda name: (_global_step(os.path.join(path, name)), name.startswith("epoch")))
            return os.path.join(path, latest)
        raise FileNotFoundError(
            f"{path!r} holds no bioformers checkpoint: neither {CHECKPOINT_JSON} nor epoch_NNNN/ or step_NNNNNNNNN/ "
            "directories written by `train(save_checkpoints=...)`."
        )
    if os.path.isfile(path):
        raise ValueError(
            f"{path!r} is a file, not a bioformers checkpoint directory. Lightning's and scvi-tools' checkpoint "
            "files are pickles, which bioformers never opens because unpickling can run code. Resume from a "
            "directory written by `train(save_checkpoints=...)`."
        )
    raise FileNotFoundError(f"No checkpoint at {path!r}. Pass a directory written by `train(save_checkpoints=...)`.")


def _global_step(path: str) -> int:
    """Optimiser steps taken when the checkpoint at ``path`` was written."""
    return int(_read_json(path)["checkpoint"].get("global_step", 0))


def _read_json(path: str) -> dict[str, Any]:
    with open(os.path.join(path, CHECKPOINT_JSON)) as f:
        tree = json.load(f)
    if not isinstance(tree, dict) or tree.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{os.path.join(path, CHECKPOINT_JSON)!r} is not a bioformers training checkpoint.")
    return tree


def read_checkpoint(path: str) -> dict[str, Any]:
    """The Lightning checkpoint dictionary stored in the checkpoint directory ``path`` (tensors on the CPU)."""
    tree = _read_json(path)
    tensors = load_file(os.path.join(path, CHECKPOINT_TENSORS), device="cpu")
    return _decode(tree["checkpoint"], tensors)


def checkpoint_summary(path: str) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """Shapes of the saved weights (by parameter name) and bioformers' run record, without loading tensors."""
    tree = _read_json(path)
    checkpoint = tree["checkpoint"]
    with safe_open(os.path.join(path, CHECKPOINT_TENSORS), framework="pt") as f:
        shapes = {
            name: tuple(f.get_slice(ref[_TENSOR]).get_shape()) for name, ref in checkpoint.get("state_dict", {}).items()
        }
    return shapes, checkpoint.get(STATE_KEY, {}).get("run", {})


def check_checkpoint_fits(path: str, module: torch.nn.Module) -> dict[str, Any]:
    """Raise a ``ValueError`` unless the checkpoint's weights fit ``module``; return the checkpoint's run record."""
    saved, run = checkpoint_summary(path)
    expected = {f"module.{name}": tuple(t.shape) for name, t in module.state_dict().items()}
    problems = [f"missing {name}" for name in expected.keys() - saved.keys()]
    problems += [f"unexpected {name}" for name in saved.keys() - expected.keys()]
    problems += [
        f"{name}: {saved[name]} in the checkpoint, {expected[name]} in the model"
        for name in expected.keys() & saved.keys()
        if saved[name] != expected[name]
    ]
    if problems:
        shown = "; ".join(sorted(problems)[:5]) + ("; ..." if len(problems) > 5 else "")
        raise ValueError(
            f"The checkpoint at {path!r} was written by a different model ({shown}). Resume with a model built "
            "with the same arguments and genes as the one that wrote it."
        )
    return run


class SafeCheckpointIO(CheckpointIO):
    """Lightning checkpoints as ``checkpoint.json`` + ``checkpoint.safetensors`` in one directory per checkpoint.

    Each checkpoint is written into ``<path>.partial`` and then renamed, so an interruption while
    writing never leaves a half-written checkpoint under the final name. Loading reads only JSON and
    safetensors; ``weights_only`` is accepted for Lightning's interface and has nothing to restrict.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` into the directory ``path`` (replacing one that exists)."""
        tensors: dict[str, torch.Tensor] = {}
        tree = {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "bioformers_version": package_version(),
            "checkpoint": _encode(checkpoint, "", tensors),
        }
        path = os.fspath(path)
        partial = f"{path}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        save_file(tensors, os.path.join(partial, CHECKPOINT_TENSORS))
        with open(os.path.join(partial, CHECKPOINT_JSON), "w") as f:
            json.dump(tree, f)
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(partial, path)

    def load_checkpoint(self, path: str, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        """Read the checkpoint directory ``path`` (or the latest checkpoint inside it)."""
        return read_checkpoint(find_checkpoint(path))

    def remove_checkpoint(self, path: str) -> None:
        """Delete the checkpoint directory ``path``."""
        shutil.rmtree(os.fspath(path), ignore_errors=True)


def random_states() -> dict[str, Any]:
    """The global random states of torch (CPU and CUDA), numpy and Python, as tensors and JSON values."""
    _, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else [],
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def set_random_states(state: dict[str, Any]) -> None:
    """Restore what :func:`random_states` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    key = numpy["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _history(trainer: pl.Trainer, *, epoch_end: bool = True) -> dict[str, dict[str, Any]]:
    """The loss history so far, this epoch's training metrics included, as ``{name: {index, rows}}``.

    Checkpoints at the end of an epoch are written before Lightning hands that epoch's training
    metrics to the logger; ``trainer.logged_metrics`` already holds them (reading it computes them,
    on every process, as Lightning will). In the middle of an epoch (``epoch_end=False``) it holds
    the last epoch's, already in the history.
    """
    pending = trainer.logged_metrics if epoch_end else {}
    frames = getattr(trainer.logger, "history", None)
    if not isinstance(frames, dict):
        return {}
    history = {
        name: {"index": frame.index.name, "rows": [[int(i), float(v)] for i, v in frame[name].items()]}
        for name, frame in frames.items()
    }
    epoch = trainer.current_epoch
    for name, value in pending.items():
        if name in ("epoch", "step"):
            continue
        entry = history.setdefault(name, {"index": "epoch", "rows": []})
        if entry["index"] == "epoch" and all(i != epoch for i, _ in entry["rows"]):
            entry["rows"].append([epoch, float(value)])
    return history


class ResumeState(Callback):
    """Carries what Lightning's checkpoint lacks for an exact resume.

    Saved with every checkpoint: the random states of torch, numpy and Python (they draw the order
    of the cells, the masked positions, the sampled genes and dropout) at the end of the epoch, the
    loss history so far, and ``run``, the settings of the run that wrote it (compared on resume).
    On resume the random states are restored and the history is replayed into the new run's logger
    as the checkpoint is loaded.

    Parameters
    ----------
    run
        JSON-ready settings of this run.
    """

    def __init__(self, run: dict[str, Any]):
        self.run = run
        self.restored = False
        #: Set while a checkpoint is written in the middle of an epoch (by :class:`EpochCheckpoint`).
        self.mid_epoch = False

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Add the random states, history and run record to ``checkpoint``."""
        history = _history(trainer, epoch_end=not self.mid_epoch)
        checkpoint[STATE_KEY] = {"run": self.run, "random": random_states(), "history": history}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Restore the random states and replay the history into scvi-tools' logger.

        Lightning restores callbacks before it builds the optimiser and, with it, the first epoch's
        iterator over the cells (``estimated_stepping_batches``): the iterator draws its order from
        the restored state, as the uninterrupted run drew it at the start of the next epoch. The
        history is replayed here, not when training starts, because a run resumed from its last
        checkpoint never starts training. Global rank 0 keeps the history.
        """
        state = checkpoint[STATE_KEY]
        set_random_states(state["random"])
        if trainer.is_global_zero and isinstance(getattr(trainer.logger, "history", None), dict):
            for name, entry in state["history"].items():
                for index, value in entry["rows"]:
                    trainer.logger.log_metrics({name: value, entry["index"]: index}, step=None)
        self.restored = True


class EpochCheckpoint(Callback):
    """Write a checkpoint every ``every`` epochs, and after the last one, into ``dirpath/epoch_NNNN/``.

    With ``every_steps``, also every ``every_steps`` optimiser steps into ``dirpath/step_NNNNNNNNN/``:
    in the middle of an epoch, for long epochs (a resumed run continues from there when its data
    loader can skip what it already gave, as bioformers' loader of data read from disk does).

    Parameters
    ----------
    dirpath
        Directory of the checkpoints (created if missing).
    every
        Epochs between checkpoints.
    every_steps
        Optimiser steps between checkpoints; `None`: only at the ends of epochs.
    state
        The run's :class:`ResumeState`, told when a checkpoint is written mid-epoch.
    """

    def __init__(self, dirpath: str, every: int, every_steps: int | None = None, state: ResumeState | None = None):
        self.dirpath = dirpath
        self.every = every
        self.every_steps = every_steps
        self.state = state

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save when this epoch closes a period of ``every`` epochs, or is the last epoch."""
        finished = trainer.current_epoch + 1
        if finished % self.every == 0 or finished >= (trainer.max_epochs or 0):
            # every process takes part (Lightning gathers state and synchronises); global rank 0 writes
            trainer.save_checkpoint(checkpoint_path(self.dirpath, finished))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Save after every ``every_steps`` optimiser steps."""
        if not self.every_steps or trainer.global_step == 0 or trainer.global_step % self.every_steps:
            return
        if self.state is not None:
            self.state.mid_epoch = True
        try:
            trainer.save_checkpoint(step_checkpoint_path(self.dirpath, trainer.global_step))
        finally:
            if self.state is not None:
                self.state.mid_epoch = False
