"""``bf.tl.pretrain`` and ``bf.tl.embed``: train in place, write embeddings into the AnnData."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Literal

from anndata import AnnData
from scanpy import logging as logg

from .._docs import (
    DOC_KEY_ADDED,
    DOC_MASK_RATIO,
    DOC_MAX_SEQ_LEN,
    DOC_MINIBATCH,
    DOC_N_HEADS,
    DOC_N_HIDDEN,
    DOC_N_LAYERS,
    DOC_NONZERO_RATIO,
    DOC_QUERY_TOOL,
    DOC_VALUE_ENCODER,
    doc_params,
)
from .._keys import DEFAULT_KEY, Keys
from .._logging import seed as quiet_seed
from .._private import binned_from, private_anndata
from .._validation import (
    check_anndata,
    check_batch_size,
    check_counts,
    check_obs_key,
    check_train_kwargs,
    get_matrix,
    matrix_name,
    warn_genes_without_counts,
)
from ..data._stream import DEFAULT_CHUNK_SIZE
from ..model import BioFormer, BioFormerDecoder
from ..module import check_module_arguments
from ..pp import bin as bin_values
from ..pp import rank as rank_values
from ..pp._genes import DEFAULT_MIN_GENE_COVERAGE
from ..pp._rank import DEFAULT_N_RANKS
from ._fine_tune import KEPT_BY_INIT, fine_tune
from ._from_disk import check_corpus, pretrain_from_disk
from ._pretrain_results import write_results

#: The model class of each ``architecture``.
MODEL_CLASSES = {"encoder": BioFormer, "decoder": BioFormerDecoder}


@doc_params(
    n_layers=DOC_N_LAYERS,
    n_heads=DOC_N_HEADS,
    n_hidden=DOC_N_HIDDEN,
    max_seq_len=DOC_MAX_SEQ_LEN,
    value_encoder=DOC_VALUE_ENCODER,
    batch_size=DOC_MINIBATCH,
    mask_ratio=DOC_MASK_RATIO,
    nonzero_ratio=DOC_NONZERO_RATIO,
    key_added=DOC_KEY_ADDED,
)
def pretrain(
    adata: AnnData | Sequence[AnnData],
    *,
    layer: str | None = None,
    init: BioFormer | BioFormerDecoder | None = None,
    genes: Sequence[str] | None = None,
    gene_symbols: str | None = None,
    min_gene_coverage: float = DEFAULT_MIN_GENE_COVERAGE,
    batch_key: str | None = None,
    labels_key: str | None = None,
    binning: Literal["value", "segment", "rank"] = "value",
    n_bins: int | None = None,
    n_layers: int = 4,
    n_heads: int = 2,
    n_hidden: int = 64,
    max_seq_len: int = 256,
    value_encoder: Literal["linear", "embedding"] = "embedding",
    architecture: Literal["encoder", "decoder"] = "encoder",
    batch_adversarial_weight: float = 3.0,
    count_weight: float = 10.0,
    view_weight: float = 0.0,
    max_epochs: int | None = None,
    batch_size: int = 64,
    lr: float | None = None,
    mask_ratio: float = 0.25,
    nonzero_ratio: float = 0.5,
    seed: int = 0,
    chunk_size: int | None = None,
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
    **train_kwargs,
) -> BioFormer | BioFormerDecoder | tuple[AnnData, BioFormer | BioFormerDecoder]:
    """Train a BioFormer on ``adata`` and write its cell embedding into it.

    Bins the counts if ``layers["<key_added>_binned"]`` is missing, registers the AnnData, trains,
    and embeds every cell. All of that happens on a private AnnData that shares ``adata``'s
    matrices (no copy; it is ``model.adata``); ``adata`` itself gets the results only at the end,
    so an error or a Ctrl-C part-way leaves it unchanged, and scvi-tools' bookkeeping
    (``uns['_scvi_uuid']``, ``obs['_scvi_batch']``, ...) never reaches it.

    Everything is checked first: cells with no counts raise an error (remove them with
    ``sc.pp.filter_cells(adata, min_counts=1)``); genes with no counts give a warning, as their
    embeddings stay untrained; ``batch_key`` and ``labels_key`` columns must have no missing values.

    Parameters
    ----------
    adata
        Raw counts, cells x genes (select genes first, e.g. 2,000 highly variable ones), in memory,
        or backed (``anndata.read_h5ad(path, backed="r")``, counts in ``X`` stored as CSR) for data
        larger than memory: then one pass over the file checks the counts and finds the binning scale,
        and training reads the cells from disk ``chunk_size`` at a time, binning them as it goes
        (memory holds a few chunks, not the data; no validation cells; the count decoder is fitted on
        20,000 random cells). Not a view: call ``.copy()`` on a subset first. A list of AnnData
        (backed or not, e.g. files with different genes) trains one model on all their cells, read
        from each as from a backed one; each gets its own results.
    layer
        Layer with the raw counts; ``None`` uses ``adata.X``.
    init
        A trained model to continue training on ``adata`` (fine-tuning), e.g. one pretrained on a
        large corpus and loaded with :meth:`bioformers.BioFormer.load`. Its genes, size, objective and
        binning are kept (arguments that would change them are refused): ``adata``'s genes are matched
        to the model's by name as for :func:`embed` (model genes ``adata`` lacks read as unexpressed;
        genes the model does not know are dropped, since no pretrained weight knows them and the model
        stays usable on everything it was used on) and binned on the model's scale. The returned model
        is a new one; ``init`` is not changed.
    genes
        For AnnData read from disk (backed, or a list): the model's genes, matched by name in each
        AnnData (genes an AnnData lacks read as unexpressed in its cells, others are not read);
        `None`: every gene of any of them, in order of first appearance. E.g. 2,000 highly variable
        genes of a file that holds all genes, without rewriting it.
    gene_symbols, min_gene_coverage
        With ``init``, or AnnData read from disk: the ``adata.var`` column with the model's gene names
        (`None`: ``var_names``), and the smallest fraction of the model's genes each AnnData must have,
        as for :func:`embed`.
    batch_key
        Column of ``adata.obs`` with batches (e.g. technologies). Each batch gets a learned token: the
        encoder's output heads read it, so batch effects are explained by the token rather than the
        cell embedding (batches of one cell type mix); the decoder is conditioned on it.
    labels_key
        Column of ``adata.obs`` with cell labels. The decoder is conditioned on them (so
        :func:`bioformers.tl.generate` can ask for a cell type); the encoder does not read them.
    binning
        Binning method of :func:`bioformers.pp.bin`, or ``"rank"`` for the Geneformer-style rank
        tokens of :func:`bioformers.pp.rank`.
    n_bins
        Passed to :func:`bioformers.pp.bin`; for ``"rank"``, the ``n_ranks`` of
        :func:`bioformers.pp.rank` (`None`: 255).
    {n_layers}
    {n_heads}
    {n_hidden}
    {max_seq_len}
    {value_encoder}
    architecture
        ``"encoder"`` (masked gene modelling, CLS embedding) or ``"decoder"`` (causal, next-gene
        objective over genes in descending order of value; generates cells with
        :func:`bioformers.tl.generate`). Picks the model class: :class:`bioformers.BioFormer` or
        :class:`bioformers.BioFormerDecoder`.
    batch_adversarial_weight
        Encoder with ``batch_key``: weight of an adversarial batch classifier on the embedding (0: off;
        see :class:`bioformers.BioFormer`).
    count_weight
        Encoder with value binning: weight of the count objective, a negative-binomial likelihood of
        the raw counts decoded from the cell embedding with the library size as a covariate (scVI's
        decoder); its decoder gives :func:`bioformers.tl.predict` (see :class:`bioformers.BioFormer`). 0: off.
    view_weight
        Encoder with value binning: weight of the two-view objective on counts thinned to a random depth
        (see :class:`bioformers.BioFormer`; off by default).
    max_epochs
        Passes over the data; ``None`` picks 5 to 30 by data size.
    {batch_size}
    lr
        Peak learning rate; ``None``: 1e-3, or 1e-4 when fine-tuning (``init``).
    {mask_ratio}
    {nonzero_ratio}
    seed
        Seed of every random number generator (training is repeatable on the same machine).
    chunk_size
        Backed ``adata`` only: contiguous cells read from disk at a time (`None`: 4,096); each epoch
        reads the chunks in a new random order and shuffles the cells of 8 chunks together.
    {key_added}
    copy
        Write the results into a copy of ``adata`` and return it with the model, ``(adata, model)``;
        ``adata`` itself is left as it was.
    **train_kwargs
        Passed to :meth:`bioformers.BioFormer.train` (e.g. ``accelerator``, ``devices``, ``precision``,
        ``strategy="ddp"``, ``train_size``; see ``docs/scaling.md``) and on to Lightning's
        :class:`~lightning.pytorch.Trainer`. Any other name is refused before anything runs, with
        the list of valid ones.

    Returns
    -------
    :class:`~bioformers.BioFormer` or :class:`~bioformers.BioFormerDecoder`
        The trained model (the decoder for ``architecture="decoder"``); with ``copy=True``, the
        tuple ``(adata, model)`` of the copy holding the results and the model. Sets the following
        fields of ``adata`` (``bioformers`` in the names is ``key_added``):

        ``adata.obsm['X_bioformers']`` : :class:`~numpy.ndarray` ``float32`` (n_obs, n_hidden)
            The CLS cell embedding.
        ``adata.layers['bioformers_binned']``, ``adata.uns['bioformers_binned']``
            The value tokens and their record, as :func:`bioformers.pp.bin` (or, for ``"rank"``,
            :func:`bioformers.pp.rank`) writes them; only when it binned an AnnData in memory with the
            model's genes (a backed one keeps its results in memory until ``adata.write()``, without
            bins; the model holds the binning record, ``model.binning_``).
        ``adata.uns['bioformers']`` : :class:`dict`
            ``params`` (the arguments, the number of epochs trained and the model class) and
            ``history`` (``train_loss`` and ``validation_loss``, one value per epoch).

        In a distributed run (``strategy="ddp"``, ``devices=N``) every process trains on its share
        of the cells and returns the trained model, but only global rank 0 embeds and writes the
        embedding and record; elsewhere ``adata`` keeps only the binned layer (check
        ``model.is_global_zero``).

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> adata.obsm["X_bioformers"].shape
    (200, 16)
    >>> adata.uns["bioformers"]["params"]["max_epochs"], len(adata.uns["bioformers"]["history"]["train_loss"])
    (1, 1)
    """
    keys = Keys(key_added)
    sources = [adata] if isinstance(adata, AnnData) else list(adata)
    streamed = len(sources) != 1 or sources[0].isbacked or not isinstance(adata, AnnData)
    if not isinstance(adata, AnnData):
        check_corpus(sources, copy=copy, init=init)
    for source in sources:
        check_anndata(source, copy=copy, backed=True)
    if streamed and init is not None:
        raise ValueError(
            "Fine-tuning (`init=`) reads the AnnData in memory: load it with `adata = adata.to_memory()`, or a subset "
            "of its cells with `adata[cells].to_memory()`."
        )
    matching = gene_symbols is not None or min_gene_coverage != DEFAULT_MIN_GENE_COVERAGE
    if init is None and not streamed and (matching or genes is not None):
        raise ValueError(
            "`genes`, `gene_symbols` and `min_gene_coverage` choose and match the model's genes in AnnData read from "
            "disk (backed, or several) and with `init=`. For one AnnData in memory, subset it: "
            "`adata[:, genes].copy()`."
        )
    if genes is not None and init is not None:
        raise ValueError("With `init=`, the model's genes are its own: leave `genes` out.")
    if init is not None:
        return fine_tune(
            adata,
            init,
            genes={"gene_symbols": gene_symbols, "min_gene_coverage": min_gene_coverage},
            layer=layer,
            batch_key=batch_key,
            labels_key=labels_key,
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=1e-4 if lr is None else lr,
            seed=seed,
            key_added=key_added,
            copy=copy,
            kept={name: value for name, value in locals().items() if name in KEPT_BY_INIT},
            defaults={name: inspect.signature(pretrain).parameters[name].default for name in KEPT_BY_INIT},
            tool=pretrain,
            train_kwargs=train_kwargs,
        )
    lr = 1e-3 if lr is None else lr
    if architecture not in MODEL_CLASSES:
        raise ValueError(f"`architecture` must be 'encoder' or 'decoder', not {architecture!r}.")
    check_train_kwargs(train_kwargs, tool=pretrain, train=MODEL_CLASSES[architecture].train, where="`bf.tl.pretrain`")
    for source in sources:
        check_obs_key(source, batch_key, argument="batch_key")
        check_obs_key(source, labels_key, argument="labels_key")
    must_bin = streamed or keys.binned not in adata.layers
    if must_bin:
        if binning not in ("value", "segment", "rank"):
            raise ValueError(f"`binning` must be 'value', 'segment' or 'rank', not {binning!r}.")
        if not streamed:  # cells read from disk are checked as they are read, before training
            check_counts(get_matrix(adata, layer), where=matrix_name(layer), require_integer=binning == "value")
    for name, weight in {
        "batch_adversarial_weight": batch_adversarial_weight,
        "count_weight": count_weight,
        "view_weight": view_weight,
    }.items():
        if weight < 0:
            raise ValueError(f"`{name}` must be >= 0, not {weight}.")
    sizes = {"n_hidden": n_hidden, "n_layers": n_layers, "n_heads": n_heads, "max_seq_len": max_seq_len}
    sizes["value_encoder"] = value_encoder
    objective = {"mask_ratio": mask_ratio, "nonzero_ratio": nonzero_ratio}
    check_module_arguments(**sizes, **objective)
    if architecture == "encoder":  # the decoder's objective (next gene) has no masking
        objective["batch_adversarial_weight"] = batch_adversarial_weight
        objective["count_weight"] = count_weight
        objective["view_weight"] = view_weight
    else:
        objective = {}
    check_batch_size(sum(source.n_obs for source in sources), batch_size)
    if chunk_size is not None and (not streamed or chunk_size < 1):
        raise ValueError(
            f"`chunk_size` is a positive number of cells read at a time from a backed AnnData, not {chunk_size}."
        )
    if streamed:
        return pretrain_from_disk(
            sources,
            genes=genes,
            matching={"gene_symbols": gene_symbols, "min_gene_coverage": min_gene_coverage},
            model_cls=MODEL_CLASSES[architecture],
            layer=layer,
            batch_key=batch_key,
            labels_key=labels_key,
            binning=binning,
            n_bins=n_bins,
            network=sizes | objective,
            params={"architecture": architecture, "binning": binning, "n_bins": n_bins, **sizes, **objective},
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
            key_added=key_added,
            train_kwargs=train_kwargs,
        )

    if copy:
        adata = adata.copy()
    quiet_seed(seed)
    # the layer existing bins were made from holds the counts the count objective reads
    source = None if must_bin else binned_from(adata, keys.binned)
    work = private_anndata(adata, obs=[batch_key, labels_key], layers=[keys.binned, layer, source], uns=[keys.binned])
    if must_bin and binning == "rank":
        rank_values(work, n_ranks=DEFAULT_N_RANKS if n_bins is None else n_bins, layer=layer, key_added=key_added)
    elif must_bin:
        bin_values(work, method=binning, n_bins=n_bins, layer=layer, key_added=key_added)
    warn_genes_without_counts(work.layers[keys.binned], where=matrix_name(layer if must_bin else keys.binned))
    model_cls = MODEL_CLASSES[architecture]
    counts = (
        architecture == "encoder"
        and (count_weight > 0 or view_weight > 0)
        and work.uns[keys.binned]["params"].get("method") == "value"
    )
    model_cls.setup_anndata(work, layer=keys.binned, batch_key=batch_key, labels_key=labels_key, counts=counts)
    model = model_cls(work, **sizes, **objective)
    model.train(max_epochs=max_epochs, batch_size=batch_size, lr=lr, **train_kwargs)
    params = {
        "layer": layer,
        "batch_key": batch_key,
        "labels_key": labels_key,
        "binning": binning,
        "n_bins": n_bins,
        **sizes,
        "mask_ratio": mask_ratio,
        "nonzero_ratio": nonzero_ratio,
        "architecture": architecture,
        "batch_adversarial_weight": batch_adversarial_weight,
        "count_weight": count_weight,
        "view_weight": view_weight,
    }
    binned = (work.layers[keys.binned], work.uns[keys.binned]) if must_bin else None
    return write_results(adata, model, keys, binned, params | {"batch_size": batch_size, "lr": lr, "seed": seed}, copy)


@doc_params(**DOC_QUERY_TOOL)
def embed(
    adata: AnnData,
    model: BioFormer,
    *,
    layer: str | None = None,
    gene_symbols: str | None = None,
    min_gene_coverage: float = DEFAULT_MIN_GENE_COVERAGE,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Write the model's cell embedding for ``adata`` (e.g. a query dataset).

    Bins the counts with the model's binning settings when ``layers["<key_added>_binned"]`` is
    missing (into the layer the model was trained on, ``"bioformers_binned"`` by default), on the
    training data's scale (value binning scales every cell to the training data's ``target_sum``).

    A backed AnnData (``anndata.read_h5ad(path, backed="r")``) is streamed instead: cells are read
    ``chunk_size`` at a time, binned and embedded, and only the embedding is added (in memory; the
    file is not changed until ``adata.write()``). Memory then stays flat in the number of cells,
    apart from the result. A cell's embedding is the same streamed or not.

    Everything is checked before anything is written, and results are written only once all are
    computed. Cells with no counts raise an error; genes with no counts are fine.

    The query's genes are matched to the model's by name, never by position
    (:meth:`bioformers.BioFormer.align_genes`): through ``var_names`` or the ``gene_symbols``
    column, Ensembl IDs without their version suffix. Genes the model does not know are ignored.
    Model genes the query lacks read as unexpressed (bin 0); a warning gives the coverage, and below
    ``min_gene_coverage`` the call is refused. Value binning scales each cell by its total over the
    model's genes found in the query: the sum the training data was scaled by (it had only those
    genes), so extra genes change nothing; missing genes make the rest of the cell look a little
    higher, by their share of its counts. A cell with counts only in genes the model does not know
    raises an error. With other genes than exactly the model's, in its order, no binned layer is
    written: the counts are rearranged and binned chunk by chunk, as for a backed AnnData (a binned
    layer the query already has is read as it is, rearranged the same way).

    Parameters
    ----------
    adata
        Cells x genes, raw counts; in memory or backed (not a view of a backed AnnData).
        {view}
    {model}
    {layer}
        ``adata.X`` is the only matrix a backed AnnData keeps on disk.
    {gene_matching}
    {batch_chunk_size}
    {key_added_copy}

    Returns
    -------
    {returns_copy}

        ``adata.obsm['X_bioformers']`` : :class:`~numpy.ndarray` ``float32`` (n_obs, n_hidden)
            The cell embedding.
        {binned_written}
            It bins only an AnnData in memory with exactly the model's genes, in the model's order.
            The layer is the one the model was trained on, whatever ``key_added``.

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
    check_anndata(adata, copy=copy, backed=True)
    genes = model.align_genes(adata, gene_symbols=gene_symbols, min_gene_coverage=min_gene_coverage)
    with model.prepare_query(adata, layer=layer, copy=copy, genes=genes) as query:
        embedding = model.get_latent_representation(
            query.adata, batch_size=batch_size, genes=genes, counts_layer=layer, chunk_size=chunk_size
        )
    adata = adata.copy() if copy else adata
    query.write_binning(adata)
    adata.obsm[keys.embedding] = embedding
    logg.info(f"added\n    'obsm[{keys.embedding!r}]', cell embeddings")
    return adata if copy else None
