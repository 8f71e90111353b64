"""Safe model files: weights in safetensors, everything else in JSON. Nothing is ever unpickled."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

WEIGHTS_FILE = "model.safetensors"
ATTRIBUTES_FILE = "model.json"


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


def write_model(dir_path: str, state_dict: dict[str, torch.Tensor], attributes: dict[str, Any]) -> None:
    """Write weights and attributes into ``dir_path`` (which must exist)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, os.path.join(dir_path, WEIGHTS_FILE))
    with open(os.path.join(dir_path, ATTRIBUTES_FILE), "w") as f:
        json.dump(_encode(attributes), f, indent=1)


def read_model(dir_path: str, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`write_model` wrote."""
    weights, attributes = os.path.join(dir_path, WEIGHTS_FILE), os.path.join(dir_path, ATTRIBUTES_FILE)
    for path in (weights, attributes):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: {dir_path!r} is not a directory written by `BioFormer.save`.")
    with open(attributes) as f:
        return load_file(weights, device=device), _decode(json.load(f))
