"""Private AnnData objects that share the caller's matrices, so tools write into the caller's AnnData only at the end.

scvi-tools registers an AnnData by writing into it (``uns['_scvi_uuid']``, ``obs['_scvi_batch']``, ...),
and binning adds a layer. Tools do all of that on a private AnnData over the same cells and genes,
whose matrices are the caller's own objects (no copy), and write their results into the caller's
AnnData only once everything is computed: an error or a Ctrl-C part-way leaves it as it was.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING

import anndata as ad

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from scvi.model.base import BaseModelClass

_SCVI_UUID_KEY = "_scvi_uuid"


def binned_from(adata: ad.AnnData, binned: str) -> str | None:
    """The layer that ``layers[binned]`` was binned from, as its binning record in ``uns`` says; ``None``: ``X``."""
    return adata.uns.get(binned, {}).get("params", {}).get("layer")


def private_anndata(
    adata: ad.AnnData, *, obs: Iterable[str] = (), layers: Iterable[str] = (), uns: Iterable[str] = ()
) -> ad.AnnData:
    """A new AnnData over ``adata``'s cells: ``X`` and named layers by reference, copies of ``var`` and named columns.

    Keys missing from ``adata`` are left out. Writing keys into the result never changes ``adata``;
    changing the shared matrices in place would, and no tool does.
    """
    return ad.AnnData(
        X=adata.X,
        obs=adata.obs[[key for key in dict.fromkeys(obs) if key in adata.obs]].copy(),
        var=adata.var.copy(),  # the genes' annotations (e.g. Ensembl IDs) a model keeps
        layers={key: adata.layers[key] for key in layers if key in adata.layers},
        uns={key: adata.uns[key] for key in uns if key in adata.uns},
    )


def registered_columns(model: BaseModelClass) -> list[str]:
    """The ``obs`` columns a model was set up with (batch, labels, perturbation), which scvi-tools reads."""
    args = model.registry_["setup_args"]
    return [args[name] for name in ("batch_key", "labels_key", "perturbation_key") if args.get(name) is not None]


def forget(model: BaseModelClass, adata: ad.AnnData) -> None:
    """Drop the model's registration of a private AnnData, so the model does not keep it alive."""
    uuid = adata.uns.get(_SCVI_UUID_KEY)
    model._per_instance_manager_store.get(model.id, {}).pop(uuid, None)


def mirror(adata: ad.AnnData) -> ad.AnnData:
    """A private AnnData with all of ``adata``'s columns, layers and ``uns`` entries, for scvi-tools to register.

    What ``model.load(path, adata)`` and a model method given an AnnData register instead of the caller's:
    scvi-tools' bookkeeping (``obs['_scvi_batch']``, ``uns['_scvi_uuid']``, ...) lands in the mirror.
    """
    return private_anndata(adata, obs=adata.obs.columns, layers=adata.layers.keys(), uns=adata.uns.keys())


def validated(model: BaseModelClass, adata: ad.AnnData | None) -> ad.AnnData:
    """``model._validate_anndata(adata)`` without scvi-tools' INFO line on a private AnnData.

    Our tools hand the model private AnnData objects (sharing the user's matrices) so that scvi-tools'
    bookkeeping never reaches the user's; scvi-tools registers each with "Input AnnData not setup with
    scvi-tools. attempting to transfer AnnData setup", which is expected here and only noise to a user.
    """
    if model.adata is None:
        if adata is None:
            raise ValueError(without_data_message(model, "has no cells of its own to read: pass an AnnData"))
        if model.get_anndata_manager(adata) is None:
            # a model built from its registry alone: register the query from the registry without scvi-tools
            # adopting it as the model's own data (which `_validate_anndata` would do)
            registry = model.registry_
            type(model).setup_anndata(adata, source_registry=registry, **registry["setup_args"])
            model._register_manager_for_instance(model._get_most_recent_anndata_manager(adata, required=True))
    scvi_model_logger = logging.getLogger("scvi.model.base._base_model")
    level = scvi_model_logger.level
    scvi_model_logger.setLevel(max(level, logging.WARNING))
    try:
        return model._validate_anndata(adata)
    finally:
        scvi_model_logger.setLevel(level)


def without_data_message(model: BaseModelClass, what: str) -> str:
    """The error of a model loaded without its training data (``load(dir)``) asked to read that data."""
    return (
        f"This {type(model).__name__} was loaded without its training data, so it {what}. Apply it to cells with "
        "the tools (`bf.tl.embed(adata, model)`, `bf.tl.predict(adata, model)`), pass `adata=` to its methods, or "
        "load it with `BioFormer.load(dir_path, adata=training_data)`."
    )


@contextmanager
def registered(model: BaseModelClass, adata: ad.AnnData | None) -> Iterator[ad.AnnData]:
    """``adata`` registered with ``model`` for its data loaders, never by writing into ``adata`` itself.

    ``None`` or the model's own AnnData is used as it is (it is registered already); any other is
    mirrored (:func:`mirror`), registered, and forgotten on exit.
    """
    if adata is None or adata is model.adata:
        yield validated(model, adata)
        return
    work = mirror(adata)
    if getattr(model, "has_counts", False):
        _stand_in_counts(model, work)
    try:
        yield validated(model, work)
    finally:
        forget(model, work)


def _stand_in_counts(model: BaseModelClass, work: ad.AnnData) -> None:
    """Give a query without raw counts its bins in their place, so scvi-tools can register it.

    scvi-tools registers every field of the model's registry, the raw counts of the count objective
    among them, but reading cells for inference uses only the bins: a query that has no counts
    matrix (an AnnData holding only the binned layer) gets the binned layer in its place.
    """
    binned = model.registry_["setup_args"]["layer"]
    if binned not in work.layers:
        return
    source = binned_from(work, binned)
    if source is None and work.X is None:
        work.X = work.layers[binned]
    elif source is not None and source not in work.layers:
        work.layers[source] = work.layers[binned]
