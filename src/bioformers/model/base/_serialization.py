"""Safe model files: weights in safetensors, everything else in JSON. Nothing is ever unpickled.

A pickle (scvi-tools' ``model.pt``, any ``*.pkl``) can run arbitrary code when loaded, so a model
directory is read through two parsers that cannot: ``safetensors`` for the tensors and ``json`` for
the rest. Whatever else lies in the directory is never opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

WEIGHTS_FILE = "model.safetensors"
ATTRIBUTES_FILE = "model.json"
#: Keys every ``model.json`` written by :func:`write_model` holds.
REQUIRED_ATTRIBUTES = ("init_params", "registry", "genes", "binning", "history")
# files other libraries write with pickle (scvi-tools: model.pt); named in errors, never opened
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib")
_SHOWN = 10


def _encode(obj: Any) -> Any:
    """Turn numpy/tuple values of an scvi-tools registry into tagged JSON values."""
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str if obj.dtype.kind != "O" else "O"}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=object if obj["dtype"] == "O" else obj["dtype"])
        if "__tuple__" in obj:
            return tuple(_decode(v) for v in obj["__tuple__"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def write_model(dir_path: str, state_dict: Mapping[str, torch.Tensor], attributes: dict[str, Any]) -> None:
    """Write weights and attributes into ``dir_path`` (which must exist).

    Each file is written under a temporary name and then renamed, so an interrupted save never
    leaves a truncated file under the final name.
    """
    weights, attrs = os.path.join(dir_path, WEIGHTS_FILE), os.path.join(dir_path, ATTRIBUTES_FILE)
    partial = {weights: weights + ".partial", attrs: attrs + ".partial"}
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, partial[weights])
        attributes = attributes | {"checksums": {WEIGHTS_FILE: _sha256(partial[weights])}}
        with open(partial[attrs], "w") as f:
            json.dump(_encode(attributes), f, indent=1)
    except BaseException:
        for path in partial.values():
            if os.path.exists(path):
                os.remove(path)
        raise
    for final, temporary in partial.items():
        os.replace(temporary, final)


def read_model(dir_path: str, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`write_model` wrote, with a clear error for anything else.

    Raises
    ------
    FileNotFoundError
        ``dir_path`` is not a directory, or lacks the model files (it may hold pickles, which are
        named and not opened).
    ValueError
        A model file is truncated, corrupted or not what :func:`write_model` writes.
    """
    if not os.path.isdir(dir_path):
        raise FileNotFoundError(f"{str(dir_path)!r} is not a directory. Pass the directory `BioFormer.save` wrote.")
    weights, attributes = os.path.join(dir_path, WEIGHTS_FILE), os.path.join(dir_path, ATTRIBUTES_FILE)
    missing = [os.path.basename(path) for path in (weights, attributes) if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(_not_a_model_message(dir_path, missing))
    state_dict, attributes = _read_weights(weights, device), _read_attributes(attributes)
    _check_checksums(dir_path, attributes.get("checksums", {}))  # directories saved before checksums have none
    return state_dict, attributes


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_checksums(dir_path: str, checksums: Mapping[str, str]) -> None:
    """Raise unless each file listed in ``model.json`` has the SHA-256 recorded when it was saved."""
    for name, expected in checksums.items():
        if _sha256(os.path.join(dir_path, name)) != expected:
            raise ValueError(
                f"{os.path.join(dir_path, name)} is not the file that was saved with {ATTRIBUTES_FILE} (its SHA-256 "
                "checksum differs): it was changed, damaged in copying, or comes from another model. Copy the model "
                "directory again, or save the model again with `model.save(dir_path, overwrite=True)`."
            )


def _not_a_model_message(dir_path: str, missing: list[str]) -> str:
    message = (
        f"{str(dir_path)!r} is not a bioformers model directory: {' and '.join(missing)} not found (a directory "
        "written by `BioFormer.save` holds model.safetensors and model.json)."
    )
    pickles = sorted(name for name in os.listdir(dir_path) if name.lower().endswith(_PICKLE_SUFFIXES))
    if pickles:
        message += (
            f" It holds {pickles[:_SHOWN]}, pickle-based files (scvi-tools and torch write `model.pt` this way), "
            "which bioformers never unpickles: loading a pickle can run any code it contains. If it is an "
            "scvi-tools model from a source you trust, load it with scvi-tools; bioformers models are saved with "
            "`model.save(dir_path)`."
        )
    return message


def _read_weights(path: str, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device=device)
    except Exception as error:  # safetensors raises its own error type, torch others for bad dtypes
        raise ValueError(
            f"{path} is damaged (truncated or not a safetensors file): {error}. Copy the model directory again, or "
            "save the model again with `model.save(dir_path, overwrite=True)`."
        ) from None


def _read_attributes(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            attributes = _decode(json.loads(f.read().decode("utf-8")))
    except (UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"{path} is damaged (truncated or not the JSON `BioFormer.save` writes): {error}. Copy the model "
            "directory again, or save the model again with `model.save(dir_path, overwrite=True)`."
        ) from None
    absent = [key for key in REQUIRED_ATTRIBUTES if not isinstance(attributes, dict) or key not in attributes]
    if absent:
        raise ValueError(
            f"{path} lacks {absent}: it was not written by `BioFormer.save`, or it was changed. Copy the model "
            "directory again, or save the model again."
        )
    return attributes


def check_model_class(attributes: Mapping[str, Any], accepted: Sequence[str], dir_path: str) -> None:
    """Raise unless the model files were written by one of the ``accepted`` classes (no record: a BioFormer)."""
    found = attributes.get("model_class", "BioFormer")
    if found not in accepted:
        raise ValueError(
            f"{str(dir_path)!r} holds a {found}, not a {accepted[0]}. Load it with "
            f"`bf.{found}.load({str(dir_path)!r}, adata)`."
        )


#: Arguments of bioformers 0.1's single BioFormer class that only its encoder network used.
_ENCODER_ONLY_ARGS = ("mask_ratio", "nonzero_ratio", "expression_weight", "batch_adversarial_weight")


def upgrade_legacy(attributes: dict[str, Any]) -> dict[str, Any]:
    """``model.json`` attributes of bioformers 0.1 in today's terms; others unchanged.

    Up to 0.1 one ``BioFormer`` class held both networks, chosen by its ``architecture`` argument;
    now the encoder is ``BioFormer`` and the decoder ``BioFormerDecoder``, neither with that
    argument. Weights and registry are the same, so only the class name and arguments change.
    """
    init = attributes.get("init_params", {})
    args = init.get("non_kwargs", {})
    if attributes.get("model_class", "BioFormer") != "BioFormer" or "architecture" not in args:
        return attributes
    args = dict(args)
    architecture = args.pop("architecture")
    upgraded = dict(attributes) | {"init_params": dict(init) | {"non_kwargs": args}}
    if architecture == "decoder":
        for name in _ENCODER_ONLY_ARGS:
            args.pop(name, None)
        upgraded["model_class"] = "BioFormerDecoder"
    return upgraded


#: Buffers added to a network since models were first saved: older files lack them, and their zero value
#: reproduces the models those files hold (``mean_response``, of the perturbation network).
_ADDED_BUFFERS = ("mean_response",)


def upgrade_legacy_weights(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> dict:
    """``found`` with each of :data:`_ADDED_BUFFERS` that ``expected`` has and ``found`` lacks, as zeros."""
    added = {
        name: torch.zeros_like(expected[name]) for name in _ADDED_BUFFERS if name in expected and name not in found
    }
    return dict(found) | added


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], dir_path: str) -> None:
    """Raise unless ``found`` has exactly the parameters of ``expected``, each with the same shape.

    Names every missing and unexpected parameter and every shape mismatch (expected vs found), so
    nothing is loaded half-way and torch's own message is never the first one a user sees.
    """
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    shapes = [
        f"{name}: expected {tuple(expected[name].shape)}, found {tuple(found[name].shape)}"
        for name in expected
        if name in found and tuple(expected[name].shape) != tuple(found[name].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing parameters {missing}")
    if unexpected:
        problems.append(f"unexpected parameters {unexpected}")
    if shapes:
        problems.append("parameters of another shape: " + "; ".join(shapes))
    if problems:
        raise ValueError(
            f"The weights in {os.path.join(dir_path, WEIGHTS_FILE)} do not fit the model that {ATTRIBUTES_FILE} "
            f"describes: {'; '.join(problems)}. The files come from different models or versions, or were changed; "
            "save the model again with `model.save(dir_path, overwrite=True)`."
        )


def check_version(saved: str | None, current: str, dir_path: str) -> None:
    """Warn when a model file was written by another major or minor bioformers version (or by an unknown one)."""
    if saved is None:
        warnings.warn(
            f"The model at {str(dir_path)!r} does not record the bioformers version that saved it (it predates "
            f"version records); this is bioformers {current}. If results look different, retrain or re-save it with "
            "this version.",
            UserWarning,
            stacklevel=3,
        )
    elif _major_minor(saved) != _major_minor(current):
        warnings.warn(
            f"The model at {str(dir_path)!r} was saved by bioformers {saved}; this is bioformers {current}. The files "
            "load, but models and preprocessing may differ between versions: check the results, or use bioformers "
            f"{'.'.join(_major_minor(saved))}.",
            UserWarning,
            stacklevel=3,
        )


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])
