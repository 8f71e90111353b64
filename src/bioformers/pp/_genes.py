"""Gene vocabulary mapping: a query's genes matched to a model's by name, never by position.

Every path that reads a query with a model (embedding, prediction, streaming) goes through
:func:`align_genes` and :meth:`GeneAlignment.take`, so the rules live here only:

* genes are matched by name: ``adata.var_names``, or a column of ``adata.var`` (``gene_symbols=``);
* Ensembl IDs lose their version suffix on both sides (``ENSG00000141510.16`` matches
  ``ENSG00000141510``); other names are matched exactly, case included (``AC000061.1`` is a gene
  symbol, not a versioned ID, and human and mouse symbols differ only by case);
* a model gene missing from the query is absent: zero counts, bin 0;
* a query gene the model does not know is ignored;
* coverage (model genes found / model genes) below ``min_gene_coverage`` is refused.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Iterable

    from anndata import AnnData

#: Default smallest fraction of the model's genes a query must have.
DEFAULT_MIN_GENE_COVERAGE = 0.5
# ENSG / ENSMUSG / ENST ... with 11 digits, a version, and GENCODE's _PAR_Y tag for the Y copy of PAR genes
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*\d{11})\.\d+(_PAR_Y)?$")
_SHOWN = 5


def gene_key(name: str) -> str:
    """The name genes are matched by: an Ensembl ID without its version suffix, any other name as it is."""
    match = _ENSEMBL_VERSION.match(name)
    return name if match is None else match.group(1) + (match.group(2) or "")


def gene_keys(names: Iterable) -> np.ndarray:
    """:func:`gene_key` of every name (object array); missing names (NaN/None) stay ``None``."""
    return np.asarray([None if pd.isna(name) else gene_key(str(name)) for name in names], dtype=object)


@dataclass(frozen=True, eq=False)
class GeneAlignment:
    """Where each of a model's genes is in a query.

    Attributes
    ----------
    model_genes
        The model's genes, in the model's order.
    query_genes
        The names the query's genes were matched by (``var_names`` or the ``gene_symbols`` column).
    columns
        For each model gene, its column in the query, or -1 where the query lacks it.
    source
        Where the query's names came from, for messages (``"adata.var_names"`` or ``"adata.var['...']"``).

    Examples
    --------
    :meth:`bioformers.BioFormer.align_genes` makes one for a query:

    >>> import numpy as np
    >>> from bioformers.pp._genes import GeneAlignment
    >>> alignment = GeneAlignment(
    ...     model_genes=np.array(["A", "B", "C"]), query_genes=np.array(["C", "A", "X"]), columns=np.array([1, -1, 0])
    ... )
    >>> alignment.coverage, alignment.missing.tolist(), alignment.n_ignored
    (0.6666666666666666, ['B'], 1)
    >>> alignment.take(np.array([[3, 1, 7]])).toarray()  # query columns C, A, X -> model genes A, B, C
    array([[1, 0, 3]])
    """

    model_genes: np.ndarray
    query_genes: np.ndarray
    columns: np.ndarray
    source: str = "adata.var_names"

    @property
    def found(self) -> np.ndarray:
        """Boolean mask over the model's genes, True where the query has the gene."""
        return self.columns >= 0

    @property
    def n_found(self) -> int:
        """Number of model genes present in the query."""
        return int(self.found.sum())

    @property
    def coverage(self) -> float:
        """Fraction of the model's genes present in the query."""
        return self.n_found / max(self.model_genes.size, 1)

    @property
    def missing(self) -> np.ndarray:
        """Model genes the query lacks."""
        return self.model_genes[~self.found]

    @property
    def n_ignored(self) -> int:
        """Query genes the model does not know."""
        return self.query_genes.size - self.n_found

    @property
    def is_identity(self) -> bool:
        """Whether the query has exactly the model's genes in the model's order (then nothing is rearranged)."""
        return self.query_genes.size == self.model_genes.size and bool(
            (self.columns == np.arange(self.model_genes.size)).all()
        )

    def take(self, X) -> sparse.csr_matrix:
        """Rows of the query ``(cells, query genes)`` as ``(cells, model genes)`` CSR; missing genes are zeros.

        Only stored values move (no densification); values are kept exactly, dtype included.

        Parameters
        ----------
        X
            Rows of the query, dense or sparse, ``(cells, query genes)``.

        Returns
        -------
        :class:`~scipy.sparse.csr_matrix`
            ``(cells, model genes)``.
        """
        X = sparse.csr_matrix(X)
        if self.is_identity:
            return X
        target = np.full(self.query_genes.size, -1, dtype=np.int64)
        target[self.columns[self.found]] = np.flatnonzero(self.found)
        columns = target[X.indices]
        kept = columns >= 0
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        return sparse.csr_matrix(
            (X.data[kept], (rows[kept], columns[kept])), shape=(X.shape[0], self.model_genes.size), dtype=X.dtype
        )

    def put(self, values: np.ndarray, *, fill: float) -> np.ndarray:
        """Results per model gene ``(cells, model genes)`` laid out like the query, ``fill`` for genes the model lacks.

        Results for model genes the query lacks have no column to go to and are dropped.

        Parameters
        ----------
        values
            Results per model gene, ``(cells, model genes)``.
        fill
            Value for the query's genes the model does not know.

        Returns
        -------
        :class:`~numpy.ndarray`
            ``(cells, query genes)``.
        """
        if self.is_identity:
            return values
        out = np.full((values.shape[0], self.query_genes.size), fill, dtype=values.dtype)
        out[:, self.columns[self.found]] = values[:, self.found]
        return out

    def report(self) -> None:
        """Say how the query's genes matched: info when every model gene was found, a warning otherwise."""
        if self.is_identity:
            return
        ignored = f"{self.n_ignored} genes of the AnnData that the model does not know are ignored"
        if self.n_found == self.model_genes.size:
            logg.info(f"matched all {self.n_found} of the model's genes by name in `{self.source}`; {ignored}")
            return
        warnings.warn(
            f"{self.n_found} of the model's {self.model_genes.size} genes ({self.coverage:.1%}) were found in "
            f"`{self.source}`; the {self.missing.size} missing (e.g. {self.missing[:_SHOWN].tolist()}) are read as "
            f"unexpressed (bin 0), which changes what the model sees of every cell; {ignored}.",
            UserWarning,
            stacklevel=3,
        )

    def check_cells(self, X, aligned: sparse.csr_matrix, *, where: str) -> None:
        """Raise if a cell has counts, but none in the model's genes.

        Cells with no counts at all are left to the caller's counts check, whose advice fits them.

        Parameters
        ----------
        X
            The query's rows.
        aligned
            The same rows from :meth:`take`.
        where
            The matrix's name in the message (e.g. ``"adata.X"``).

        Raises
        ------
        ValueError
            Some cells have counts only in genes the model does not know.
        """
        if self.is_identity:
            return
        X = sparse.csr_matrix(X)
        empty = np.flatnonzero((_n_stored(aligned) == 0) & (_n_stored(X) > 0))
        if empty.size:
            raise ValueError(
                f"{empty.size} cell(s) of {where} have no counts in the model's genes (e.g. row(s) "
                f"{empty[:_SHOWN].tolist()} of them): all their counts are in genes the model does not know, so it "
                "would read an empty cell. Remove them first, e.g. `keep = np.asarray(adata[:, "
                "adata.var_names.isin(model.genes_)].X.sum(axis=1)).ravel() > 0; adata = adata[keep].copy()`."
            )


def _n_stored(X: sparse.csr_matrix) -> np.ndarray:
    """Nonzero values per row."""
    return np.diff(X.indptr) - np.bincount(
        np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[X.data == 0], minlength=X.shape[0]
    )


def align_genes(
    adata: AnnData,
    model_genes: np.ndarray,
    *,
    gene_symbols: str | None = None,
    min_gene_coverage: float = DEFAULT_MIN_GENE_COVERAGE,
) -> GeneAlignment:
    """Match the genes of ``adata`` to ``model_genes`` by name and check the coverage.

    Reports nothing (see :meth:`GeneAlignment.report`): callers check first, before writing anything,
    and report once.

    Parameters
    ----------
    adata
        The query, in memory or backed (only ``var`` is read).
    model_genes
        The model's genes, in order.
    gene_symbols
        Column of ``adata.var`` with the names to match (e.g. ``"feature_name"``); ``None`` uses
        ``adata.var_names``. Missing values in the column match nothing.
    min_gene_coverage
        Smallest fraction of the model's genes that must be found, in [0, 1]. At least one always must.

    Raises
    ------
    KeyError
        ``gene_symbols`` is not a column of ``adata.var``.
    ValueError
        A bad ``min_gene_coverage``; several query genes with the name of one model gene; model genes
        that are one Ensembl gene in several versions; coverage below ``min_gene_coverage``.
    """
    if not 0 <= min_gene_coverage <= 1:
        raise ValueError(
            f"`min_gene_coverage` must lie in [0, 1] (a fraction of the model's genes), not {min_gene_coverage}."
        )
    alignment = match_genes(adata, model_genes, gene_symbols=gene_symbols)
    if alignment.n_found == 0 or alignment.coverage < min_gene_coverage:
        raise ValueError(_coverage_message(alignment, adata, gene_symbols, min_gene_coverage))
    return alignment


def match_genes(adata: AnnData, model_genes: np.ndarray, *, gene_symbols: str | None = None) -> GeneAlignment:
    """The matching of :func:`align_genes`, without its coverage check."""
    if gene_symbols is None:
        names, source = adata.var_names, "adata.var_names"
    elif gene_symbols in adata.var.columns:
        names, source = adata.var[gene_symbols], f"adata.var[{gene_symbols!r}]"
    else:
        raise KeyError(
            f"`gene_symbols={gene_symbols!r}` is not a column of `adata.var` (columns: "
            f"{', '.join(map(repr, adata.var.columns)) or 'none'}). Pass the column holding the gene names the model "
            "knows, or `gene_symbols=None` to match by `adata.var_names`."
        )
    model_genes = np.asarray(model_genes).astype(str)
    query_genes = np.asarray(names, dtype=object)
    columns = _match(gene_keys(model_genes), gene_keys(query_genes), model_genes, query_genes, source)
    return GeneAlignment(model_genes=model_genes, query_genes=query_genes, columns=columns, source=source)


def _match(model_keys, query_keys, model_genes, query_genes, source: str) -> np.ndarray:
    """Query column of each model key, -1 where absent; ambiguity raises rather than picking one."""
    model_index = pd.Index(model_keys)
    if not model_index.is_unique:
        dup = model_index[model_index.duplicated()].unique()[:_SHOWN].tolist()
        clash = [g for g in model_genes if gene_key(g) in set(dup)]
        raise ValueError(
            f"The model's genes {clash} are the same Ensembl genes in different versions, so a query cannot be "
            "matched to them by name."
        )
    positions = pd.Series(np.arange(query_keys.size), dtype=np.int64)
    present = pd.notna(pd.Series(query_keys, dtype=object)).to_numpy()
    keys = pd.Series(query_keys[present], dtype=object)
    in_model = keys.isin(model_index).to_numpy()
    known = pd.Series(positions.to_numpy()[present][in_model], index=pd.Index(keys[in_model].to_numpy()))
    if not known.index.is_unique:
        dup = known.index[known.index.duplicated()].unique()[:_SHOWN].tolist()
        examples = {d: query_genes[known[d].to_numpy()].tolist() for d in dup}
        raise ValueError(
            f"Several genes of `{source}` match one gene of the model: {examples}. Which one the model should read is "
            "ambiguous. Keep one gene per name first, e.g. `adata = adata[:, ~names.duplicated()].copy()` (the first "
            "of each), or sum the duplicates."
        )
    return known.reindex(model_index).fillna(-1).to_numpy().astype(np.int64)


def _coverage_message(alignment: GeneAlignment, adata: AnnData, gene_symbols: str | None, minimum: float) -> str:
    n_model = alignment.model_genes.size
    found = f"{alignment.n_found} of the model's {n_model} genes ({alignment.coverage:.1%})"
    query_examples = [str(g) for g in alignment.query_genes[:_SHOWN]]
    message = (
        f"Only {found} were found in `{alignment.source}`, below `min_gene_coverage={minimum}`: the model would read "
        f"too little of each cell. Missing model genes include {alignment.missing[:_SHOWN].tolist()}; the AnnData's "
        f"genes look like {query_examples}. Genes are matched by name, never by position."
    )
    better = _better_columns(adata, alignment.model_genes, gene_symbols, alignment.n_found)
    if better:
        message += f" Other names match more of the model's genes: {', '.join(better)}."
    else:
        message += (
            " Give the AnnData the model's gene names (or pass `gene_symbols=` naming the `adata.var` column that "
            "holds them)."
        )
    if alignment.n_found:
        message += " To accept the gap, lower `min_gene_coverage=` (missing genes are read as unexpressed)."
    return message


def _better_columns(adata: AnnData, model_genes: np.ndarray, current: str | None, n_found: int) -> list[str]:
    """``gene_symbols=`` choices (``adata.var`` columns, or ``None``) matching more model genes than ``current``."""
    model_keys = set(gene_keys(model_genes))
    candidates = {None: adata.var_names} | {
        column: adata.var[column]
        for column in adata.var.columns
        if adata.var[column].dtype == object
        or isinstance(adata.var[column].dtype, pd.CategoricalDtype | pd.StringDtype)
    }
    better = []
    for column, names in candidates.items():
        hits = sum(key in model_keys for key in set(gene_keys(names)) if key is not None)
        if column != current and hits > n_found:
            better.append(f"`gene_symbols={column!r}` ({hits / model_genes.size:.0%})")
    return better
