"""Gene regulatory networks: attention between genes, a gene's strongest partners, gene programs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from scipy import sparse
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from .._docs import DOC_RETURNS_AX, DOC_SHOW_AX, DOC_SHOW_AX_SIZED, doc_key_added_read, doc_params
from .._keys import Keys
from .._validation import did_you_mean
from ._utils import _finish, _gene_index

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_ATTENTION_TOOL = "`bf.tl.attention_grn(adata, model)`"
_PROGRAMS_TOOL = "`bf.tl.gene_programs(adata, model)`"
_UNASSIGNED = "unassigned"


@doc_params(show_ax=DOC_SHOW_AX_SIZED, returns_ax=DOC_RETURNS_AX, key_added=doc_key_added_read("`bf.tl.attention_grn`"))
def attention(
    adata: AnnData,
    genes: str | Sequence[str] | None = None,
    *,
    top: int = 10,
    group: str | None = None,
    key_added: str = "bioformers",
    cmap: str = "viridis",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Heatmap of the attention between genes, from `bf.tl.attention_grn`.

    Rows are attending (query) genes, columns the genes they attend to (keys), as stored.

    Parameters
    ----------
    adata
        Annotated data with the attention GRN in `varp`.
    genes
        A list of genes: the attention among them, in that order.
        A single gene: that gene (first) and its `top` partners by mutual attention, the larger of
        the attention it pays and the attention it receives, ``max(A[g, j], A[j, g])``, strongest
        first; the larger rather than the mean, so a partner that only one side attends to
        strongly is kept.
        `None`: the `top` genes that receive the most attention (column sums), most first.
    top
        Number of partners (single gene) or of genes (`genes=None`).
    group
        A group of the ``groupby`` column passed to `bf.tl.attention_grn`: plot that group's
        matrix instead of the one over all cells.
    {key_added}
    cmap
        Colormap of the heatmap.
    {show_ax}

    Returns
    -------
    {returns_ax}
        Matrices kept per head (``keep_heads=True``) are averaged over heads.

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=50, n_vars=30)
    >>> # stands in for bf.tl.attention_grn(adata, model):
    >>> adata.varp["bioformers_attention"] = np.random.default_rng(0).random((30, 30), dtype=np.float32)
    >>> ax = bf.pl.attention(adata, "gene_3", top=8, show=False)
    >>> ax.get_title(), ax.get_ylabel()
    ('attention around gene_3', 'attending gene (query)')
    """
    _check_top(top)
    keys = Keys(key_added)
    key = keys.attention if group is None else keys.attention_group(group)
    if key not in adata.varp:
        raise KeyError(_missing_attention(adata, keys, group))
    matrix = adata.varp[key]

    if genes is None:
        received = np.asarray(matrix.sum(axis=0)).ravel() if matrix.ndim == 2 else _head_mean(matrix).sum(axis=0)
        index = np.argsort(-received, kind="stable")[:top]
        title = "attention, most attended genes"
    elif isinstance(genes, str):
        center = _gene_index(adata, [genes])[0]
        index = np.concatenate([[center], _partners(matrix, center, top)])
        title = f"attention around {genes}"
    else:
        index = _gene_index(adata, genes)
        title = "attention"
    if group is not None:
        title += f" ({group})"

    values = _submatrix(matrix, index)
    ax = _heatmap(values, adata.var_names[index], ax=ax, cmap=cmap, title=title, cbar_label="attention")
    ax.set_ylabel("attending gene (query)")
    ax.set_xlabel("attended gene (key)")
    return _finish(ax, show=show, return_fig=return_fig)


@doc_params(show_ax=DOC_SHOW_AX, returns_ax=DOC_RETURNS_AX)
def grn(
    adata: AnnData,
    gene: str,
    *,
    key: str | None = None,
    top: int = 20,
    key_added: str = "bioformers",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Network of one gene and its strongest partners in a gene x gene GRN.

    Partners are ranked as in :func:`attention`, by ``max(W[g, j], W[j, g])``, and edges are
    undirected with that weight. Edges join `gene` to each partner, and two partners where their
    weight is at least that of the weakest partner of `gene`, which shows the modules among the
    partners without clutter (partner edges are drawn lighter). Edge width grows linearly with
    the weight, from the weakest to the strongest edge drawn; the layout is a spring layout with a
    fixed seed, so the same GRN always gives the same picture.

    Parameters
    ----------
    adata
        Annotated data with the GRN in `varp`.
    gene
        The centre gene, highlighted.
    key
        Key of `varp` holding the GRN (a per-group attention GRN, e.g.
        ``"bioformers_attention_<group>"``, works too). Default: the attention GRN
        ``f"{key_added}_attention"`` of `bf.tl.attention_grn` if present, otherwise the
        gene-embedding similarity ``f"{key_added}_similarity"`` of `bf.tl.gene_programs`.
    top
        Number of partners drawn.
    key_added
        Base key of the default GRNs.
    {show_ax}

    Returns
    -------
    {returns_ax}

    Examples
    --------
    >>> import numpy as np
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=50, n_vars=30)
    >>> # stands in for bf.tl.attention_grn(adata, model):
    >>> adata.varp["bioformers_attention"] = np.random.default_rng(0).random((30, 30), dtype=np.float32)
    >>> ax = bf.pl.grn(adata, "gene_3", top=10, show=False)
    >>> ax.get_title()
    'gene_3 and its top 10 partners (bioformers_attention)'
    """
    import networkx as nx  # networkx comes with scanpy; only this plot needs it

    _check_top(top)
    keys = Keys(key_added)
    if key is None:
        key = next((k for k in (keys.attention, keys.similarity) if k in adata.varp), None)
        if key is None:
            raise KeyError(
                f"Neither `adata.varp[{keys.attention!r}]` nor `adata.varp[{keys.similarity!r}]` found. "
                f"Run {_ATTENTION_TOOL} or {_PROGRAMS_TOOL} first, or pass `key=`."
            )
    elif key not in adata.varp:
        raise KeyError(
            f"`adata.varp[{key!r}]` not found. Available keys of `adata.varp`: {list(adata.varp)}."
            f"{did_you_mean(key, adata.varp.keys())}"
        )
    matrix = adata.varp[key]
    center = _gene_index(adata, [gene])[0]
    partners = _partners(matrix, center, top)
    index = np.concatenate([[center], partners])
    values = _submatrix(matrix, index)
    weights = np.maximum(values, values.T)
    threshold = weights[0, 1:].min() if partners.size else np.inf

    names = list(adata.var_names[index])
    graph = nx.Graph()
    graph.add_nodes_from(names)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if i == 0 or weights[i, j] >= threshold:
                graph.add_edge(names[i], names[j], weight=float(weights[i, j]))

    # Widths span the weakest to the strongest edge drawn: attention weights are often all close
    # to 1 / n_vars, so widths proportional to the weight itself would all look the same.
    edges = list(graph.edges(data="weight"))
    drawn = np.array([w for *_, w in edges])
    spread = np.ptp(drawn) if drawn.size else 0.0
    relative = (drawn - drawn.min()) / spread if spread > 0 else np.full(drawn.size, 0.5)
    for (*_, data), r in zip(graph.edges(data=True), relative, strict=True):
        data["strength"] = 0.1 + r  # the layout pulls strongly linked genes together; needs positive weights
    pos = nx.spring_layout(graph, weight="strength", seed=0)

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    nx.draw_networkx_edges(
        graph,
        pos,
        edgelist=[(u, v) for u, v, _ in edges],
        width=0.5 + 4 * relative,
        edge_color=["0.35" if names[0] in (u, v) else "0.7" for u, v, _ in edges],
        alpha=0.8,
        ax=ax,
    )
    nx.draw_networkx_nodes(
        graph,
        pos,
        nodelist=names,
        node_color=["tab:red", *["lightsteelblue"] * (len(names) - 1)],
        node_size=[600, *[300] * (len(names) - 1)],
        ax=ax,
    )
    nx.draw_networkx_labels(graph, pos, labels={n: n for n in names[1:]}, font_size=8, ax=ax)
    nx.draw_networkx_labels(graph, pos, labels={gene: gene}, font_size=8, font_weight="bold", ax=ax)
    ax.set_title(f"{gene} and its top {partners.size} partners ({key})")
    ax.set_axis_off()
    ax.margins(0.1)
    return _finish(ax, show=show, return_fig=return_fig)


@doc_params(show_ax=DOC_SHOW_AX_SIZED, returns_ax=DOC_RETURNS_AX, key_added=doc_key_added_read("`bf.tl.gene_programs`"))
def gene_programs(
    adata: AnnData,
    program: str,
    *,
    key_added: str = "bioformers",
    cmap: str = "RdBu_r",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Heatmap of the gene-embedding similarity within one gene program.

    Genes are ordered by average-linkage hierarchical clustering on ``1 - similarity`` (with
    optimal leaf ordering), so tighter sub-modules sit together. The colour scale is the
    full cosine range [-1, 1], centred on 0.

    Parameters
    ----------
    adata
        Annotated data with the output of `bf.tl.gene_programs`.
    program
        A program label of ``adata.var[f"{key_added}_program"]`` (``"0"`` is the largest);
        ``"unassigned"`` is no program.
    {key_added}
    cmap
        Colormap of the heatmap; a diverging one suits the signed similarity.
    {show_ax}

    Returns
    -------
    {returns_ax}

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=50, n_vars=30)
    >>> # stands in for bf.tl.gene_programs(adata, model):
    >>> emb = np.random.default_rng(0).normal(size=(30, 8))
    >>> emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    >>> adata.varp["bioformers_similarity"] = emb @ emb.T
    >>> adata.var["bioformers_program"] = pd.Categorical(["0"] * 12 + ["1"] * 10 + ["unassigned"] * 8)
    >>> ax = bf.pl.gene_programs(adata, "0", show=False)
    >>> ax.get_title()
    'program 0 (12 genes)'
    """
    keys = Keys(key_added)
    for where, key, present in (
        ("adata.var", keys.program, adata.var.columns),
        ("adata.varp", keys.similarity, adata.varp.keys()),
    ):
        if key not in present:
            raise KeyError(f"`{where}[{key!r}]` not found.{did_you_mean(key, present)} Run {_PROGRAMS_TOOL} first.")
    labels = adata.var[keys.program].astype(str)
    available = sorted(set(labels) - {_UNASSIGNED}, key=lambda p: (len(p), p))
    program = str(program)
    if program == _UNASSIGNED:
        raise ValueError(
            f"{_UNASSIGNED!r} holds the genes of no program (too small to keep); "
            f"pick one of the programs: {', '.join(available)}."
        )
    if program not in available:
        raise KeyError(
            f"Unknown program {program!r} in `adata.var[{keys.program!r}]`. Available programs: {', '.join(available)}."
        )
    index = np.flatnonzero(labels.to_numpy() == program)
    values = _submatrix(adata.varp[keys.similarity], index)
    order = _cluster_order(values)
    index, values = index[order], values[np.ix_(order, order)]
    ax = _heatmap(
        values,
        adata.var_names[index],
        ax=ax,
        cmap=cmap,
        title=f"program {program} ({index.size} genes)",
        cbar_label="cosine similarity",
        vmin=-1,
        vmax=1,
    )
    return _finish(ax, show=show, return_fig=return_fig)


def _check_top(top: int) -> None:
    if not isinstance(top, int | np.integer) or isinstance(top, bool) or top < 1:
        raise ValueError(f"`top={top!r}` must be a positive number of genes.")


def _head_mean(matrix) -> np.ndarray:
    """A gene x gene matrix; one kept per head (``keep_heads=True``), ``(n, n, n_heads)``, is averaged."""
    matrix = matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)
    return matrix.mean(axis=-1) if matrix.ndim == 3 else matrix


def _submatrix(matrix, index: np.ndarray) -> np.ndarray:
    """Dense ``matrix[index][:, index]``, reading no more of a sparse matrix than that."""
    if sparse.issparse(matrix):
        return sparse.csr_matrix(matrix)[index][:, index].toarray()
    return _head_mean(np.asarray(matrix)[np.ix_(index, index)])


def _partners(matrix, center: int, top: int) -> np.ndarray:
    """The `top` genes most linked to `center`, by ``max(W[center, j], W[j, center])``, strongest first."""
    if sparse.issparse(matrix):
        matrix = sparse.csr_matrix(matrix)
        row, column = matrix[center].toarray().ravel(), matrix[:, center].toarray().ravel()
    else:
        row, column = _head_mean(matrix[center]), _head_mean(matrix[:, center])
    score = np.maximum(row, column).astype(np.float64)
    score[center] = -np.inf
    return np.argsort(-score, kind="stable")[: min(top, score.size - 1)]


def _heatmap(
    values: np.ndarray,
    labels: Sequence[str],
    *,
    ax: Axes | None,
    cmap: str,
    title: str,
    cbar_label: str,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Axes:
    """Square gene x gene heatmap with gene names on both axes and a colorbar."""
    n = len(labels)
    if ax is None:
        side = min(14.0, 2.5 + 0.28 * n)
        _, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fontsize = min(10.0, max(4.0, 240 / max(n, 1)))
    ax.set_xticks(np.arange(n), labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(n), labels, fontsize=fontsize)
    ax.figure.colorbar(image, ax=ax, label=cbar_label, shrink=0.8)
    ax.grid(False)  # Scanpy's `set_figure_params` turns axes grids on, which would cut through the cells
    ax.set_title(title)
    return ax


def _cluster_order(similarity: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage clustering on ``1 - similarity``."""
    if similarity.shape[0] < 3:
        return np.arange(similarity.shape[0])
    distance = np.clip(1 - (similarity + similarity.T) / 2, 0, None)
    np.fill_diagonal(distance, 0)
    linkage = hierarchy.linkage(squareform(distance, checks=False), method="average", optimal_ordering=True)
    return hierarchy.leaves_list(linkage)


def _missing_attention(adata: AnnData, keys: Keys, group: str | None) -> str:
    if group is None:
        return (
            f"`adata.varp[{keys.attention!r}]` not found.{did_you_mean(keys.attention, adata.varp.keys())} "
            f"Run {_ATTENTION_TOOL} first."
        )
    groups = adata.uns.get(keys.attention, {}).get("params", {}).get("groups")
    known = f" Groups with a matrix: {', '.join(map(str, groups))}." if groups is not None and len(groups) else ""
    return (
        f"`adata.varp[{keys.attention_group(group)!r}]` not found: no attention GRN for group {group!r}.{known} "
        "Run `bf.tl.attention_grn(adata, model, groupby=...)` with the column that holds the group."
    )
