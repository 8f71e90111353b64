"""``bf.tl.generate``: sample new cells from a decoder-only BioFormer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse

from .._keys import DEFAULT_KEY, Keys
from .._record import params_record
from ..pp._binning import bin_centers

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..model import BioFormer


def generate(
    model: BioFormer,
    n_cells: int,
    *,
    condition: str | Sequence[str] | None = None,
    batch: str | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    key_added: str = DEFAULT_KEY,
) -> ad.AnnData:
    """Generate cells with a decoder-only BioFormer.

    Each cell is drawn token by token: the next gene among those not yet drawn (or the end of the
    cell), then its bin, no larger than the previous one (:meth:`bioformers.BioFormer.generate`).
    Cells have at most ``max_seq_len`` minus the start and condition tokens expressed genes: a
    decoder trained on cells with more genes learned only their highest ones.

    Parameters
    ----------
    model
        A trained :class:`bioformers.BioFormer` with ``architecture="decoder"``
        (``bf.tl.pretrain(adata, architecture="decoder", labels_key="cell_type")``).
    n_cells
        Cells to generate per condition (in total when ``condition`` is ``None``).
    condition
        A label of the ``labels_key`` the decoder was trained with (e.g. a cell type), or a list of
        labels (``n_cells`` each); ``None`` generates unconditionally (the decoder learned that by
        seeing labels dropped at random).
    batch
        A batch of the ``batch_key`` the decoder was trained with (e.g. a technology) for every cell;
        ``None``: unknown.
    temperature
        Softmax temperature of every draw; below 1 sharpens towards the most likely genes and bins.
    seed
        Seed of the draws: the same seed gives the same cells on one machine.
    batch_size
        Cells generated at once.
    key_added
        Base key of what is written into the returned AnnData.

    Returns
    -------
    A new AnnData of the generated cells over the model's genes (``var_names``), ready for Scanpy:

    * ``X`` : CSR ``float32``, for value binning with normalisation the value each bin stands for
      (:func:`bioformers.pp._binning.bin_centers`: counts scaled to the training data's total), otherwise
      the bins themselves;
    * ``layers['<key_added>_binned']`` : CSR ``int16``, the generated bins, the model's input format
      (so :func:`bioformers.tl.embed` embeds the cells as they are);
    * ``uns['<key_added>_binned']`` : the training data's binning record;
    * ``obs[<labels_key>]`` / ``obs[<batch_key>]`` : each cell's condition (categorical), under the names
      of the training columns; absent when generated without that condition;
    * ``uns['<key_added>_generated']['params']`` : the arguments.

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> model = bf.tl.pretrain(
    ...     adata, architecture="decoder", labels_key="cell_type", n_layers=1, n_hidden=16, max_epochs=1, batch_size=32
    ... )
    >>> cells = bf.tl.generate(model, 5, condition=["type_0", "type_1"])
    >>> cells.shape, cells.obs["cell_type"].value_counts().tolist()
    ((10, 50), [5, 5])
    """
    keys = Keys(key_added)
    model.require_decoder("`bf.tl.generate`")
    if isinstance(n_cells, bool) or not isinstance(n_cells, int | np.integer) or n_cells < 1:
        raise ValueError(f"`n_cells` must be a positive integer, not {n_cells!r}.")
    conditions = [condition] if condition is None or isinstance(condition, str) else list(condition)
    if not conditions:
        raise ValueError("`condition` is an empty list. Pass labels to generate, or `None` for unconditional cells.")
    labels = [c for c in conditions for _ in range(n_cells)]
    batches = [batch] * len(labels)
    # checks the values (naming the known ones) before any work
    model.condition_codes("labels", labels)
    model.condition_codes("batch", batches)
    start = logg.info(f"generating {len(labels)} cells")
    bins = model.generate(
        len(labels),
        labels=labels,
        batch=batches,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
    )
    generated = ad.AnnData(
        X=_expression(bins, model),
        var=pd.DataFrame(index=pd.Index(model.genes_, name=None)),
        obs=_conditions(model, labels, batches),
    )
    binned_layer = model.registry_["setup_args"]["layer"]
    generated.layers[binned_layer] = bins
    generated.uns[binned_layer] = {"params": dict(model.binning_), "n_tokens": int(model.module.n_bins)}
    generated.uns[keys.generated] = {
        "params": params_record(
            n_cells=int(n_cells),
            condition=None if condition is None else np.asarray(conditions, dtype=str),
            batch=batch,
            temperature=float(temperature),
            seed=int(seed),
        )
    }
    logg.info("    finished", time=start)
    return generated


def _expression(bins: sparse.csr_matrix, model: BioFormer) -> sparse.csr_matrix:
    """The value each bin stands for (value binning with normalisation), else the bins, as ``float32``."""
    centers = bin_centers(model.binning_, model.module.n_bins) if model.binning_.get("normalize", True) else None
    values = centers[bins.data] if centers is not None else bins.data.astype(np.float32)
    return sparse.csr_matrix((values.astype(np.float32), bins.indices, bins.indptr), shape=bins.shape)


def _conditions(model: BioFormer, labels: list, batches: list) -> pd.DataFrame:
    """``obs`` of the generated cells: the condition columns under the training data's names."""
    obs = pd.DataFrame(index=pd.Index([f"generated_{i}" for i in range(len(labels))]))
    args = model.registry_["setup_args"]
    for kind, values in (("labels", labels), ("batch", batches)):
        key = args.get(f"{kind}_key")
        # an unconditional draw gets no column: a column of missing values would not register
        if key is not None and any(v is not None for v in values):
            obs[key] = pd.Categorical(values, categories=model.condition_categories(kind))
    return obs
