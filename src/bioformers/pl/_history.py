"""Training and validation loss per epoch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from .._docs import DOC_RETURNS_AX, DOC_SHOW_AX, doc_params
from .._keys import Keys
from .._validation import did_you_mean
from ._utils import _finish

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@doc_params(show_ax=DOC_SHOW_AX, returns_ax=DOC_RETURNS_AX)
def history(
    model_or_adata: Any,
    *,
    key_added: str = "bioformers",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Plot the training (and validation) loss per epoch.

    Parameters
    ----------
    model_or_adata
        A trained `bf.BioFormer` (its `loss_history()`), or the AnnData that `bf.tl.pretrain`
        trained on (its `uns[key_added]['history']`).
    key_added
        Base key used by `bf.tl.pretrain` (default ``"bioformers"``); only for an AnnData.
    {show_ax}

    Returns
    -------
    {returns_ax}

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic()
    >>> adata.uns["bioformers"] = {  # stands in for bf.tl.pretrain(adata)
    ...     "history": {"train_loss": [2.1, 1.6, 1.4], "validation_loss": [2.0, 1.7, 1.6]}
    ... }
    >>> ax = bf.pl.history(adata, show=False)
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('epoch', 'loss')
    """
    losses = _loss_history(model_or_adata, key_added=key_added)
    train = np.asarray(losses.get("train_loss", []), dtype=float).ravel()
    validation = np.asarray(losses.get("validation_loss", []), dtype=float).ravel()
    if train.size == 0:
        raise ValueError("The loss history holds no training epoch; train the model for at least one epoch.")

    if ax is None:
        _, ax = plt.subplots()
    ax.plot(np.arange(1, train.size + 1), train, marker="o", label="train")
    if validation.size:
        ax.plot(np.arange(1, validation.size + 1), validation, marker="o", label="validation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    return _finish(ax, show=show, return_fig=return_fig)


def _loss_history(model_or_adata: Any, *, key_added: str) -> Mapping[str, Any]:
    """``{"train_loss": [...], "validation_loss": [...]}`` from a model or from an AnnData."""
    # Duck typing keeps the plotting module free of the model's (torch) imports.
    if hasattr(model_or_adata, "loss_history"):
        return model_or_adata.loss_history()
    uns = getattr(model_or_adata, "uns", None)
    if uns is None:
        raise TypeError(f"Expected a `bf.BioFormer` or an AnnData, got {type(model_or_adata).__name__}.")
    record = Keys(key_added).record
    if "history" not in uns.get(record, {}):
        raise KeyError(
            f"No loss history in `adata.uns[{record!r}]['history']`.{did_you_mean(record, uns.keys())} "
            "Train with `bf.tl.pretrain(adata)` first "
            "(or pass the trained model itself)."
        )
    return uns[record]["history"]
