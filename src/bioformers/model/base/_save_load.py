"""Saving and loading, written once for every model: safetensors + JSON, only global rank 0 writes."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import anndata
import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_only

from ..._private import mirror, without_data_message
from ..._record import package_version
from ._serialization import (
    check_model_class,
    check_state_dict,
    check_version,
    read_model,
    upgrade_legacy,
    upgrade_legacy_weights,
    write_model,
)

if TYPE_CHECKING:
    from typing import Self

    from anndata import AnnData

logger = logging.getLogger(__name__)

#: The training AnnData that ``save(..., save_anndata=True)`` writes next to the model files.
SAVED_ANNDATA_FILE = "adata.h5ad"
# every model class by name, so that a directory opens as the class that wrote it
_MODEL_CLASSES: dict[str, type] = {}


class SaveLoadMixin:
    """``save`` / ``load`` for every bioformers model, and the history and rank they depend on.

    A model class adds what only it records through ``_saved_attributes`` and restores it in
    ``_restore``; ``_also_loads`` names other classes whose directories its ``load`` opens.
    """

    #: Names of other model classes whose directories ``load`` of this class opens (as that class).
    _also_loads: tuple[str, ...] = ()
    #: Whether the class can be built from its saved registry alone, so ``load`` needs no AnnData.
    _loads_without_data: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _MODEL_CLASSES[cls.__name__] = cls

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is global rank 0, the one that writes results (True unless distributed).

        After distributed training with Lightning's default launcher every process runs the rest of the
        script; write files only where this is True.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return bool(trainer.is_global_zero)
        return rank_zero_only.rank == 0

    def loss_history(self) -> dict[str, list[float]]:
        """Train and validation loss per epoch, as plain lists.

        Returns
        -------
        dict
            ``{"train_loss": [...], "validation_loss": [...]}``, one float per finished epoch; the
            validation list is empty without validation cells (``train_size=1``).
        """
        history = self.history_ or {}

        def column(name: str) -> list[float]:
            frame = history.get(name)
            return [] if frame is None else [float(v) for v in frame.iloc[:, 0].dropna()]

        return {"train_loss": column("train_loss"), "validation_loss": column("validation_loss")}

    def save(self, dir_path: str, *, overwrite: bool = False, save_anndata: bool = False) -> None:
        """Save weights (safetensors) and settings (JSON) into ``dir_path``.

        Nothing is pickled, so loading a model never executes code from the file. ``model.json``
        records the bioformers version, the model class and its arguments, the model's genes (in
        order), the binning, the scvi-tools registry and the loss history; :meth:`load` checks them.
        Each file is written under a temporary name and renamed when complete, so an interrupted save
        leaves no truncated model file.

        In a distributed run only global rank 0 writes; on other processes this does nothing
        (:attr:`is_global_zero`).

        Parameters
        ----------
        dir_path
            Directory to create.
        overwrite
            Replace an existing directory's model files.
        save_anndata
            Also write the training AnnData as ``adata.h5ad`` (then :meth:`load` needs no AnnData).

        Raises
        ------
        FileExistsError
            ``dir_path`` exists and ``overwrite`` is False.

        Examples
        --------
        >>> import os, tempfile
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
        >>> path = os.path.join(tempfile.mkdtemp(), "model")
        >>> model.save(path, save_anndata=True)
        >>> sorted(os.listdir(path))
        ['adata.h5ad', 'model.json', 'model.safetensors']
        """
        if not self.is_global_zero:
            logger.debug("Not global rank 0 of a distributed run: `save` writes nothing here.")
            return
        if save_anndata and self.adata is None:
            raise ValueError(without_data_message(self, "has no training data to save (`save_anndata=True`)"))
        if os.path.exists(dir_path) and not overwrite:
            raise FileExistsError(f"{dir_path!r} already exists. Pass `overwrite=True` or choose another directory.")
        os.makedirs(dir_path, exist_ok=True)
        history = {name: [float(v) for v in frame.iloc[:, 0].dropna()] for name, frame in (self.history_ or {}).items()}
        attributes = {
            "version": package_version(),
            "model_class": type(self).__name__,
            "init_params": self.init_params_,
            "registry": self.registry_,
            "genes": self.genes_,
            "binning": {},
            "history": history,
        } | self._saved_attributes()
        write_model(dir_path, self.module.state_dict(), attributes)
        if save_anndata:
            self.adata.write_h5ad(os.path.join(dir_path, SAVED_ANNDATA_FILE))

    def _saved_attributes(self) -> dict[str, Any]:
        """What this model class records in ``model.json`` beyond what every model does."""
        return {}

    @classmethod
    def load(cls, dir_path: str, adata: AnnData | None = None, *, accelerator: str = "cpu") -> Self:
        """Load a model written by :meth:`save`, with ``adata`` as its training data.

        Only ``model.safetensors`` and ``model.json`` are read, by parsers that cannot run code; nothing
        is ever unpickled (a directory holding only scvi-tools' pickled ``model.pt`` raises an error
        saying so). Truncated or corrupted files raise a ``ValueError``, and so do weights whose SHA-256
        differs from the one ``model.json`` recorded when they were saved; weights are checked against
        the architecture in ``model.json`` and every missing, unexpected or differently shaped
        parameter is named. A model saved by another major or minor bioformers version loads with a
        warning naming both versions.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            The model's training data, or any AnnData with exactly the model's genes in the model's
            order (names compared exactly) and the binned layer it was trained on. It becomes the
            model's data (``model.adata``, a private AnnData sharing ``adata``'s matrices and columns),
            which :meth:`get_latent_representation` and :meth:`train` read by default. ``None`` reads
            ``adata.h5ad`` from ``dir_path`` when ``save(..., save_anndata=True)`` wrote it; otherwise
            the model is built from what ``model.json`` records (genes, binning, scvi-tools' registry)
            and holds no data (``model.adata`` is ``None``): it embeds and predicts any query
            (:func:`bioformers.tl.embed`, :func:`bioformers.tl.predict`, which match genes by name),
            and :func:`bioformers.tl.pretrain` with ``init=`` fine-tunes it on new data.
            :class:`~bioformers.CellDiffusion` needs its data. Query data with other genes is not
            passed here but to the tools.
        accelerator
            ``"cpu"`` or ``"cuda"``.

        Returns
        -------
        model
            The trained model, of the class that saved it: ``bf.BioFormer.load`` also opens a
            :class:`~bioformers.BioFormerDecoder` (including one saved by bioformers 0.1, where both
            networks were one class). Nothing is written into ``adata``: scvi-tools' registration goes
            into the private AnnData.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
        >>> path = os.path.join(tempfile.mkdtemp(), "model")
        >>> model.save(path)
        >>> loaded = bf.BioFormer.load(path, adata=adata.copy())
        >>> bool(np.array_equal(loaded.get_latent_representation(), model.get_latent_representation()))
        True

        Without any data, as a shared model is used:

        >>> alone = bf.BioFormer.load(path)
        >>> query = adata[:, ::-1].copy()  # the genes in another order: matched by name
        >>> bf.tl.embed(query, alone)
        >>> bool(np.allclose(query.obsm["X_bioformers"], adata.obsm["X_bioformers"], atol=1e-6))
        True
        """
        state_dict, attributes = read_model(dir_path)
        attributes = upgrade_legacy(attributes)
        name = attributes.get("model_class", "BioFormer")
        check_model_class(attributes, (cls.__name__, *cls._also_loads), dir_path)
        model_cls = _MODEL_CLASSES[name]
        check_version(attributes.get("version"), package_version(), dir_path)
        # scvi-tools registers by writing into the AnnData: register a mirror of the caller's, never theirs
        saved_anndata = os.path.join(dir_path, SAVED_ANNDATA_FILE)
        if adata is not None:
            adata = mirror(adata)
        elif os.path.isfile(saved_anndata):
            adata = anndata.read_h5ad(saved_anndata)
        elif not model_cls._loads_without_data:
            raise FileNotFoundError(
                f"No `adata` given and {saved_anndata} not found: a {name} needs its training data to load. Pass "
                "`adata=` with it, or save the model with `model.save(dir_path, save_anndata=True)`."
            )
        registry = attributes["registry"]
        if adata is not None:
            check_training_genes(adata, np.asarray(attributes["genes"]).astype(str), dir_path)
            model_cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
        init = model_cls._saved_init(init_arguments(attributes["init_params"]), attributes)
        # no data: scvi-tools builds the model from the saved registry (its `registry=`), as for data modules
        model = model_cls(adata, **init) if adata is not None else model_cls(registry=registry, **init)
        state_dict = upgrade_legacy_weights(model.module.state_dict(), state_dict)
        check_state_dict(model.module.state_dict(), state_dict, dir_path)
        model.module.load_state_dict(state_dict)
        model.history_ = {
            name: pd.DataFrame({name: values}, index=pd.RangeIndex(len(values), name="epoch"))
            for name, values in attributes["history"].items()
        }
        model._restore(attributes)
        model.is_trained_ = True
        model.to_device("cuda" if accelerator in ("cuda", "gpu") else "cpu")
        model.module.eval()
        return model

    @classmethod
    def _saved_init(cls, init: dict[str, Any], attributes: dict[str, Any]) -> dict[str, Any]:
        """The arguments to rebuild a saved model with, from its saved ones (hook for a class to adjust)."""
        return init

    def _restore(self, attributes: dict[str, Any]) -> None:
        """Restore what ``_saved_attributes`` recorded (after the weights are loaded)."""


def init_arguments(init_params: dict[str, Any]) -> dict[str, Any]:
    """The arguments a model was built with, from scvi-tools' ``init_params_`` record (named and ``**kwargs``)."""
    kwargs = {k: v for group in init_params.get("kwargs", {}).values() for k, v in group.items()}
    return dict(init_params["non_kwargs"]) | kwargs


def check_training_genes(adata: AnnData, genes: np.ndarray, dir_path: str) -> None:
    """Raise unless ``adata`` has exactly ``genes``, in order: the AnnData :meth:`BioFormer.load` registers."""
    names = np.asarray(adata.var_names).astype(str)
    if names.shape == genes.shape and (names == genes).all():
        return
    missing, extra = np.setdiff1d(genes, names), np.setdiff1d(names, genes)
    if missing.size or extra.size:
        detail = (
            f"it lacks {missing.size} of them (e.g. {missing[:5].tolist()}) and has {extra.size} others "
            f"(e.g. {extra[:5].tolist()})"
        )
    elif names.size != genes.size:
        detail = f"it has {names.size} genes, some of them repeated"
    else:
        first = int(np.flatnonzero(names != genes)[0])
        detail = (
            f"it has them in another order (at position {first}: {str(names[first])!r}, model: {str(genes[first])!r})"
        )
    raise ValueError(
        f"`load` registers `adata` as the model's training data, so it needs the {genes.size} genes of the model at "
        f"{str(dir_path)!r} in the model's order (listed under 'genes' in model.json), but {detail}. Pass the "
        "training data (`adata[:, genes].copy()` reorders an AnnData that has them all), or save the model with "
        "`save_anndata=True` and load it without `adata`. To apply the model to data with other genes, load it with "
        "its training data and pass the other data to `bf.tl.embed` / `bf.tl.predict`, which match genes by name."
    )
