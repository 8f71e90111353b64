"""``bf.tl.annotate``: cell types from a labelled reference, by a classifier on the CLS embedding."""

from __future__ import annotations

import copy as copy_module
from contextlib import ExitStack
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from scanpy import logging as logg
from scipy import sparse
from sklearn.model_selection import train_test_split

from .._docs import DOC_KEY_ADDED, DOC_MINIBATCH, DOC_MODEL, doc_params
from .._keys import DEFAULT_KEY, Keys
from .._record import params_record
from .._validation import check_anndata, did_you_mean, shown
from ..model import BioFormer, BioFormerDecoder
from ..pp._genes import DEFAULT_MIN_GENE_COVERAGE
from ..train import default_precision
from ..train._annotate import fit_classifier

if TYPE_CHECKING:
    from anndata import AnnData

    from ..model.base import Query

#: Training settings of each ``fine_tune`` mode when not given: (max_epochs, head learning rate).
DEFAULTS = {"head": (100, 1e-2), "all": (10, 1e-4)}
#: The encoder's learning rate relative to the head's when ``fine_tune="all"``.
ENCODER_LR_RATIO = 1.0
#: AdamW weight decay of the head's (and encoder's) matrices.
WEIGHT_DECAY = 0.01
#: Fewest labelled cells a class needs: one to train on and one to validate on.
MIN_CELLS_PER_CLASS = 2


@doc_params(model=DOC_MODEL, batch_size=DOC_MINIBATCH, key_added=DOC_KEY_ADDED)
def annotate(
    adata: AnnData,
    model: BioFormer,
    *,
    labels_key: str,
    query: AnnData | None = None,
    fine_tune: Literal["head", "all"] = "head",
    layer: str | None = None,
    gene_symbols: str | None = None,
    min_gene_coverage: float = DEFAULT_MIN_GENE_COVERAGE,
    max_epochs: int | None = None,
    batch_size: int = 64,
    lr: float | None = None,
    validation_size: float = 0.1,
    class_weight: bool = True,
    seed: int = 0,
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
    **train_kwargs,
) -> AnnData | None:
    """Annotate cell types: train a classifier on the CLS embedding of a labelled reference, apply it to a query.

    A classification head (LayerNorm + linear layer: multinomial logistic regression on the
    standardised CLS state) learns the reference's labels with a class-weighted cross-entropy, so
    rare cell types count as much as common ones. ``fine_tune="head"`` keeps the network frozen:
    CLS embeddings are computed once and only the head trains (seconds). ``fine_tune="all"`` trains
    a copy of the whole network with the head (the encoder at a tenth of the head's learning
    rate); ``model`` itself is never changed. A stratified ``validation_size`` share of the labelled
    reference cells is held out, and the weights of the epoch with the lowest validation loss are
    kept. Training is seeded: the same call gives the same labels (on the same device).

    Reference cells with a missing label (NaN) are not trained on; with ``query=None`` they are
    annotated with the rest, which labels the unlabelled part of a dataset. Every class needs at
    least two labelled cells.

    Genes of the reference and the query are matched to the model's by name, as in
    :func:`bioformers.tl.embed` (which describes missing genes, the coverage check and binning);
    counts are binned like the model's training data when the binned layer is missing, on a private
    AnnData: nothing but the results below is written. Everything is checked before anything is
    written, and results are written only once all are computed.

    Parameters
    ----------
    adata
        The labelled reference: raw counts (or the model's binned layer), in memory or backed.
    {model}
        For example from :func:`bioformers.tl.pretrain`.
    labels_key
        Column of ``adata.obs`` with the cell types; missing values mark unlabelled cells.
    query
        Cells to annotate, in memory or backed; ``None`` annotates ``adata`` itself.
    fine_tune
        ``"head"``: train the classification head on the frozen model's CLS embedding.
        ``"all"``: train a copy of the whole network with the head.
    layer
        Layer with raw counts (in the reference and the query), used when binning is needed;
        ``None`` uses ``.X``.
    gene_symbols
        Column of ``.var`` (in the reference and the query) holding the gene names the model knows;
        ``None`` matches ``var_names``.
    min_gene_coverage
        Smallest fraction of the model's genes that the reference and the query must have.
    max_epochs
        Passes over the training cells; ``None``: 100 for ``"head"``, 10 for ``"all"``.
    {batch_size}
    lr
        Peak learning rate of the head (cosine decay); ``None``: 1e-2 for ``"head"``, 1e-3 for ``"all"``.
    validation_size
        Share of the labelled reference cells held out (stratified by class) to choose the epoch
        whose weights are kept; 0 trains on all of them and keeps the last epoch.
    class_weight
        Weigh each class in the loss inversely to its number of training cells (scikit-learn's
        ``"balanced"``), so that rare types are not ignored.
    seed
        Seed of the validation split, the head's initialisation, the order of cells and, with
        ``"all"``, of dropout and gene sampling.
    {key_added}
    copy
        Return an annotated copy of the query (of ``adata`` when ``query=None``) instead of writing into it.
    **train_kwargs
        Passed to Lightning's :class:`~lightning.pytorch.Trainer` (e.g. ``accelerator``, ``precision``,
        ``enable_progress_bar``). The default precision is fp32 for ``"head"`` (a small layer gains
        nothing from bf16) and :func:`bioformers.train.default_precision` for ``"all"``.

    Returns
    -------
    :class:`~anndata.AnnData` or None
        The annotated copy of the query (of ``adata`` when ``query=None``) if ``copy=True``, else
        `None`. Sets these fields of the query (``bioformers`` in the names is ``key_added``):

        ``query.obs['bioformers_label']`` : categorical
            The most probable class; categories are the reference's classes, in the order of its
            categories (sorted when the column is not categorical).
        ``query.obs['bioformers_confidence']`` : ``float32``
            The probability of that class.
        ``query.obsm['bioformers_label_probabilities']`` : :class:`~numpy.ndarray` ``float32`` (n_obs, n_classes)
            The probability of every class, columns in the order of the categories.
        ``query.uns['bioformers_annotation']`` : :class:`dict`
            ``params`` (the arguments), ``classes``, ``n_train_cells`` (per class), ``best_epoch``
            (0-based) and ``history`` (``train_loss`` and ``validation_loss`` per epoch; with
            ``fine_tune="all"`` also those of the head's first stage, prefixed ``head_``).

        Nothing is written into the reference when a query is given. The classifier is not
        returned: to annotate several queries with one training, concatenate them
        (``anndata.concat([q1, q2], label="query")``).

    Examples
    --------
    >>> import bioformers as bf
    >>> ref = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> query = bf.datasets.synthetic(n_obs=60, n_vars=50, seed=1)
    >>> model = bf.tl.pretrain(ref, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> bf.tl.annotate(ref, model, labels_key="cell_type", query=query)
    >>> query.obs["bioformers_label"].cat.categories.tolist()
    ['type_0', 'type_1', 'type_2']
    >>> bool(query.obs["bioformers_confidence"].between(0, 1).all())
    True
    """
    keys = Keys(key_added)
    target = adata if query is None else query
    check_anndata(adata, copy=copy and query is None, writes=query is None, backed=True)
    if query is not None:
        check_anndata(query, name="query", copy=copy, backed=True)
    _check_model(model)
    if fine_tune not in DEFAULTS:
        raise ValueError(f"`fine_tune` must be 'head' or 'all', not {fine_tune!r}.")
    default_epochs, default_lr = DEFAULTS[fine_tune]
    max_epochs = default_epochs if max_epochs is None else max_epochs
    lr = default_lr if lr is None else lr
    _check_run(max_epochs=max_epochs, batch_size=batch_size, lr=lr, validation_size=validation_size)
    codes, classes = reference_classes(adata, labels_key)
    labelled = np.flatnonzero(codes >= 0)
    validation = _validation_mask(codes[labelled], len(classes), validation_size, seed)

    genes_ref = model.align_genes(adata, gene_symbols=gene_symbols, min_gene_coverage=min_gene_coverage)
    genes_query = genes_ref
    if query is not None:
        genes_query = model.align_genes(query, gene_symbols=gene_symbols, min_gene_coverage=min_gene_coverage)
    precision = train_kwargs.pop("precision", None)
    accelerator = train_kwargs.pop("accelerator", "auto")
    common = {
        "n_classes": len(classes),
        "validation": validation,
        "batch_size": batch_size,
        "weight_decay": WEIGHT_DECAY,
        "class_weight": class_weight,
        "seed": seed,
        "accelerator": accelerator,
        **train_kwargs,
    }
    # a small head gains nothing from bf16; the whole network trains as in pretraining
    head_precision = precision or "32-true"
    all_precision = precision or default_precision(accelerator)
    head_epochs, head_lr = (max_epochs, lr) if fine_tune == "head" else DEFAULTS["head"]

    with ExitStack() as stack:
        reference_cells = stack.enter_context(model.prepare_query(adata, layer=layer, genes=genes_ref))
        query_cells = reference_cells
        if query is not None:
            query_cells = stack.enter_context(model.prepare_query(query, layer=layer, copy=copy, genes=genes_query))
        same = query is None
        embedding = model.get_latent_representation(
            reference_cells.adata, indices=None if same else labelled, genes=genes_ref, counts_layer=layer
        )
        plan = fit_classifier(
            embedding[labelled] if same else embedding,
            codes[labelled],
            encoder=None,
            n_hidden=embedding.shape[1],
            max_epochs=head_epochs,
            lr=head_lr,
            encoder_lr=0.0,
            precision=head_precision,
            **common,
        )
        history = {name: np.asarray(values, dtype=np.float64) for name, values in plan.history.items()}
        if fine_tune == "head":
            query_cls = (
                embedding
                if same
                else model.get_latent_representation(query_cells.adata, genes=genes_query, counts_layer=layer)
            )
        else:
            # linear probe, then fine-tuning from it (LP-FT): a random head would first pull the encoder off course
            history = {f"head_{name}": values for name, values in history.items()}
            bins = _binned(reference_cells, labelled, batch_size)
            plan = fit_classifier(
                bins,
                codes[labelled],
                encoder=copy_module.deepcopy(model.module),
                head=plan.head,
                n_hidden=embedding.shape[1],
                max_epochs=max_epochs,
                lr=lr,
                encoder_lr=lr * ENCODER_LR_RATIO,
                precision=all_precision,
                **common,
            )
            history |= {name: np.asarray(values, dtype=np.float64) for name, values in plan.history.items()}
            query_cls = _encoded(plan.encoder, model, query_cells, batch_size)
        probabilities = _softmax(plan.head, query_cls)

    record = {
        "params": params_record(
            labels_key=labels_key,
            fine_tune=fine_tune,
            layer=layer,
            gene_symbols=gene_symbols,
            min_gene_coverage=min_gene_coverage,
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            encoder_lr=lr * ENCODER_LR_RATIO if fine_tune == "all" else None,
            head_max_epochs=head_epochs if fine_tune == "all" else None,
            head_lr=head_lr if fine_tune == "all" else None,
            validation_size=validation_size,
            class_weight=class_weight,
            seed=seed,
            precision=head_precision if fine_tune == "head" else all_precision,
            n_reference_cells=int(labelled.size),
            model=type(model).__name__,
        ),
        "classes": np.asarray(classes, dtype=str),
        "n_train_cells": np.bincount(
            codes[labelled] if validation is None else codes[labelled][~validation], minlength=len(classes)
        ).astype(np.int64),
        "best_epoch": int(plan.best_epoch),
        "history": history,
    }
    predicted = probabilities.argmax(axis=1)
    target = target.copy() if copy else target
    target.obs[keys.label] = pd.Categorical.from_codes(predicted, categories=classes)
    target.obs[keys.confidence] = probabilities[np.arange(predicted.size), predicted].astype(np.float32)
    target.obsm[keys.label_probabilities] = probabilities.astype(np.float32)
    target.uns[keys.annotation] = record
    logg.info(
        f"added\n    'obs[{keys.label!r}]', predicted cell types\n    'obs[{keys.confidence!r}]', their probability\n"
        f"    'obsm[{keys.label_probabilities!r}]', probability of every class\n"
        f"    'uns[{keys.annotation!r}]', annotation record"
    )
    return target if copy else None


def _check_model(model: BioFormer) -> None:
    if not isinstance(model, BioFormer | BioFormerDecoder):
        raise TypeError(
            f"`model` must be a trained bf.BioFormer (from `bf.tl.pretrain` or `bf.BioFormer.load`), not "
            f"{type(model).__name__}."
        )
    if not model.is_trained_:
        raise ValueError(
            "`model` has not been trained, so its cell embedding carries no information to classify. Train it first: "
            "`model = bf.tl.pretrain(adata)` or `model.train()`."
        )


def _check_run(*, max_epochs: int, batch_size: int, lr: float, validation_size: float) -> None:
    for name, value in {"max_epochs": max_epochs, "batch_size": batch_size}.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"`{name}` must be a positive whole number, not {value!r}.")
    if not (isinstance(lr, int | float) and np.isfinite(lr) and lr > 0):
        raise ValueError(f"`lr` must be a positive number or None, not {lr!r}.")
    if not (isinstance(validation_size, int | float) and 0 <= validation_size < 1):
        raise ValueError(f"`validation_size` must lie in [0, 1), not {validation_size!r}.")


def reference_classes(adata: AnnData, labels_key: str) -> tuple[np.ndarray, list[str]]:
    """The class of every reference cell (-1: unlabelled) and the class names, checked for training.

    Classes are the categories of a categorical column, in order, that label at least one cell;
    the sorted distinct values (as text) of any other column.
    """
    if labels_key not in adata.obs.columns:
        raise KeyError(
            f"`labels_key={labels_key!r}` is not a column of `adata.obs` (columns: {shown(adata.obs.columns)})."
            f"{did_you_mean(labels_key, adata.obs.columns)}"
        )
    column = adata.obs[labels_key]
    known = column.notna().to_numpy()
    if isinstance(column.dtype, pd.CategoricalDtype):
        present = set(column[known].astype(str))
        classes = [str(c) for c in column.cat.categories if str(c) in present]
    else:
        classes = sorted(set(column[known].astype(str)))
    codes = np.full(adata.n_obs, -1, dtype=np.int64)
    codes[known] = pd.Categorical(column[known].astype(str), categories=classes).codes
    if len(classes) < 2:
        raise ValueError(
            f"`adata.obs[{labels_key!r}]` labels {len(classes)} class(es) ({shown(classes)}), and a classifier needs "
            "at least two. Pass a `labels_key` with two or more cell types."
        )
    counts = np.bincount(codes[known], minlength=len(classes))
    rare = [f"{c!r} ({n})" for c, n in zip(classes, counts, strict=True) if n < MIN_CELLS_PER_CLASS]
    if rare:
        raise ValueError(
            f"`adata.obs[{labels_key!r}]` has classes with fewer than {MIN_CELLS_PER_CLASS} labelled cells: "
            f"{', '.join(rare)}. A class needs cells to learn from and to validate on. Merge them into a broader "
            f"type, or leave them unlabelled: `adata.obs[{labels_key!r}] = "
            f"adata.obs[{labels_key!r}].mask(adata.obs[{labels_key!r}].isin([...]))`."
        )
    return codes, classes


def _validation_mask(codes: np.ndarray, n_classes: int, validation_size: float, seed: int) -> np.ndarray | None:
    """Stratified held-out cells among the labelled ones (True = validation), or ``None``."""
    if validation_size == 0:
        return None
    n_validation = max(int(np.ceil(validation_size * codes.size)), n_classes)
    if codes.size - n_validation < n_classes:
        raise ValueError(
            f"The reference has {codes.size} labelled cells for {n_classes} classes: too few to hold "
            f"{validation_size:.0%} out for validation. Pass `validation_size=0`."
        )
    _, held_out = train_test_split(np.arange(codes.size), test_size=n_validation, random_state=seed, stratify=codes)
    mask = np.zeros(codes.size, dtype=bool)
    mask[held_out] = True
    return mask


def _softmax(head: torch.nn.Module, cls: np.ndarray | torch.Tensor) -> np.ndarray:
    """Class probabilities of CLS states, computed in fp32 on the CPU."""
    head = head.float().cpu()
    with torch.inference_mode():
        return head(torch.as_tensor(cls).float().cpu()).softmax(dim=1).numpy()


def _binned(query: Query, indices, batch_size) -> sparse.csr_matrix:
    """Binned cells as the model reads them (model genes, model binning), gathered as one sparse matrix."""
    batches = query.batches(indices, batch_size=batch_size)
    return sparse.vstack([sparse.csr_matrix(bins.cpu().numpy()) for bins in batches], format="csr")


@torch.inference_mode()
def _encoded(encoder, model: BioFormer, query: Query, batch_size) -> torch.Tensor:
    """CLS states of every cell of the query from a fine-tuned copy of the model's network."""
    encoder = encoder.to(model.device).eval()
    chunks = []
    with model.inference_context():
        for bins in query.batches(batch_size=batch_size):
            chunks.append(encoder.embed(bins).float().cpu())
    return torch.cat(chunks)
