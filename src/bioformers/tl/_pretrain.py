"""``bf.tl.pretrain`` and ``bf.tl.embed``: train in place, write embeddings into the AnnData."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import scvi
from scanpy import logging as logg

from .._keys import DEFAULT_KEY, Keys
from .._record import params_record
from .._validation import check_backed_writable, check_counts, check_obs_key, check_unique_var_names, get_matrix
from ..model import BioFormer
from ..module import check_module_arguments
from ..pp import bin as bin_values
from ..pp._binning import BINNING_ARGS

if TYPE_CHECKING:
    from collections.abc import Callable

    from anndata import AnnData


def pretrain(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    binning: Literal["value", "segment"] = "value",
    n_bins: int | None = None,
    n_layers: int = 4,
    n_heads: int = 2,
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
        Passed to :meth:`bioformers.BioFormer.train` (e.g. ``accelerator``, ``devices``, ``precision``,
        ``strategy="ddp"``; see ``docs/scaling.md``).

    Returns
    -------
    The trained model. Writes

    * ``adata.obsm['X_<key_added>']`` : ndarray (n_obs, n_hidden), the CLS cell embedding;
    * ``adata.layers['<key_added>_binned']`` and ``adata.uns['<key_added>_binned']`` if it binned;
    * ``adata.uns['<key_added>']`` : dict with ``params`` and ``history`` (loss per epoch).

    In a distributed run (``strategy="ddp"``, ``devices=N``) every process trains on its share of
    the cells and returns the trained model, but only global rank 0 embeds and writes the embedding
    and record; elsewhere ``adata`` keeps only the binned layer (check ``model.is_global_zero``).

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
    if not model.is_global_zero:
        # distributed run (e.g. strategy="ddp"): every process reaches this line, rank 0 writes
        logg.info("not global rank 0 of a distributed run: trained, nothing written here (rank 0 writes)")
        return model
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


def query_binning(
    adata: AnnData, model: BioFormer, layer: str | None, *, copy: bool = False
) -> Callable[[AnnData], None]:
    """Check ``adata`` against ``model`` and return the step that bins it like the training data.

    Everything is checked here, before the caller writes anything; the returned function bins
    into the layer the model reads (``"bioformers_binned"`` by default) when that layer is missing,
    and does nothing otherwise. Value binning scales cells to the training data's ``target_sum``
    (to the query's own mean total for models trained before it was recorded). A backed AnnData is
    never binned whole: the model reads and bins it in chunks (its counts are checked chunk by chunk).
    """
    check_backed_writable(adata, copy=copy)
    model.check_genes(adata)
    # the model reads the layer it was set up with, whatever the caller's key_added
    binned_layer = model.registry_["setup_args"]["layer"]
    if binned_layer in adata.layers or adata.isbacked:
        return lambda adata: None
    binning = {k: model.binning_[k] for k in BINNING_ARGS if k in model.binning_}
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
    chunk_size: int | None = None,
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Write the model's cell embedding for ``adata`` (e.g. a query dataset with the model's genes).

    Bins the counts with the model's binning settings when ``layers["<key_added>_binned"]`` is
    missing (into the layer the model was trained on, ``"bioformers_binned"`` by default), on the
    training data's scale (value binning scales every cell to the training data's ``target_sum``).

    A backed AnnData (``anndata.read_h5ad(path, backed="r")``) is streamed instead: cells are read
    ``chunk_size`` at a time, binned and embedded, and only the embedding is added (in memory; the
    file is not changed until ``adata.write()``). Memory then stays flat in the number of cells,
    apart from the result. A cell's embedding is the same streamed or not.

    Parameters
    ----------
    adata
        Cells with exactly the model's genes, in the model's order; in memory or backed (not a view
        of a backed AnnData).
    model
        A trained :class:`bioformers.BioFormer`.
    layer
        Layer with raw counts, used when binning is needed; ``None`` uses ``adata.X`` (the only
        matrix a backed AnnData keeps on disk).
    batch_size
        Cells per forward pass.
    chunk_size
        Cells read and binned at a time from a backed AnnData; ``None``: 4,096.
    key_added
        Base key of everything written.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``adata`` copy if ``copy=True``, else ``None``. Writes ``adata.obsm['X_<key_added>']`` : ndarray
    (n_obs, n_hidden), and the binned layer if it binned (never for a backed AnnData).

    Examples
    --------
    >>> import bioformers as bf
    >>> ref, query = bf.datasets.synthetic(n_obs=200, n_vars=50), bf.datasets.synthetic(n_obs=60, n_vars=50, seed=1)
    >>> model = bf.tl.pretrain(ref, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> bf.tl.embed(query, model)
    >>> query.obsm["X_bioformers"].shape
    (60, 16)

    Streaming a file:

    >>> import anndata as ad, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "query.h5ad")
    >>> bf.datasets.synthetic(n_obs=60, n_vars=50, seed=1).write_h5ad(path)
    >>> backed = ad.read_h5ad(path, backed="r")
    >>> bf.tl.embed(backed, model, chunk_size=32)
    >>> bool((backed.obsm["X_bioformers"] == query.obsm["X_bioformers"]).all())
    True
    """
    keys = Keys(key_added)
    bin_if_needed = query_binning(adata, model, layer, copy=copy)
    adata = adata.copy() if copy else adata
    bin_if_needed(adata)
    adata.obsm[keys.embedding] = model.get_latent_representation(
        adata, batch_size=batch_size, counts_layer=layer, chunk_size=chunk_size
    )
    logg.info(f"added\n    'obsm[{keys.embedding!r}]', cell embeddings")
    return adata if copy else None
