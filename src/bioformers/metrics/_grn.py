"""Gene regulatory networks as edge lists, scored against a reference (BEELINE's EPR and AUPRC)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score

from .._keys import Keys


def grn_edges(
    grn: ad.AnnData | np.ndarray | sparse.spmatrix | sparse.sparray,
    genes: Sequence[str] | None = None,
    *,
    key: str | None = None,
    top: int | None = None,
    min_weight: float | None = None,
    exclude_self: bool = True,
) -> pd.DataFrame:
    """List the directed edges of a gene x gene GRN, strongest first.

    Rows of the matrix are source genes and columns target genes. Zero and NaN weights are not
    edges. Edges are sorted by weight, descending; equal weights are ordered by source name, then
    target name, so the list (and any ``top`` cut) is deterministic.

    Parameters
    ----------
    grn
        An AnnData whose ``varp[key]`` holds the GRN (genes are its `var_names`), or a square
        matrix (dense or scipy sparse) with `genes` naming its rows and columns.
    genes
        Names of the matrix's rows/columns; only with a matrix.
    key
        Key of ``adata.varp`` with the GRN; only with an AnnData. Defaults to the attention GRN
        (``"bioformers_attention"``).
    top
        Keep only the `top` strongest edges.
    min_weight
        Keep only edges with weight >= `min_weight`.
    exclude_self
        Drop self-loops (source = target).

    Returns
    -------
    :class:`~pandas.DataFrame`
        DataFrame with columns `source` (str), `target` (str) and `weight` (the matrix's float dtype),
        one row per edge. Weights are ranked as given: for a signed GRN, such as a correlation
        matrix, rank by strength with ``np.abs(matrix)``.

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> grn = np.array([[0.0, 0.9, 0.1], [0.0, 0.5, 0.0], [0.3, 0.0, 0.0]])
    >>> bf.metrics.grn_edges(grn, ["A", "B", "C"])
      source target  weight
    0      A      B     0.9
    1      C      A     0.3
    2      A      C     0.1
    """
    matrix, genes = _grn_matrix(grn, genes, key)
    if top is not None and top < 0:
        raise ValueError(f"`top` must be a non-negative number of edges, not {top}.")

    # Genes in name order, so that edges come out of the matrix (row-major) sorted by source, then
    # target name; one stable sort by weight then gives the full order.
    by_name = np.argsort(genes, kind="stable")
    genes = genes[by_name]
    if sparse.issparse(matrix):
        csr = sparse.csr_matrix(matrix)[by_name][:, by_name]
        csr.sum_duplicates()  # also sorts the columns of each row
        coo = csr.tocoo()
        rows, cols, weights = coo.row, coo.col, coo.data
    else:
        matrix = matrix[np.ix_(by_name, by_name)]
        rows, cols = np.nonzero(matrix)
        weights = matrix[rows, cols]
    if weights.dtype.kind != "f":
        weights = weights.astype(np.float64)
    keep = (weights != 0) & ~np.isnan(weights)
    if exclude_self:
        keep &= rows != cols
    if min_weight is not None:
        keep &= weights >= min_weight
    if top is not None and 0 < top < keep.sum():
        # Only edges at least as strong as the top-th one can make the cut: sort those, not all.
        keep &= weights >= np.partition(weights[keep], -top)[-top]
    rows, cols, weights = rows[keep], cols[keep], weights[keep]

    order = np.argsort(-weights, kind="stable")[:top]
    return pd.DataFrame({"source": genes[rows[order]], "target": genes[cols[order]], "weight": weights[order]})


def _grn_matrix(grn, genes, key: str | None) -> tuple[np.ndarray | sparse.spmatrix, np.ndarray]:
    """The GRN matrix and its gene names (object array), from an AnnData or a matrix."""
    if isinstance(grn, ad.AnnData):
        if genes is not None:
            raise ValueError("Pass `genes` only with a matrix; with an AnnData the genes are its `var_names`.")
        key = Keys().attention if key is None else key
        if key not in grn.varp:
            raise KeyError(
                f"`adata.varp[{key!r}]` does not exist (varp keys: {', '.join(grn.varp.keys()) or 'none'}). "
                f"{_how_to_compute(key)}"
            )
        matrix, genes = grn.varp[key], np.asarray(grn.var_names, dtype=object)
    else:
        if key is not None:
            raise ValueError("`key` selects `adata.varp[key]`; with a matrix, pass the matrix and `genes` instead.")
        if genes is None:
            raise ValueError("Pass `genes`, the names of the matrix's rows and columns (e.g. `adata.var_names`).")
        matrix, genes = grn, np.asarray(genes, dtype=object)
    if not sparse.issparse(matrix):
        matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        heads = " (one matrix per head? average them first: `matrix.mean(axis=-1)`)" if matrix.ndim == 3 else ""
        raise ValueError(f"A GRN must be a square gene x gene matrix; got shape {matrix.shape}{heads}.")
    if genes.ndim != 1 or len(genes) != matrix.shape[0]:
        raise ValueError(f"`genes` has {genes.size} names but the GRN has {matrix.shape[0]} rows and columns.")
    if pd.Index(genes).has_duplicates:
        raise ValueError("Gene names are not unique, so edges would be ambiguous; make them unique first.")
    return matrix, genes


def _how_to_compute(key: str) -> str:
    if "attention" in key:
        return "Compute the attention GRN first with `bf.tl.attention_grn`."
    if "similarity" in key:
        return "Compute the gene-embedding similarity GRN first with `bf.tl.gene_programs`."
    return (
        "Store a gene x gene matrix there first, e.g. "
        f"`adata.varp[{key!r}] = bf.metrics.correlation_grn(adata.X)`, or pass the right `key`."
    )


def score_grn(
    edges: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    genes: Sequence[str] | None = None,
    directed: bool = True,
) -> dict[str, float]:
    """Score a predicted GRN against a reference network, as BEELINE does.

    Following BEELINE (Pratapa et al. 2020, Nat Methods 17:147), only edges out of known
    transcription factors are scored: the candidate pairs are all ordered pairs
    (source, target), source ≠ target, where the source is a source (TF) of the reference and
    in `genes`, and the target is in `genes`. Reference edges among the candidates are the
    positives; everything else in `edges` is ignored. Duplicate reference edges (e.g. one per
    mode of regulation in TRRUST) count once; reference self-loops are not candidates.

    * ``early_precision``: with k = number of positives, the precision of the k strongest
      predicted candidate edges. As in BEELINE, every edge tied with the k-th weight is
      included, and only edges with a nonzero weight count, so fewer than k may be taken.
    * ``epr``: early precision divided by the ``density`` of the reference among the candidates
      (positives / candidates), the precision of a random predictor. 1 is chance level; the
      best possible is ``1 / density``.
    * ``auprc``: average precision over all candidates
      (:func:`sklearn.metrics.average_precision_score`); candidates not in `edges` rank below
      every listed edge. ``auprc_ratio`` divides it by ``density`` (about 1 for a random GRN).

    Parameters
    ----------
    edges
        Predicted edges with columns `source`, `target` and `weight` (larger is stronger), e.g.
        from :func:`grn_edges`. Zero and NaN weights count as not predicted; for a duplicated
        pair the largest weight counts. Weights rank as given (BEELINE ranks by absolute value:
        for a signed GRN build the edges from ``np.abs(matrix)``).
    reference
        Reference edges with columns `source` (TF) and `target`, e.g. :func:`bioformers.datasets.trrust`.
    genes
        The genes the GRN was inferred over (e.g. ``adata.var_names``). Defaults to the genes in
        `edges`; pass them explicitly when genes without edges should count as candidates.
    directed
        ``False``: ignore direction. Candidates are unordered pairs with at least one reference
        TF; a pair is positive if the reference has it in either direction, and its predicted
        weight is the larger of its two directions.

    Returns
    -------
    dict
        ``{"epr", "early_precision", "auprc", "auprc_ratio", "density", "n_reference_edges",
        "n_candidates", "n_tfs"}``: the scores above, the number of positives, of candidate pairs and of
        reference TFs among `genes`.

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> adata = bf.datasets.pbmc3k()[:, ["SPI1", "PAX5", "CD68", "CSF3R", "CD79A", "CD19", "LYZ", "CD3E"]]
    >>> corr = np.abs(bf.metrics.correlation_grn(adata.X))
    >>> edges = bf.metrics.grn_edges(corr, adata.var_names)
    >>> scores = bf.metrics.score_grn(edges, bf.datasets.trrust(), genes=adata.var_names)
    >>> scores["n_reference_edges"], scores["n_candidates"], round(scores["epr"], 2)
    (4, 14, 1.75)
    """
    _check_columns(edges, ["source", "target", "weight"], "edges", "e.g. from `bf.metrics.grn_edges`")
    _check_columns(reference, ["source", "target"], "reference", "e.g. `bf.datasets.trrust()`")
    weights = pd.to_numeric(edges["weight"], errors="raise").to_numpy(dtype=np.float64)
    listed = (weights != 0) & ~np.isnan(weights)
    if not listed.any():
        raise ValueError(
            "`edges` has no edges with a nonzero weight, so there is nothing to score. "
            "Check that the GRN was computed (e.g. `bf.metrics.grn_edges(adata, key=...)` on a filled `varp`)."
        )
    if genes is None:
        genes = pd.unique(np.concatenate([edges["source"].to_numpy(), edges["target"].to_numpy()]))
    gene_index = pd.Index(genes).drop_duplicates()
    n_genes = len(gene_index)

    ref_src, ref_tgt = gene_index.get_indexer(reference["source"]), gene_index.get_indexer(reference["target"])
    tfs = np.unique(ref_src[ref_src >= 0])
    if tfs.size == 0:
        raise ValueError(
            f"None of the reference's {reference['source'].nunique()} TFs is among the {n_genes} genes "
            f"(genes start {', '.join(map(str, gene_index[:5]))}; reference TFs start "
            f"{', '.join(map(str, reference['source'].unique()[:5]))}). Use the same gene naming as the reference "
            "(e.g. human HGNC symbols for TRRUST) and keep TFs among the genes (e.g. add them to the highly "
            "variable genes)."
        )
    # tf_pos[g] is the row of gene g in the (TFs x genes) candidate grid, or -1 if g is not a TF.
    tf_pos = np.full(n_genes, -1)
    tf_pos[tfs] = np.arange(tfs.size)

    candidate = np.ones((tfs.size, n_genes), dtype=bool)
    candidate[np.arange(tfs.size), tfs] = False
    # A boolean grid: duplicated reference edges (e.g. one row per mode in TRRUST) count once.
    positive = np.zeros_like(candidate)
    in_genes = (ref_src >= 0) & (ref_tgt >= 0)
    positive[tf_pos[ref_src[in_genes]], ref_tgt[in_genes]] = True

    score = np.full(candidate.shape, -np.inf)
    src = gene_index.get_indexer(edges["source"].to_numpy()[listed])
    tgt = gene_index.get_indexer(edges["target"].to_numpy()[listed])
    ok = (src >= 0) & (tgt >= 0) & (tf_pos[np.maximum(src, 0)] >= 0)
    np.maximum.at(score, (tf_pos[src[ok]], tgt[ok]), weights[listed][ok])

    if not directed:
        # An edge s -> t whose target is a TF also scores the pair {t, s} at grid row t. A TF-TF pair
        # sits in the grid twice; only the entry whose row TF has the smaller index is a candidate.
        reverse = (src >= 0) & (tgt >= 0) & (tf_pos[np.maximum(tgt, 0)] >= 0)
        np.maximum.at(score, (tf_pos[tgt[reverse]], src[reverse]), weights[listed][reverse])
        to_tf = np.flatnonzero(tf_pos >= 0)
        grid_rows, grid_cols = np.nonzero(positive)
        # Reference edge (a -> b) with b a TF also makes the grid entry (b, a) positive.
        back = tf_pos[grid_cols] >= 0
        positive[tf_pos[grid_cols[back]], tfs[grid_rows[back]]] = True
        candidate[:, to_tf] &= tfs[:, None] < to_tf[None, :]

    y_true, y_score = positive[candidate], score[candidate]
    n_candidates, n_positive = y_true.size, int(y_true.sum())
    if n_positive == 0:
        raise ValueError(
            f"The reference has no edges among the genes: {tfs.size} of its TFs are among the {n_genes} genes "
            f"({', '.join(map(str, gene_index[tfs[:10]]))}{', ...' if tfs.size > 10 else ''}), but none of "
            "their reference targets is. Keep more genes (e.g. more highly variable genes, or the reference's "
            "targets) or use a reference that covers these genes."
        )
    density = n_positive / n_candidates

    predicted = np.isfinite(y_score)
    early_precision, lowest = 0.0, 0.0
    if predicted.any():
        ranked = np.sort(y_score[predicted])[::-1]
        top_k = y_score >= ranked[min(n_positive, ranked.size) - 1]
        early_precision = float(y_true[top_k].sum() / top_k.sum())
        lowest = ranked[-1] - 1
    auprc = float(average_precision_score(y_true, np.where(predicted, y_score, lowest)))
    return {
        "epr": early_precision / density,
        "early_precision": early_precision,
        "auprc": auprc,
        "auprc_ratio": auprc / density,
        "density": density,
        "n_reference_edges": n_positive,
        "n_candidates": n_candidates,
        "n_tfs": int(tfs.size),
    }


def _check_columns(frame: pd.DataFrame, columns: list[str], name: str, hint: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise KeyError(
            f"`{name}` lacks column(s) {', '.join(missing)}; it needs {', '.join(columns)} ({hint}). "
            f"Its columns: {', '.join(map(str, frame.columns)) or 'none'}."
        )


def correlation_grn(
    X: np.ndarray | sparse.spmatrix | sparse.sparray, *, method: Literal["pearson", "spearman"] = "pearson"
) -> np.ndarray:
    """Gene x gene correlation across cells: the plain baseline GRN.

    Genes with zero variance have correlation 0 with every gene, and the diagonal is 0 (no
    self-loops). Sparse input stays sparse for Pearson: the Gram matrix ``X.T @ X`` is computed
    sparse and centred afterwards, so memory is about that of the genes x genes result (for
    2,638 cells x 2,000 genes, tens of MB).

    Parameters
    ----------
    X
        Expression, cells x genes (dense or scipy sparse), e.g. log-normalised ``adata.X``.
    method
        ``"pearson"``, or ``"spearman"`` (Pearson of ranks within each gene; densifies `X`).

    Returns
    -------
    :class:`~numpy.ndarray`
        ``float32`` array (n_genes, n_genes), symmetric, values in [-1, 1]. Signed: rank edges by
        strength with ``np.abs(...)``.

    Examples
    --------
    >>> import numpy as np
    >>> import scanpy as sc
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=100, n_vars=20)
    >>> sc.pp.normalize_total(adata)
    >>> sc.pp.log1p(adata)
    >>> adata.varp["correlation"] = bf.metrics.correlation_grn(adata.X)
    >>> adata.varp["correlation"].shape
    (20, 20)
    """
    if X.ndim != 2:
        raise ValueError(f"`X` must be a cells x genes matrix; got {X.ndim} dimension(s).")
    n_cells = X.shape[0]
    if n_cells < 2:
        raise ValueError(f"Correlation needs at least 2 cells; `X` has {n_cells}.")
    if method == "spearman":
        dense = X.toarray() if sparse.issparse(X) else np.asarray(X)
        X = rankdata(dense, axis=0)
    elif method != "pearson":
        raise ValueError(f"`method` must be 'pearson' or 'spearman', not {method!r}.")

    if sparse.issparse(X):
        X = sparse.csr_matrix(X, dtype=np.float64)
        mean = np.asarray(X.mean(axis=0)).ravel()
        sum_sq = np.asarray(X.multiply(X).sum(axis=0)).ravel()
        # Centred cross-products from the sparse Gram matrix: sum (x - mx)(y - my) = sum xy - n mx my.
        cov = (X.T @ X).toarray() - n_cells * np.outer(mean, mean)
    else:
        X = np.asarray(X, dtype=np.float64)
        sum_sq = (X**2).sum(axis=0)
        centred = X - X.mean(axis=0)
        cov = centred.T @ centred
    # A variance within rounding error of the sum of squares is a constant gene: correlation 0.
    constant = np.diag(cov) <= 1e-10 * sum_sq
    scale = np.sqrt(np.where(constant, np.inf, np.diag(cov)))
    corr = np.clip(cov / scale[:, None] / scale[None, :], -1, 1)
    np.fill_diagonal(corr, 0)
    return corr.astype(np.float32)
