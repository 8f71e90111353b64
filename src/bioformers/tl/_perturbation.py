"""``bf.tl.train_perturbation`` and ``bf.tl.predict_perturbation``: responses to CRISPR perturbations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse
from sklearn.model_selection import train_test_split

from .._docs import DOC_BATCH_SIZE, DOC_KEY_ADDED_RETURNED, DOC_LR, DOC_PAIRS_BATCH_SIZE, doc_params
from .._keys import DEFAULT_KEY, Keys
from .._logging import seed as quiet_seed
from .._record import params_record
from .._validation import (
    check_anndata,
    check_control,
    check_counts,
    check_obs_key,
    check_train_kwargs,
    get_matrix,
    matrix_name,
    warn_genes_without_counts,
)
from ..data import log_normalize, perturbation_targets
from ..metrics import top_de_genes
from ..model import BioFormer
from ..model.base._save_load import init_arguments
from ..module import check_module_arguments
from ..pp._tokens import BINNING_ARGS, bin_as_recorded, bin_matrix
from ._models import require_encoder
from ._pretrain import pretrain as pretrain_model

if TYPE_CHECKING:
    from collections.abc import Sequence


@doc_params(batch_size=DOC_PAIRS_BATCH_SIZE, lr=DOC_LR)
def train_perturbation(
    adata: ad.AnnData,
    model: BioFormer | None = None,
    *,
    perturbation_key: str,
    control: str = "control",
    split: Literal["simulation", "cells"] = "simulation",
    test_perturbations: Sequence[str] | None = None,
    test_size: float = 0.2,
    layer: str | None = None,
    pretrain: bool = True,
    min_cells: int = 5,
    response_weight: float = 4.0,
    n_top_genes: int = 20,
    n_hidden: int = 64,
    n_layers: int = 4,
    n_heads: int = 2,
    max_seq_len: int | None = None,
    max_epochs: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    key_added: str = DEFAULT_KEY,
    **train_kwargs,
) -> BioFormer:
    """Learn how cells respond to perturbations, holding some out for testing.

    Without a ``model``, a network is first pretrained on the training control cells by masked
    gene modelling (:func:`bioformers.tl.pretrain` with its defaults), so that it knows how genes
    vary together in unperturbed cells, held-out targets included, before it learns what
    perturbations do. Each training cell (perturbed or control) is then paired with a control
    cell drawn at random (seeded, afresh every epoch). The network reads the control cell's binned
    expression with the perturbed genes marked by an external token (a target that is not a
    measured gene gets its own gene token, with no value) and predicts the paired cell's
    log-normalised expression (counts per 10,000, ``log1p``). A perturbed cell's prediction is
    the control mean, plus the mean response of the training perturbations (what the
    "train-mean" baseline predicts for any perturbation), plus a change decoded from the CLS state
    and from each gene's token: the network learns what is specific to each perturbation. The
    loss is a mean squared error over all genes, with ``1 + response_weight`` times the weight on
    each training perturbation's top DE genes.

    Everything is checked first, and training runs on a private AnnData that shares ``adata``'s
    counts: ``adata`` gets only the record, at the end. Cells with no counts raise an error; genes
    with no counts give a warning.

    Parameters
    ----------
    adata
        Raw counts of a perturbation screen: control cells and perturbed cells, in memory. Not a
        view: call ``.copy()`` on a subset first.
    model
        A trained :class:`bioformers.BioFormer` (e.g. from :func:`bioformers.tl.pretrain` on the same
        genes) to start from: its weights, size and binning are kept. ``None`` pretrains one on the
        training control cells first (see `pretrain`).
    perturbation_key
        Column of ``adata.obs`` with each cell's perturbation: ``control`` or the targeted gene(s),
        combinations joined by ``+``; no missing values.
    control
        Label of control cells.
    split
        ``"simulation"``: whole perturbations are held out (unseen perturbations).
        ``"cells"``: a fraction ``test_size`` of the cells of every perturbation (and of the controls)
        is held out; every perturbation is seen in training.
    test_perturbations
        Perturbations to hold out with ``split="simulation"``. ``None`` holds out a third (at least one),
        chosen with ``seed``, of the perturbations whose targets are all measured genes (the others
        cannot be represented by what the model learns from expression).
    test_size
        Fraction of cells held out with ``split="cells"``.
    layer
        Layer with raw counts; ``None`` uses ``adata.X``.
    pretrain
        Without a ``model``: pretrain one on the training control cells (``True``), with
        ``n_hidden``, ``n_layers``, ``n_heads``, ``max_seq_len`` and ``seed`` and
        :func:`~bioformers.tl.pretrain`'s other defaults, or start from random weights (``False``).
    min_cells
        Fewest cells a perturbation (and the control group) may have.
    response_weight
        Extra loss weight on each training perturbation's top ``n_top_genes`` DE genes.
    n_top_genes
        DE genes per perturbation that get the extra weight.
    n_hidden, n_layers, n_heads
        Size of a new model (ignored when ``model`` is given).
    max_seq_len
        Longest sequence; ``None``: the model's, or 256 from scratch. The perturbed genes always enter.
    max_epochs
        Passes over the training cells; ``None``: 3 to 10 by their number, about 80,000 pairs in all
        (4 epochs for 20,000 cells).
    {batch_size}
    {lr}
    seed
        Seed of the split, the pairing and the training.
    key_added
        Base key of the record written.
    **train_kwargs
        Passed to :meth:`bioformers.BioFormer.train_perturbation` (e.g. ``accelerator``, ``devices``,
        ``precision``) and on to Lightning (e.g. ``enable_progress_bar``).

    Returns
    -------
    :class:`~bioformers.BioFormer`
        The fine-tuned model (a new one; ``model`` is not changed). ``model.perturbation_`` holds
        the split (``test_perturbations``, ``train_perturbations``, and ``test_cells`` for the cells
        split) and is saved with the model. Sets one field of ``adata`` (``bioformers`` in the name
        is ``key_added``); nothing else of ``adata`` changes:

        ``adata.uns['bioformers_perturbation']`` : :class:`dict`
            ``params`` (the arguments and the model's size), ``test_perturbations``,
            ``train_perturbations`` and ``history`` (``train_loss`` per epoch).

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic_perturbation(n_obs=300, n_vars=24, n_programs=2, n_unmeasured=1)
    >>> model = bf.tl.train_perturbation(
    ...     adata, perturbation_key="perturbation", n_hidden=16, n_layers=1, max_epochs=1, batch_size=32
    ... )
    >>> len(model.perturbation_["test_perturbations"])
    1
    >>> sorted(adata.uns["bioformers_perturbation"])
    ['history', 'params', 'test_perturbations', 'train_perturbations']
    """
    keys = Keys(key_added)
    check_anndata(adata)
    check_train_kwargs(
        train_kwargs, tool=train_perturbation, train=BioFormer.train_perturbation, where="`bf.tl.train_perturbation`"
    )
    check_obs_key(adata, perturbation_key, argument="perturbation_key")
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    check_control(adata.obs[perturbation_key], control, perturbation_key)
    if not isinstance(pretrain, bool):
        raise TypeError(f"`pretrain` must be True or False, not {pretrain!r}.")
    if split not in ("simulation", "cells"):
        raise ValueError(f"`split` must be 'simulation' or 'cells', not {split!r}.")
    if split == "cells" and not 0 < test_size < 1:
        raise ValueError(f"`test_size` must lie in (0, 1), not {test_size}.")
    counts = get_matrix(adata, layer)
    binning = model.binning_ if model is not None else {}  # bin_as_recorded reads the token arguments only
    check_counts(counts, where=matrix_name(layer), require_integer=binning.get("method", "value") == "value")
    _check_group_sizes(labels, min_cells)
    if model is not None:
        require_encoder(model, "Perturbation fine-tuning")
        model.check_genes(adata)
        architecture = _architecture(model)
        architecture["max_seq_len"] = max_seq_len or architecture["max_seq_len"]
    else:
        architecture = {
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "max_seq_len": max_seq_len or 256,
        }
        check_module_arguments(**architecture, value_encoder="embedding", mask_ratio=0.1, nonzero_ratio=0.5)
    var_names = set(adata.var_names)
    perturbations = list(dict.fromkeys(label for label in labels if label != control))
    rng = np.random.default_rng(seed)
    if split == "simulation":
        test = _simulation_test(perturbations, test_perturbations, var_names, control, rng)
        previous = set(model.perturbation_.get("train_perturbations", [])) if model is not None else set()
        if previous & set(test):
            raise ValueError(
                f"The starting model was already trained on {sorted(previous & set(test))}, which are to be held "
                "out: their effect would not be unseen. Start from a model that never saw them (e.g. the pretrained "
                "one) or hold out other perturbations."
            )
        train_cells = np.flatnonzero(~np.isin(labels, test))
        test_cells = np.flatnonzero(np.isin(labels, test))
    else:
        if test_perturbations is not None:
            raise ValueError("`test_perturbations` applies to `split='simulation'`; the cells split tests them all.")
        test = perturbations
        train_cells, test_cells = train_test_split(
            np.arange(adata.n_obs), test_size=test_size, random_state=seed, stratify=labels
        )
        train_cells, test_cells = np.sort(train_cells), np.sort(test_cells)
    train_labels = [p for p in perturbations if p not in set(test)] if split == "simulation" else perturbations
    if not train_labels:
        raise ValueError("No perturbation is left to train on: hold out fewer perturbations.")
    pretrained_here = model is None and pretrain
    if pretrained_here:
        model = _pretrain_on_controls(
            adata, counts, train_cells[labels[train_cells] == control], architecture, batch_size, seed, train_kwargs
        )
        binning = model.binning_
        architecture = _architecture(model) | {"max_seq_len": architecture["max_seq_len"]}

    # everything is built on a private AnnData: the caller's is only written at the end
    work = ad.AnnData(
        X=sparse.csr_matrix(counts, dtype=np.float32),
        obs=pd.DataFrame(
            {perturbation_key: pd.Categorical(labels, categories=[control, *perturbations])},
            index=adata.obs_names.copy(),
        ),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    bin_as_recorded(work, binning, layer=None, key_added=key_added)
    warn_genes_without_counts(work.X, where=matrix_name(layer))
    expression = log_normalize(work.X)
    weights = _response_weights(
        expression, labels, train_cells, [control, *perturbations], train_labels, control, n_top_genes, response_weight
    )
    quiet_seed(seed)
    BioFormer.setup_anndata(work, layer=keys.binned, perturbation_key=perturbation_key, control=control)
    n_bins = model.module.n_bins if model is not None else None
    fitted = BioFormer(work, **architecture, n_bins=n_bins)
    if model is not None:
        _transfer_weights(model, fitted)
    fitted.train_perturbation(
        expression,
        train_cells,
        weights=weights,
        max_epochs=max_epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        **train_kwargs,
    )
    fitted.perturbation_ = {
        "key": perturbation_key,
        "control": control,
        "split": split,
        "seed": seed,
        "test_perturbations": list(test),
        "train_perturbations": train_labels,
        "test_cells": [str(name) for name in adata.obs_names[test_cells]] if split == "cells" else [],
    }
    history = fitted.loss_history()
    adata.uns[keys.perturbation] = {
        "params": params_record(
            perturbation_key=perturbation_key,
            control=control,
            split=split,
            test_size=test_size,
            layer=layer,
            min_cells=min_cells,
            response_weight=response_weight,
            n_top_genes=n_top_genes,
            **architecture,
            max_epochs=len(history["train_loss"]),
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            pretrain=pretrain,
            pretrained="on the control cells" if pretrained_here else model is not None,
            model=type(fitted).__name__,
        ),
        "test_perturbations": list(test),
        "train_perturbations": train_labels,
        "history": history,
    }
    logg.info(f"added\n    'uns[{keys.perturbation!r}]', perturbation training record and split")
    return fitted


@doc_params(batch_size=DOC_BATCH_SIZE, key_added=DOC_KEY_ADDED_RETURNED)
def predict_perturbation(
    model: BioFormer,
    adata_control: ad.AnnData,
    perturbations: str | Sequence[str],
    *,
    n_cells: int = 200,
    layer: str | None = None,
    batch_size: int = 128,
    seed: int = 0,
    key_added: str = DEFAULT_KEY,
) -> ad.AnnData:
    """Predict cells after perturbations, starting from control cells.

    Draws ``n_cells`` control cells (seeded; with replacement only if there are fewer), marks each
    perturbation's targets and predicts the log-normalised expression of every gene.

    Parameters
    ----------
    model
        A model from :func:`bioformers.tl.train_perturbation`.
    adata_control
        Raw counts of control cells with exactly the model's genes, in the model's order
        (:meth:`bioformers.BioFormer.check_genes`), in memory (a view is fine: nothing is written
        into it). Unlike :func:`bioformers.tl.embed`, genes are not matched by name: a gene missing
        from the controls would read as unexpressed, so the prediction would start from other
        controls than the model was fine-tuned on (a missing target would look knocked out already).
        If it has the model's perturbation column (without missing values), only its control cells
        are used. Cells with no counts raise an error.
    perturbations
        Perturbation labels: a measured gene or a training target, or several joined by ``+``.
    n_cells
        Predicted cells per perturbation.
    layer
        Layer with raw counts; ``None`` uses ``adata_control.X``.
    {batch_size}
    seed
        Seed of the choice of control cells.
    {key_added}

    Returns
    -------
    :class:`~anndata.AnnData`
        A new AnnData, ``n_cells`` per perturbation x the model's genes; cells are named
        ``<perturbation>_<i>``. It holds (``bioformers`` in the names is ``key_added``):

        ``X``, ``layers['bioformers_predicted']`` : :class:`~numpy.ndarray` ``float32``
            Predicted log-normalised expression (``log1p`` of counts per 10,000).
        ``obs['perturbation']`` : categorical
            The perturbation, categories in the order requested.
        ``obs['control_cell']`` : :class:`str`
            The name of the control cell the prediction started from.
        ``uns['bioformers_perturbation']`` : :class:`dict`
            ``params``: the arguments and the model class.

        Nothing is written into ``adata_control``.

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic_perturbation(n_obs=300, n_vars=24, n_programs=2, n_unmeasured=1)
    >>> model = bf.tl.train_perturbation(
    ...     adata, perturbation_key="perturbation", n_hidden=16, n_layers=1, max_epochs=1, batch_size=32
    ... )
    >>> held_out = model.perturbation_["test_perturbations"]
    >>> pred = bf.tl.predict_perturbation(model, adata, held_out, n_cells=50)
    >>> pred.shape
    (50, 24)
    >>> pred.obs["perturbation"].cat.categories.tolist() == held_out
    True
    """
    keys = Keys(key_added)
    if isinstance(perturbations, str):
        perturbations = [perturbations]
    perturbations = list(perturbations)
    if not perturbations:
        raise ValueError("`perturbations` is empty: name at least one perturbation to predict.")
    if n_cells < 1:
        raise ValueError(f"`n_cells` must be at least 1, not {n_cells}.")
    check_anndata(adata_control, name="adata_control", writes=False)
    targets = model.target_indices(perturbations)
    model.check_genes(adata_control)
    counts = get_matrix(adata_control, layer, name="adata_control")
    check_counts(counts, where=matrix_name(layer, name="adata_control"))
    cells = np.arange(adata_control.n_obs)
    key = model.registry_["setup_args"]["perturbation_key"]
    if key in adata_control.obs:
        check_obs_key(adata_control, key, argument="perturbation_key", name="adata_control")
        cells = np.flatnonzero(adata_control.obs[key].astype(str).to_numpy() == model.control_)
        if not cells.size:
            raise ValueError(
                f"`adata_control.obs[{key!r}]` has no {model.control_!r} cells. Pass control cells, or an AnnData "
                f"without the {key!r} column to use all its cells as controls."
            )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(cells, size=n_cells, replace=cells.size < n_cells))
    binning = {k: model.binning_[k] for k in BINNING_ARGS if k in model.binning_}
    bins, _ = bin_matrix(sparse.csr_matrix(counts[chosen], dtype=np.float32), **binning)

    n_perturbations = len(perturbations)
    predicted = model.get_perturbation_response(
        sparse.vstack([bins] * n_perturbations).tocsr(), np.repeat(targets, n_cells, axis=0), batch_size=batch_size
    )
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(
                np.repeat(perturbations, n_cells), categories=list(dict.fromkeys(perturbations))
            ),
            "control_cell": np.tile(np.asarray(adata_control.obs_names[chosen]), n_perturbations),
        },
        index=pd.Index([f"{p}_{i}" for p in perturbations for i in range(n_cells)]),
    )
    out = ad.AnnData(X=predicted, obs=obs, var=pd.DataFrame(index=model.genes_.copy()))
    out.layers[keys.predicted] = predicted.copy()
    out.uns[keys.perturbation] = {
        "params": params_record(
            perturbations=perturbations, n_cells=n_cells, layer=layer, seed=seed, model=type(model).__name__
        )
    }
    return out


def _pretrain_on_controls(
    adata, counts, controls: np.ndarray, architecture: dict, batch_size: int, seed: int, train_kwargs: dict
):
    """A model pretrained on the training control cells, as :func:`~bioformers.tl.pretrain` does by default."""
    logg.info(f"pretraining on {controls.size:,} control cells before the perturbation training")
    source = ad.AnnData(
        X=sparse.csr_matrix(counts[controls], dtype=np.float32),
        obs=pd.DataFrame(index=adata.obs_names[controls].copy()),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    # checkpoints belong to the perturbation training: the pretraining must not write or resume them
    shared = {k: v for k, v in train_kwargs.items() if k not in ("save_checkpoints", "checkpoint_every", "resume_from")}
    # a small screen may have fewer control cells than a batch
    return pretrain_model(source, **architecture, batch_size=min(batch_size, controls.size), seed=seed, **shared)


def _check_group_sizes(labels: np.ndarray, min_cells: int) -> None:
    names, sizes = np.unique(labels, return_counts=True)
    small = {str(n): int(c) for n, c in zip(names, sizes, strict=True) if c < min_cells}
    if small:
        raise ValueError(
            f"These perturbations have fewer than `min_cells={min_cells}` cells: {small}. Remove their cells "
            "(e.g. `adata = adata[~adata.obs[key].isin([...])].copy()`) or lower `min_cells`."
        )


def _simulation_test(perturbations, test_perturbations, var_names, control, rng) -> list[str]:
    """The held-out perturbations of the simulation split, checked."""
    if test_perturbations is None:
        eligible = [p for p in perturbations if all(t in var_names for t in perturbation_targets(p, control))]
        if len(eligible) < 2:
            raise ValueError(
                f"Only {len(eligible)} perturbation(s) target measured genes; at least 2 are needed to hold one out "
                "and learn from another. Pass `test_perturbations=` or use `split='cells'`."
            )
        n_test = max(1, round(len(eligible) / 3))
        return sorted(rng.choice(eligible, size=n_test, replace=False).tolist(), key=eligible.index)
    test = [test_perturbations] if isinstance(test_perturbations, str) else list(test_perturbations)
    unknown = [p for p in test if p not in perturbations]
    if control in test:
        raise ValueError(f"`test_perturbations` holds the control label {control!r}; hold out perturbations only.")
    if unknown:
        raise ValueError(
            f"`test_perturbations` {unknown} are not labels of the data (labels: {perturbations[:10]}...)."
        )
    if len(set(test)) < len(test):
        raise ValueError("`test_perturbations` lists a perturbation twice.")
    return test


def _response_weights(expression, labels, train_cells, categories, train_labels, control, n_top_genes, response_weight):
    """Loss weight per (perturbation category, gene): 1, plus ``response_weight`` on training DE genes."""
    n_genes = expression.shape[1]
    weights = np.ones((len(categories), n_genes), dtype=np.float32)
    if response_weight == 0 or n_top_genes == 0:
        return weights
    train = ad.AnnData(
        expression[train_cells],
        obs=pd.DataFrame(
            {"perturbation": pd.Categorical(labels[train_cells])}, index=pd.Index(train_cells.astype(str))
        ),
        var=pd.DataFrame(index=[str(i) for i in range(n_genes)]),
    )
    top = top_de_genes(
        train,
        perturbation_key="perturbation",
        control=control,
        n_top_genes=min(n_top_genes, n_genes),
        perturbations=train_labels,
    )
    for label, genes in top.items():
        weights[categories.index(label), [int(g) for g in genes]] += response_weight
    return weights


def _architecture(model: BioFormer) -> dict:
    params = init_arguments(model.init_params_)
    params.pop("n_bins", None)
    return params


def _transfer_weights(source: BioFormer, target: BioFormer) -> None:
    """Copy ``source``'s weights into ``target``: gene tokens by gene name, the rest by parameter name."""
    source_state, target_state = source.module.state_dict(), target.module.state_dict()
    for name, value in source_state.items():
        if name == "gene_embedding.weight":
            index = {g: i for i, g in enumerate(source.vocabulary_)}
            rows = [(i, index[g]) for i, g in enumerate(target.vocabulary_) if g in index]
            to, src = zip(*rows, strict=True)
            target_state[name][list(to)] = value[list(src)]
        elif name in target_state and target_state[name].shape == value.shape:
            target_state[name].copy_(value)
    target.module.load_state_dict(target_state)
