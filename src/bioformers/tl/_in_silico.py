"""``bf.tl.in_silico_perturb``: delete or overexpress genes in the model's input, measure how cell embeddings move."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse
from scipy.stats import percentileofscore
from scvi.utils import track

from .._docs import DOC_BATCH_SIZE, DOC_BINNED_WRITTEN, DOC_LAYER, DOC_MODEL, DOC_VIEW, DOC_WRITES, doc_params
from .._keys import DEFAULT_KEY, Keys
from .._private import forget
from .._record import params_record
from .._validation import check_anndata, check_obs_key, did_you_mean, shown

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ..model import BioFormer

MODES = ("delete", "overexpress")
#: Perturbed cells embedded at a time: bounds the memory of the modified rows, whatever the number of genes.
CHUNK_SIZE = 4096
#: A random gene is drawn among the candidates within this expression frequency of its anchor gene, or
#: among the ``_MIN_WINDOW`` closest where fewer are that close (genes expressed in nearly every cell are rare).
_FREQUENCY_TOLERANCE = 0.05
_MIN_WINDOW = 5


@doc_params(
    **DOC_WRITES,
    view=DOC_VIEW,
    model=DOC_MODEL,
    layer=DOC_LAYER,
    batch_size=DOC_BATCH_SIZE,
    binned_written=DOC_BINNED_WRITTEN,
)
def in_silico_perturb(
    adata: ad.AnnData,
    model: BioFormer,
    genes: str | Sequence[str],
    *,
    mode: Literal["delete", "overexpress"] = "delete",
    groupby: str | None = None,
    groups: str | Sequence[str] | None = None,
    target: str | None = None,
    cells: np.ndarray | Sequence[bool] | None = None,
    n_random: int = 20,
    layer: str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
) -> ad.AnnData | None:
    """In-silico deletion or overexpression of genes: how far each cell's embedding moves, and whether toward a target.

    Geneformer's in-silico perturbation on the model's binned input. For each gene on its own, each
    chosen cell's binned row is changed in that gene only and the cell is embedded again with
    :meth:`bioformers.BioFormer.get_latent_representation`:

    * ``"delete"``: the gene's bin becomes 0. Only cells expressing the gene are perturbed; the
      others get NaN (not 0: nothing was changed, so there is no shift to report).
    * ``"overexpress"``: the gene's bin becomes the top token of the model's value vocabulary,
      ``model.module.n_bins - 1`` (the highest bin for value and segment binning; rank 1 for the
      rank tokens of :func:`bioformers.pp.rank`, where the other genes keep their tokens, so the
      gene shares the first rank with the cell's top gene rather than pushing every gene down one
      rank as Geneformer does). Every chosen cell is perturbed; a cell whose gene already holds
      that bin is unchanged and gets a shift of exactly 0.

    The shift of a cell is ``1 - cos(original, perturbed)`` of its embeddings, both computed here by
    the model (``obsm['X_<key_added>']`` is not read, as it may be stale). With ``target``, the
    target state is the centroid (mean original embedding) of the cells of group ``target`` of
    ``groupby``, and ``toward = cos(perturbed, centroid) - cos(original, centroid)``: positive when
    the perturbation moves the cell toward the target.

    Any change moves a cell somewhat; in a cell with more genes than the model's ``max_seq_len`` it
    also changes which genes the model samples into the sequence (sampling is seeded by the cell's
    own values). The **random-gene baseline** measures that floor: ``n_random`` genes (not among
    ``genes``), each drawn at random among the genes whose expression frequency (fraction of the
    chosen cells expressing it) lies within 0.05 of one of ``genes`` in turn (or among the 5 closest
    where fewer are that close), are perturbed the same way. Each gene's ``shift_z`` and
    ``shift_percentile`` place it among them; the pool is matched to ``genes`` as a set, so perturb
    genes of very different frequencies in separate calls when the comparison matters.

    Every check runs before anything is written, and results are written only once all are computed.
    A second call overwrites the results of the first (the gene columns are one call's genes);
    without ``target`` it also removes an earlier call's ``toward``.

    Parameters
    ----------
    adata
        Cells with exactly the model's genes, in the model's order, in memory; the model's binned
        layer (``"bioformers_binned"`` by default), or raw counts to bin like the training data.
        {view}
    {model}
    genes
        Gene(s) to perturb, one at a time: names of the model's genes.
    mode
        ``"delete"`` (bin 0) or ``"overexpress"`` (top bin).
    groupby
        Column of ``adata.obs`` with cell states (e.g. ``"cell_type"``), needed by ``groups`` and ``target``.
    groups
        Categories of ``groupby`` whose cells are perturbed. ``None``: every cell, or with ``target``,
        every cell outside the target group (one usually asks whether other cells move toward it).
    target
        A category of ``groupby``: the target state.
    cells
        Boolean mask over ``adata``'s cells: perturb only these (combined with ``groups``).
    n_random
        Random genes of matching expression frequency perturbed as a baseline; 0 turns it off.
    {layer}
    {batch_size}
    seed
        Seed of the random genes.
    {key_added_copy}

    Returns
    -------
    {returns_copy}

        ``adata.obsm['bioformers_in_silico_shift']`` : :class:`~pandas.DataFrame` ``float32`` (n_obs, n_genes)
            One column per perturbed gene: ``1 - cos`` of each cell's original and perturbed
            embedding, in [0, 2]; NaN where the cell was not perturbed.
        ``adata.obsm['bioformers_in_silico_toward']`` : :class:`~pandas.DataFrame` ``float32`` (n_obs, n_genes)
            With ``target``: change in cosine similarity to the target centroid, like the shift.
            Without ``target``, one left by an earlier call is removed.
        ``adata.uns['bioformers_in_silico']`` : :class:`dict`
            ``params``: the arguments, ``n_cells`` chosen, ``top_bin`` and the ``random_genes``.

            ``genes``: :class:`~pandas.DataFrame`, one row per gene, strongest effect first (by
            ``mean_toward`` with a target, else ``mean_shift``): ``n_cells`` perturbed (for
            overexpression every chosen cell, those already at the top bin included, with 0),
            ``frequency`` (fraction of the chosen cells expressing the gene), ``mean_shift``,
            ``median_shift``; with ``n_random``, ``random_mean_shift`` (mean over the random genes
            of their mean shift), ``shift_z`` and ``shift_percentile`` (0-100) of the gene's mean
            shift among the random genes'; with a target, ``mean_toward``, ``fraction_toward``
            (fraction of perturbed cells with ``toward > 0``) and with ``n_random``
            ``random_mean_toward``, ``random_fraction_toward``, ``toward_percentile``.

            ``random``: :class:`~pandas.DataFrame`, the same columns per random gene, plus
            ``matched_to``; only with ``n_random``.
        {binned_written}

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> bf.tl.in_silico_perturb(
    ...     adata, model, ["gene_1", "gene_2"], mode="overexpress", groupby="cell_type", target="type_1", n_random=5
    ... )
    >>> adata.obsm["bioformers_in_silico_shift"].shape
    (200, 2)
    >>> adata.uns["bioformers_in_silico"]["genes"].columns[:4].tolist()
    ['n_cells', 'frequency', 'mean_shift', 'median_shift']
    """
    keys = Keys(key_added)
    check_anndata(adata, copy=copy)
    if not getattr(model, "is_trained_", False):
        raise RuntimeError(
            "The model is not trained: its embeddings would be those of random weights. Train it first "
            "(`bf.tl.pretrain(adata)` or `model.train()`), or load a trained one with `bf.BioFormer.load`."
        )
    model.check_genes(adata)
    if mode not in MODES:
        raise ValueError(f"`mode` must be 'delete' or 'overexpress', not {mode!r}.{did_you_mean(mode, MODES)}")
    names = _check_genes(genes, model.genes_)
    if isinstance(n_random, bool) or not isinstance(n_random, int | np.integer) or n_random < 0:
        raise ValueError(f"`n_random` must be a whole number >= 0 (0: no random-gene baseline), not {n_random!r}.")
    chosen, target_cells, groups = _cells(adata, groupby=groupby, groups=groups, target=target, cells=cells)
    binned_layer = model.registry_["setup_args"]["layer"]
    top = int(model.module.n_bins) - 1
    value = 0 if mode == "delete" else top

    with model.prepare_query(adata, layer=layer, copy=copy) as query:
        work = query.adata
        binned = sparse.csr_matrix(work.layers[binned_layer])
        frequency = _frequency(binned[chosen])
        gene_index = pd.Index(model.genes_).get_indexer(names)
        random_index, matched_to = _random_genes(frequency, gene_index, n_random, mode=mode, seed=seed)
        if random_index.size < n_random:
            logg.warning(f"only {random_index.size} genes can serve as random genes (n_random={n_random})")
        all_genes = np.concatenate([gene_index, random_index])
        start = logg.info(
            f"perturbing ({mode}) {len(names)} gene(s) and {random_index.size} random gene(s) in {chosen.size} cells"
        )
        shift, toward = _shifts(
            model,
            work,
            binned,
            all_genes,
            chosen=chosen,
            target_cells=target_cells,
            value=value,
            binned_layer=binned_layer,
            batch_size=batch_size,
        )
        logg.info("    finished", time=start)

    table = _summary(shift, toward, frequency, all_genes, model.genes_, n_genes=len(names))
    random_table = table.iloc[len(names) :].copy()
    random_table["matched_to"] = [str(model.genes_[gene]) for gene in matched_to]
    table = _compare_with_random(table.iloc[: len(names)].copy(), random_table, with_target=target is not None)
    order = "mean_toward" if target is not None else "mean_shift"
    table = table.sort_values(order, ascending=False, na_position="last", kind="stable")
    record = {
        "params": params_record(
            genes=names,
            mode=mode,
            groupby=groupby,
            groups=groups,
            target=target,
            cells=None if cells is None else "boolean mask",
            n_cells=int(chosen.size),
            n_target_cells=None if target_cells is None else int(target_cells.size),
            n_random=n_random,
            random_genes=[str(g) for g in model.genes_[random_index]],
            top_bin=top,
            layer=layer,
            seed=seed,
            model=type(model).__name__,
        ),
        "genes": table,
    }
    if random_index.size:
        record["random"] = random_table

    adata = adata.copy() if copy else adata
    query.write_binning(adata)
    adata.obsm[keys.in_silico_shift] = pd.DataFrame(shift[:, : len(names)], index=adata.obs_names.copy(), columns=names)
    written = f"added\n    'obsm[{keys.in_silico_shift!r}]', embedding shift per cell and gene"
    if toward is not None:
        adata.obsm[keys.in_silico_toward] = pd.DataFrame(
            toward[:, : len(names)], index=adata.obs_names.copy(), columns=names
        )
        written += f"\n    'obsm[{keys.in_silico_toward!r}]', change in cosine similarity to the target"
    else:
        # a toward from an earlier call would describe other genes
        adata.obsm.pop(keys.in_silico_toward, None)
    adata.uns[keys.in_silico] = record
    logg.info(written + f"\n    'uns[{keys.in_silico!r}]', summary per gene")
    return adata if copy else None


def _check_genes(genes: str | Sequence[str], model_genes: np.ndarray) -> list[str]:
    """The requested genes as a list without repeats; a KeyError naming unknown ones, with the closest model gene."""
    names = [genes] if isinstance(genes, str) else list(genes) if genes is not None else []
    if not names:
        raise ValueError("`genes` is empty: name at least one of the model's genes to perturb.")
    if not all(isinstance(name, str) for name in names):
        raise TypeError(f"`genes` must hold gene names (strings), not {[type(n).__name__ for n in names][:3]}.")
    known = set(model_genes)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise KeyError(
            f"Gene(s) {shown(unknown, 5)} are not among the model's {model_genes.size} genes "
            f"(e.g. {shown(model_genes, 3)}).{did_you_mean(unknown[0], model_genes)} Only the model's genes can be "
            "perturbed in its input."
        )
    return list(dict.fromkeys(names))


def _cells(
    adata: ad.AnnData,
    *,
    groupby: str | None,
    groups: str | Sequence[str] | None,
    target: str | None,
    cells: np.ndarray | Sequence[bool] | None,
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Indices of the cells to perturb and of the target cells (``None`` without a target), and ``groups`` as a list."""
    if (groups is not None or target is not None) and groupby is None:
        raise ValueError(
            "`groups` and `target` name categories of an `adata.obs` column: pass `groupby=` too, "
            "e.g. `groupby='cell_type'`."
        )
    labels = None
    if groupby is not None:
        check_obs_key(adata, groupby, argument="groupby")
        labels = adata.obs[groupby].astype(str).to_numpy()
        present = pd.unique(labels)
        for name, values in {"groups": [groups] if isinstance(groups, str) else groups, "target": [target]}.items():
            for value in values if values is not None else []:
                if value is not None and str(value) not in set(present):
                    raise KeyError(
                        f"`{name}`: {value!r} is not a category of `adata.obs[{groupby!r}]` with cells "
                        f"(categories: {shown(sorted(present))}).{did_you_mean(value, present)}"
                    )
    groups = [groups] if isinstance(groups, str) else None if groups is None else [str(g) for g in groups]
    chosen = np.ones(adata.n_obs, dtype=bool)
    if cells is not None:
        mask = np.asarray(cells)
        if mask.dtype != bool or mask.shape != (adata.n_obs,):
            raise ValueError(
                f"`cells` must be a boolean mask with one entry per cell ({adata.n_obs}), not an array of dtype "
                f"{mask.dtype} and shape {mask.shape}. E.g. `cells=(adata.obs['cell_type'] == 'B cells').to_numpy()`."
            )
        chosen &= mask
    if groups is not None:
        chosen &= np.isin(labels, groups)
    elif target is not None:
        chosen &= labels != str(target)
    if not chosen.any():
        raise ValueError(
            "No cell is left to perturb: `cells`, `groups` (and, without `groups`, the cells outside `target`) "
            "select none. Widen the selection."
        )
    target_cells = np.flatnonzero(labels == str(target)) if target is not None else None
    return np.flatnonzero(chosen), target_cells, groups


def _frequency(binned: sparse.csr_matrix) -> np.ndarray:
    """Fraction of the rows in which each gene is expressed (nonzero bin)."""
    expressed = binned.indices[binned.data != 0]
    return np.bincount(expressed, minlength=binned.shape[1]) / max(binned.shape[0], 1)


def _random_genes(
    frequency: np.ndarray, genes: np.ndarray, n_random: int, *, mode: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random genes, each drawn among the candidates closest in ``frequency`` to one requested gene in turn.

    Returns the random genes and the requested gene each was matched to. Candidates are the other genes;
    for deletion only those expressed in some chosen cell (the others could not be deleted anywhere).
    """
    rng = np.random.default_rng(seed)
    candidates = np.setdiff1d(np.arange(frequency.size), genes)
    if mode == "delete":
        candidates = candidates[frequency[candidates] > 0]
    drawn, anchors = [], []
    for i in range(min(n_random, candidates.size)):
        anchor = genes[i % genes.size]
        distance = np.abs(frequency[candidates] - frequency[anchor])
        kth = np.sort(distance)[min(_MIN_WINDOW, distance.size) - 1]
        pick = rng.choice(np.flatnonzero(distance <= max(_FREQUENCY_TOLERANCE, kth)))
        drawn.append(candidates[pick])
        anchors.append(anchor)
        candidates = np.delete(candidates, pick)
    return np.asarray(drawn, dtype=int), np.asarray(anchors, dtype=int)


def _shifts(
    model: BioFormer,
    work: ad.AnnData,
    binned: sparse.csr_matrix,
    genes: np.ndarray,
    *,
    chosen: np.ndarray,
    target_cells: np.ndarray | None,
    value: int,
    binned_layer: str,
    batch_size: int | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Shift and (with target cells) toward, ``(n_obs, genes)``, of setting each gene to ``value`` in the chosen cells.

    NaN where a cell was not perturbed: not chosen, or (deletion) not expressing the gene.
    """
    reference = np.union1d(chosen, target_cells) if target_cells is not None else chosen
    embedded = _embed(model, work, indices=reference, batch_size=batch_size)
    original = np.full((work.n_obs, embedded.shape[1]), np.nan, dtype=np.float32)
    original[reference] = embedded
    centroid = original[target_cells].mean(axis=0, keepdims=True) if target_cells is not None else None

    shift = np.full((work.n_obs, genes.size), np.nan, dtype=np.float32)
    toward = np.full_like(shift, np.nan) if centroid is not None else None
    jobs = []
    by_gene = binned[chosen].tocsc()
    for column, gene in enumerate(genes):
        changed = by_gene[:, gene].toarray().ravel() != value
        jobs.append((column, chosen[changed]))
        # a cell whose gene already holds the new value is unchanged: exactly 0 for overexpression
        # (for deletion these are the cells not expressing the gene, which stay NaN)
        if value:
            shift[chosen[~changed], column] = 0.0
            if toward is not None:
                toward[chosen[~changed], column] = 0.0
    for rows, columns, embedding in _embed_perturbed(
        model, work, binned, jobs, genes, value, binned_layer=binned_layer, batch_size=batch_size
    ):
        shift[rows, columns] = np.clip(1.0 - _cosine(original[rows], embedding), 0.0, 2.0)
        if toward is not None:
            toward[rows, columns] = _cosine(embedding, centroid) - _cosine(original[rows], centroid)
    return shift, toward


def _set_gene(rows: sparse.csr_matrix, gene: int, value: int) -> sparse.csr_matrix:
    """``rows`` with column ``gene`` set to ``value`` in every row, staying sparse (0 removes the entries)."""
    rows = rows.copy()
    rows.data[rows.indices == gene] = 0
    rows.eliminate_zeros()
    if value:
        n = rows.shape[0]
        column = sparse.csr_matrix(
            (np.full(n, value, dtype=rows.dtype), (np.arange(n), np.full(n, gene))), shape=rows.shape
        )
        rows = rows + column
    return rows


def _embed_perturbed(
    model: BioFormer,
    work: ad.AnnData,
    binned: sparse.csr_matrix,
    jobs: list[tuple[int, np.ndarray]],
    genes: np.ndarray,
    value: int,
    *,
    binned_layer: str,
    batch_size: int | None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Embed the perturbed rows of all genes, up to :data:`CHUNK_SIZE` rows at a time.

    Yields the cells, the result column of each row and the perturbed embeddings. Each chunk is a
    private AnnData holding only the modified rows (with the columns the model is set up with), so
    the caller's binned layer is never changed.
    """
    pieces = [
        (column, cells[start : start + CHUNK_SIZE])
        for column, cells in jobs
        for start in range(0, cells.size, CHUNK_SIZE)
    ]
    chunks, current, size = [], [], 0
    for column, cells in pieces:
        if size + cells.size > CHUNK_SIZE and current:
            chunks.append(current)
            current, size = [], 0
        current.append((column, cells))
        size += cells.size
    if current:
        chunks.append(current)
    for chunk in track(chunks, description="in-silico perturbation", disable=len(chunks) < 2):
        rows = np.concatenate([cells for _, cells in chunk])
        columns = np.concatenate([np.full(cells.size, column) for column, cells in chunk])
        modified = sparse.vstack([_set_gene(binned[cells], genes[column], value) for column, cells in chunk]).tocsr()
        obs = work.obs.iloc[rows].reset_index(drop=True)
        obs.index = obs.index.astype(str)
        perturbed = ad.AnnData(obs=obs, var=pd.DataFrame(index=work.var_names.copy()), layers={binned_layer: modified})
        try:
            embedding = _embed(model, perturbed, batch_size=batch_size)
        finally:
            forget(model, perturbed)
        yield rows, columns, embedding


def _embed(model: BioFormer, adata: ad.AnnData, **kwargs) -> np.ndarray:
    """``model.get_latent_representation(adata, **kwargs)``, without scvi-tools' warning about small categories.

    scvi-tools registers every AnnData it embeds and warns when a category (here of a chunk or a
    few chosen cells) has fewer than 3 cells, which matters for training only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Category .* has fewer than 3 cells", category=UserWarning)
        return model.get_latent_representation(adata, **kwargs)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (``b`` may be a single row), in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.where(norm > 0, norm, 1.0)


def _summary(
    shift: np.ndarray,
    toward: np.ndarray | None,
    frequency: np.ndarray,
    genes: np.ndarray,
    model_genes: np.ndarray,
    *,
    n_genes: int,
) -> pd.DataFrame:
    """Per gene: cells perturbed, expression frequency, mean and median shift (and toward)."""
    n_cells = (~np.isnan(shift)).sum(axis=0)
    with warnings.catch_warnings():
        # a gene no chosen cell expresses has no shift: NaN, and it is counted with n_cells = 0
        warnings.simplefilter("ignore", RuntimeWarning)
        columns = {
            "n_cells": n_cells.astype(np.int64),
            "frequency": frequency[genes].astype(np.float64),
            "mean_shift": np.nanmean(shift, axis=0).astype(np.float64),
            "median_shift": np.nanmedian(shift, axis=0).astype(np.float64),
        }
        if toward is not None:
            columns["mean_toward"] = np.nanmean(toward, axis=0).astype(np.float64)
            fraction = np.nansum(toward > 0, axis=0) / np.where(n_cells > 0, n_cells, np.nan)
            columns["fraction_toward"] = fraction.astype(np.float64)
    if (n_cells[:n_genes] == 0).any():
        silent = [str(g) for g in model_genes[genes[:n_genes][n_cells[:n_genes] == 0]]]
        logg.warning(f"no chosen cell expresses {silent}: nothing to delete, their shift is NaN")
    return pd.DataFrame(columns, index=pd.Index([str(g) for g in model_genes[genes]], name="gene"))


def _compare_with_random(table: pd.DataFrame, random: pd.DataFrame, *, with_target: bool) -> pd.DataFrame:
    """Add each gene's standing among the random genes: their mean, a z-score and an empirical percentile."""
    pool = random["mean_shift"].dropna().to_numpy()
    if pool.size == 0:
        return table
    spread = pool.std(ddof=1) if pool.size > 1 else np.nan
    table["random_mean_shift"] = pool.mean()
    table["shift_z"] = (table["mean_shift"] - pool.mean()) / (spread if spread > 0 else np.nan)
    table["shift_percentile"] = [_percentile(pool, value) for value in table["mean_shift"]]
    if with_target:
        pool = random["mean_toward"].dropna().to_numpy()
        table["random_mean_toward"] = pool.mean()
        table["random_fraction_toward"] = random["fraction_toward"].mean()
        table["toward_percentile"] = [_percentile(pool, value) for value in table["mean_toward"]]
    return table


def _percentile(pool: np.ndarray, value: float) -> float:
    """Percentile (0-100) of ``value`` among ``pool``, ties counted half; NaN for a NaN value."""
    return float(percentileofscore(pool, value, kind="mean")) if np.isfinite(value) else np.nan
