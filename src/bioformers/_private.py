"""Private AnnData objects that share the caller's matrices, so tools write into the caller's AnnData only at the end.

scvi-tools registers an AnnData by writing into it (``uns['_scvi_uuid']``, ``obs['_scvi_batch']``, ...),
and binning adds a layer. Tools do all of that on a private AnnData over the same cells and genes,
whose matrices are the caller's own objects (no copy), and write their results into the caller's
AnnData only once everything is computed: an error or a Ctrl-C part-way leaves it as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Iterable

    from scvi.model.base import BaseModelClass

_SCVI_UUID_KEY = "_scvi_uuid"


def private_anndata(
    adata: ad.AnnData, *, obs: Iterable[str] = (), layers: Iterable[str] = (), uns: Iterable[str] = ()
) -> ad.AnnData:
    """A new AnnData with ``adata``'s names, ``X`` and the named layers by reference, and copies of the named columns.

    Keys missing from ``adata`` are left out. Writing keys into the result never changes ``adata``;
    changing the shared matrices in place would, and no tool does.
    """
    return ad.AnnData(
        X=adata.X,
        obs=adata.obs[[key for key in dict.fromkeys(obs) if key in adata.obs]].copy(),
        var=pd.DataFrame(index=adata.var_names.copy()),
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
