"""``bf.tl.pretrain`` and ``bf.tl.embed``: train in place, write embeddings into the AnnData."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import scvi
from scanpy import logging as logg

from .._keys import DEFAULT_KEY, Keys
from .._record import params_record
from .._validation import check_counts, check_obs_key, check_unique_var_names, get_matrix
from ..model import BioFormer
from ..module import check_module_arguments
from ..pp import bin as bin_values

if TYPE_CHECKING:
    from collections.abc import Callable

    from anndata import AnnData

_BINNING_ARGS = ("method", "n_bins", "cutoff", "bins_per_octave", "normalize")


def pretrain(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    binning: Literal["value", "segment"] = "value",
    n_bins: int | None = None,
    n_layers: int = 4,
    n_heads: int = 4,
    n_hidden: int = 64,
    max_seq_len: int = 256,
    value_encoder: Literal["linear", "embedding"] = "embedding",
    max_epochs: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    mask_ratio: float = 0.1,
    nonzero_ratio: float = 0.5,
    seed: int = 0,
    key_added: str = DEFAULT_KEY,
    **train_kwargs,
) -> BioFormer:
    """Train a BioFormer on ``adata`` and write its cell embedding into it.

    Bins the counts if ``layers["<key_added>_binned"]`` is missing, registers the AnnData, trains,
    and embeds every cell.

    Parameters
    ----------
    adata
        Raw counts, cells x genes (select genes first, e.g. 2,000 highly variable ones).
    layer
        Layer with the raw counts; ``None`` uses ``adata.X``.
    batch_key
        Column of ``adata.obs`` with batches (registered for later use).
    labels_key
        Column of ``adata.obs`` with cell labels (registered for later use).
    binning
        Binning method of :func:`bioformers.pp.bin`.
    n_bins
        Passed to :func:`bioformers.pp.bin`.
    n_layers, n_heads, n_hidden, max_seq_len, value_encoder
        Size and value embedding of the transformer (see :class:`bioformers.BioFormer`).
    max_epochs
        Passes over the data; ``None`` picks 5 to 30 by data size.
    batch_size
        Cells per minibatch.
    lr
        Peak learning rate.
    mask_ratio, nonzero_ratio
        Masked gene modelling: fraction of positions masked, and fraction of those that are expressed.
    seed
        Seed of every random number generator (training is repeatable on the same machine).
    key_added
        Base key of everything written.
    **train_kwargs
        Passed to :meth:`bioformers.BioFormer.train` (e.g. ``accelerator``, ``devices``, ``precision``).

    Returns
    -------
    The trained model. Writes

    * ``adata.obsm['X_<key_added>']`` : ndarray (n_obs, n_hidden), the CLS cell embedding;
    * ``adata.layers['<key_added>_binned']`` and ``adata.uns['<key_added>_binned']`` if it binned;
    * ``adata.uns['<key_added>']`` : dict with ``params`` and ``history`` (loss per epoch).

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> adata.obsm["X_bioformers"].shape
    (200, 16)
    """
    keys = Keys(key_added)
    check_unique_var_names(adata)
    check_obs_key(adata, batch_key, argument="batch_key")
    check_obs_key(adata, labels_key, argument="labels_key")
    must_bin = keys.binned not in adata.layers
    if must_bin:
        if binning not in ("value", "segment"):
            raise ValueError(f"`binning` must be 'value' or 'segment', not {binning!r}.")
        check_counts(
            get_matrix(adata, layer),
            where=f"adata.layers[{layer!r}]" if layer else "adata.X",
            require_integer=binning == "value",
        )
    architecture = {
        "n_hidden": n_hidden,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "max_seq_len": max_seq_len,
        "value_encoder": value_encoder,
        "mask_ratio": mask_ratio,
        "nonzero_ratio": nonzero_ratio,
    }
    check_module_arguments(**architecture)
    if adata.n_obs < batch_size:
        raise ValueError(
            f"The AnnData has {adata.n_obs} cells, fewer than one batch (batch_size={batch_size}). "
            f"Pass `batch_size={max(adata.n_obs // 2, 1)}` or smaller."
        )

    scvi.settings.seed = seed
    if must_bin:
        bin_values(adata, method=binning, n_bins=n_bins, layer=layer, key_added=key_added)
    BioFormer.setup_anndata(adata, layer=keys.binned, batch_key=batch_key, labels_key=labels_key)
    model = BioFormer(adata, **architecture)
    model.train(max_epochs=max_epochs, batch_size=batch_size, lr=lr, **train_kwargs)
    adata.obsm[keys.embedding] = model.get_latent_representation()
    adata.uns[keys.record] = {
        "params": params_record(
            layer=layer,
            batch_key=batch_key,
            labels_key=labels_key,
            binning=binning,
            n_bins=n_bins,
            **architecture,
            max_epochs=len(model.loss_history()["train_loss"]),
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            model=type(model).__name__,
        ),
        "history": model.loss_history(),
    }
    logg.info(f"added\n    'obsm[{keys.embedding!r}]', cell embeddings\n    'uns[{keys.record!r}]', training record")
    return model


def query_binning(adata: AnnData, model: BioFormer, layer: str | None) -> Callable[[AnnData], None]:
    """Check ``adata`` against ``model`` and return the step that bins it like the training data.

    Everything is checked here, before the caller writes anything; the returned function bins
    into the layer the model reads (``"bioformers_binned"`` by default) when that layer is missing,
    and does nothing otherwise.
    """
    model.check_genes(adata)
    # the model reads the layer it was set up with, whatever the caller's key_added
    binned_layer = model.registry_["setup_args"]["layer"]
    if binned_layer in adata.layers:
        return lambda adata: None
    binning = {k: model.binning_[k] for k in _BINNING_ARGS if k in model.binning_}
    if not binned_layer.endswith("_binned"):
        raise KeyError(
            f"The model reads binned values from `layers[{binned_layer!r}]`, which this AnnData lacks. "
            f"Bin it the way the training data was binned ({binning}) into that layer first."
        )
    normalize = binning.get("normalize", True) and binning.get("method", "value") == "value"
    check_counts(
        get_matrix(adata, layer),
        where=f"adata.layers[{layer!r}]" if layer else "adata.X",
        require_integer=bool(normalize),
    )
    return lambda adata: bin_values(adata, layer=layer, key_added=binned_layer.removesuffix("_binned"), **binning)


def embed(
    adata: AnnData,
    model: BioFormer,
    *,
    layer: str | None = None,
    batch_size: int | None = None,
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Write the model's cell embedding for ``adata`` (e.g. a query dataset with the model's genes).

    Bins the counts with the model's binning settings when ``layers["<key_added>_binned"]`` is
    missing (into the layer the model was trained on, ``"bioformers_binned"`` by default).

    Parameters
    ----------
    adata
        Cells with exactly the model's genes, in the model's order.
    model
        A trained :class:`bioformers.BioFormer`.
    layer
        Layer with raw counts, used when binning is needed; ``None`` uses ``adata.X``.
    batch_size
        Cells per forward pass.
    key_added
        Base key of everything written.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``adata`` copy if ``copy=True``, else ``None``. Writes ``adata.obsm['X_<key_added>']`` : ndarray
    (n_obs, n_hidden), and the binned layer if it binned.

    Examples
    --------
    >>> import bioformers as bf
    >>> ref, query = bf.datasets.synthetic(n_obs=200, n_vars=50), bf.datasets.synthetic(n_obs=60, n_vars=50, seed=1)
    >>> model = bf.tl.pretrain(ref, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> bf.tl.embed(query, model)
    >>> query.obsm["X_bioformers"].shape
    (60, 16)
    """
    keys = Keys(key_added)
    bin_if_needed = query_binning(adata, model, layer)
    adata = adata.copy() if copy else adata
    bin_if_needed(adata)
    adata.obsm[keys.embedding] = model.get_latent_representation(adata, batch_size=batch_size)
    logg.info(f"added\n    'obsm[{keys.embedding!r}]', cell embeddings")
    return adata if copy else None
