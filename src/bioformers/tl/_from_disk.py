"""``bf.tl.pretrain`` of AnnData read from disk: backed files, or several AnnData with different genes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._keys import Keys
from .._logging import seed as quiet_seed
from .._validation import warn_genes_without_counts
from ..data._corpus import StreamedCells, StreamingDataModule, category_codes, count_statistics
from ..data._stream import check_row_access
from ..model.base._setup import text_columns
from ..pp import bin as bin_values
from ..pp._genes import align_genes
from ..pp._tokens import BINNING_ARGS, bin_matrix
from ._pretrain_results import write_results

#: Cells the count decoder of a model trained from disk is fitted on after training (a random sample).
COUNT_FIT_CELLS = 20_000


def check_corpus(sources: list, *, copy: bool, init) -> None:
    """Raise unless ``sources`` (``pretrain``'s ``adata`` given as a list) can be trained on together."""
    if not sources or not all(isinstance(source, AnnData) for source in sources):
        raise TypeError(
            "`adata` must be an AnnData or a non-empty list of AnnData (e.g. `[anndata.read_h5ad(path, backed='r') "
            "for path in paths]`)."
        )
    if copy:
        raise ValueError("`copy=True` applies to one AnnData in memory; several AnnData get their results in place.")
    if init is not None:
        raise ValueError("Fine-tuning (`init=`) reads one AnnData in memory, not a list of them.")


def pretrain_from_disk(
    sources: list[AnnData],
    *,
    genes: Sequence[str] | None,
    matching: dict,
    model_cls: type,
    layer: str | None,
    batch_key: str | None,
    labels_key: str | None,
    binning: str,
    n_bins: int | None,
    network: dict,
    params: dict,
    max_epochs: int | None,
    batch_size: int,
    lr: float,
    seed: int,
    chunk_size: int,
    key_added: str,
    train_kwargs: dict,
):
    """``pretrain`` of backed AnnData (one or several): cells read a chunk at a time, binned on the fly, every epoch.

    Memory holds one buffer of chunks, the obs columns and the model, whatever the number of cells.
    One pass over the counts first checks them and finds the binning scale; the model is built from
    an scvi-tools registry (no AnnData in memory) and trains on a :class:`~bioformers.data.StreamingDataModule`.
    Several AnnData share the model's genes (``genes``, or all of theirs), each matched by name.
    """
    keys = Keys(key_added)
    if layer is not None:
        raise ValueError(
            "A backed AnnData keeps only `X` on disk (its layers are read into memory), so training from disk reads "
            "the counts in `X`. Write the counts as `X` of the file, or load the AnnData into memory."
        )
    if binning not in ("value", "segment"):
        raise ValueError(
            f"Training from disk bins cells as it reads them, with `binning='value'` or 'segment', not {binning!r} "
            "(rank tokens need every gene's median over all cells first). Load the AnnData into memory for rank tokens."
        )
    split = sorted(set(train_kwargs) & {"train_size", "validation_size", "datamodule"})
    if split:
        raise ValueError(
            f"{split} cannot apply when training from disk: every cell is read, streamed by bioformers' own data "
            "module, and no validation cells are held out."
        )
    for i, source in enumerate(sources):
        check_row_access(source.X, "adata.X" if len(sources) == 1 else f"adata[{i}].X")
    vocabulary = _vocabulary(sources, genes, matching["gene_symbols"])
    alignments = [align_genes(source, vocabulary, **matching) for source in sources]
    for alignment in alignments:
        alignment.report()
    n_obs = sum(source.n_obs for source in sources)
    logg.info(f"reading {n_obs:,} cells from disk to check the counts and find the binning scale")
    stats = count_statistics(sources, genes=alignments, chunk_size=chunk_size, require_integer=binning == "value")
    warn_genes_without_counts(stats["cells_per_gene"][None, :], where="the cells read")

    quiet_seed(seed)
    columns = {
        key: sorted(set().union(*(source.obs[key].astype(str).unique() for source in sources)))
        for key in (batch_key, labels_key)
        if key is not None
    }
    # each column's categories (of all AnnData) and every cell's code of them
    coded = {key: (categories, _codes(sources, key, categories)) for key, categories in columns.items()}
    counts_scale = binning == "value"
    counts = counts_scale and (network.get("count_weight", 0) > 0 or network.get("view_weight", 0) > 0)
    cells = StreamedCells(
        sources,
        binning={"method": binning, "n_bins": n_bins, "target_sum": stats["target_sum"] if counts_scale else None},
        genes=alignments,
        batch_codes=coded[batch_key][1] if batch_key else None,
        label_codes=coded[labels_key][1] if labels_key else None,
        batch_size=batch_size,
        chunk_size=chunk_size,
        seed=seed,
    )
    sample = _registered_sample(
        cells, vocabulary, model_cls, keys, columns=coded, batch_key=batch_key, labels_key=labels_key, counts=counts
    )
    registry = model_cls._get_most_recent_anndata_manager(sample, required=True).registry
    model = model_cls(registry=registry, n_bins=_n_tokens(sample.uns[keys.binned]["params"], stats), **network)
    model_cls._setup_adata_manager_store.pop(sample.uns["_scvi_uuid"], None)  # the sample served its purpose
    model.binning_ = dict(sample.uns[keys.binned]["params"])
    cells.binning = {k: model.binning_[k] for k in BINNING_ARGS if k in model.binning_}  # the record, in full
    model.gene_table_ = _gene_table(sources, alignments, vocabulary)
    if getattr(model.module, "count_head", None) is not None:
        model.module.start_count_decoder(stats["mean_shares"])
    model.train(
        max_epochs=max_epochs, batch_size=batch_size, lr=lr, datamodule=StreamingDataModule(cells), **train_kwargs
    )
    if getattr(model.module, "count_head", None) is not None and model.has_counts:
        chosen = np.sort(np.random.default_rng(seed).choice(n_obs, size=min(n_obs, COUNT_FIT_CELLS), replace=False))
        model.fit_count_decoder(_cells_in_memory(cells, chosen, vocabulary, coded))
    params = {"layer": layer, "batch_key": batch_key, "labels_key": labels_key, **params, "chunk_size": chunk_size}
    params |= {"batch_size": batch_size, "lr": lr, "seed": seed, "n_anndata": len(sources)}
    if not model.is_global_zero:
        logg.info("not global rank 0 of a distributed run: trained, nothing written here")
        return model
    for source, alignment in zip(sources, alignments, strict=True):
        write_results(source, model, keys, None, params, copy=False, cells=alignment)
    return model


def _vocabulary(sources: list[AnnData], genes: Sequence[str] | None, gene_symbols: str | None) -> np.ndarray:
    """The model's genes: ``genes``, or every gene of the AnnData in order of first appearance (checked)."""
    if genes is None:
        names = [source.var_names if gene_symbols is None else source.var[gene_symbols] for source in sources]
        return np.asarray(list(dict.fromkeys(str(g) for column in names for g in column)))
    vocabulary = np.asarray([str(g) for g in genes])
    if vocabulary.size == 0 or np.unique(vocabulary).size != vocabulary.size:
        raise ValueError("`genes` must name the model's genes, each once.")
    return vocabulary


def _codes(sources: list[AnnData], key: str, categories: list[str]) -> np.ndarray:
    """Every cell's code of a column's categories (shared by all AnnData), the AnnData one after the other."""
    return np.concatenate([category_codes(source.obs[key], categories) for source in sources])


def _gene_table(sources: list[AnnData], alignments: list, vocabulary: np.ndarray) -> pd.DataFrame:
    """The text columns of the AnnData's ``var`` for the model's genes, from the first AnnData that has each gene."""
    table = pd.DataFrame(index=pd.Index(vocabulary))
    for source, alignment in zip(sources, alignments, strict=True):
        found = alignment.columns >= 0
        rows = source.var.iloc[alignment.columns[found]][text_columns(source.var)].astype(str)
        table = table.combine_first(rows.set_axis(vocabulary[found]))
    return table.reindex(vocabulary)


def _cells_in_memory(cells: StreamedCells, chosen: np.ndarray, vocabulary: np.ndarray, columns: dict) -> AnnData:
    """Some cells read from disk into an AnnData in the model's genes: raw counts and the model's columns.

    ``columns``: each column's categories and every cell's codes, ``{key: (categories, codes)}``.
    """
    counts, _ = cells.read(chosen)
    obs = pd.DataFrame(
        {
            key: pd.Categorical.from_codes(codes[chosen], categories=categories)
            for key, (categories, codes) in columns.items()
        },
        index=pd.Index(chosen.astype(str)),
    )
    return AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(vocabulary)))


def _registered_sample(
    cells: StreamedCells,
    vocabulary: np.ndarray,
    model_cls: type,
    keys: Keys,
    *,
    columns: dict,
    batch_key: str | None,
    labels_key: str | None,
    counts: bool,
) -> AnnData:
    """The first cells, binned on the whole data's scale and set up as the model will be: its registry's source.

    Columns keep every category of all cells, so the registry knows every batch and label.
    """
    sample = _cells_in_memory(cells, np.arange(min(cells.n_obs, 256)), vocabulary, columns)
    bin_values(sample, **cells.binning, key_added=keys.base)  # method, n_bins, target_sum: the whole data's
    model_cls.setup_anndata(sample, layer=keys.binned, batch_key=batch_key, labels_key=labels_key, counts=counts)
    return sample


def _n_tokens(record: dict, stats: dict) -> int:
    """The bin vocabulary of all cells without binning them all: the largest bin they have, plus 1.

    Binning is monotone in a value's share of its cell's total, so the largest share (from the pass over
    the counts) times ``target_sum`` gets the largest bin: the vocabulary binning in memory would give.
    """
    if record["method"] == "segment":
        return int(record["n_bins"]) + 1  # bf.pp.bin records the default it used
    args = {k: record[k] for k in ("n_bins", "cutoff", "bins_per_octave") if record.get(k) is not None}
    largest = sparse.csr_matrix([[stats["largest_share"] * record["target_sum"]]])
    bins, _ = bin_matrix(largest, method="value", normalize=False, **args)
    return int(bins.max()) + 1
