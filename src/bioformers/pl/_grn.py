"""Gene regulatory networks: attention between genes, a gene's strongest partners, gene programs."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from scipy import sparse
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from .._docs import DOC_RETURNS_AX, DOC_SHOW_AX_SIZED, doc_key_added_read, doc_params
from .._keys import Keys, safe_name
from .._validation import did_you_mean, shown
from ._utils import _finish, _gene_index

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_GRN_TOOL = "`bf.tl.grn(adata, model)`"
_ATTENTION_TOOL = "`bf.tl.attention_grn(adata, model)`"
_PROGRAMS_TOOL = "`bf.tl.gene_programs(adata, model)`"
_UNASSIGNED = "unassigned"

#: How the plots of this module choose and filter genes by detection, shared by their docstrings.
_DOC_MIN_DETECTION = """\
min_detection
    Leave out of the ranked genes (partners, most attended) those expressed in fewer than this
    fraction of the cells the matrix was computed from, as `bf.tl.attention_grn` recorded it
    (``var`` / ``varm["bioformers_attention_detected"]``). `None`: the threshold
    `bf.tl.attention_grn` used (its ``min_detection``, 5% by default); ``0`` ranks every gene.
    Matrices without a detection record (another `varp` key, e.g. the gene-embedding
    similarity) are not filtered."""


@dataclass
class _Network:
    """A gene x gene matrix of `varp`, what it is, and which genes may be ranked in it."""

    key: str
    matrix: object
    source: str  # e.g. "attention, all cells", for titles
    detected: np.ndarray | None  # fraction of cells expressing each gene, when recorded
    min_detection: float
    directed: bool = False  # rows regulate columns (`bf.tl.grn`): partners are the row's targets
    signed: bool = False

    @property
    def ranked(self) -> np.ndarray | None:
        """Genes that may be ranked (`None`: all)."""
        if self.detected is None or self.min_detection <= 0:
            return None
        return self.detected >= self.min_detection

    @property
    def filter_note(self) -> str:
        """The line a title adds when genes were left out, or ``""``."""
        ranked = self.ranked
        if ranked is None or ranked.all():
            return ""
        return f"not ranked: {np.count_nonzero(~ranked)} genes expressed in < {self.min_detection:.0%} of cells"

    def check_center(self, gene: str, index: int) -> None:
        """Warn when the gene a plot is centred on is too rarely expressed to be ranked itself."""
        ranked = self.ranked
        if ranked is not None and not ranked[index]:
            warnings.warn(
                f"{gene} is expressed in {self.detected[index]:.1%} of the cells of `varp[{self.key!r}]`, fewer than "
                f"`min_detection={self.min_detection:g}`: its attention averages few cells, so its partners may be "
                "noise.",
                UserWarning,
                stacklevel=3,
            )


def _attention_network(adata: AnnData, keys: Keys, group: str | None, min_detection: float | None) -> _Network:
    """The attention GRN over all cells or of one group (found by its label), with its detection record."""
    key = keys.attention if group is None else keys.attention_group(group)
    if key not in adata.varp and group is not None and f"{keys.attention}_{group}" in adata.varp:
        key = f"{keys.attention}_{group}"  # written before group labels were made safe
    if key not in adata.varp:
        raise KeyError(_missing_attention(adata, keys, group))
    return _network(adata, keys, key, min_detection)


def _grn_group_keys(adata: AnnData, keys: Keys) -> dict[str, str]:
    """Group label -> ``varp`` key of the per-group GRNs of `bf.tl.grn`, as its record lists them."""
    groups = adata.uns.get(keys.grn, {}).get("groups", {})
    return {str(label): str(key) for label, key in zip(groups.get("label", []), groups.get("key", []), strict=True)}


def _network(adata: AnnData, keys: Keys, key: str, min_detection: float | None) -> _Network:
    """The matrix of ``varp[key]`` and, for an attention GRN of `bf.tl.attention_grn`, its detection record."""
    grn_groups = {group_key: label for label, group_key in _grn_group_keys(adata, keys).items()}
    if key == keys.grn or key in grn_groups:
        params = adata.uns[keys.grn].get("params", {}) if keys.grn in adata.uns else {}
        source = f"{params.get('method', 'GRN')}, {grn_groups.get(key, 'all cells')}"
        return _Network(key, adata.varp[key], source, None, 0.0, directed=True, signed=bool(params.get("signed")))
    record = adata.uns.get(keys.attention, {})
    recorded = float(record.get("params", {}).get("min_detection", 0.0))
    threshold = recorded if min_detection is None else float(min_detection)
    if not 0 <= threshold <= 1:
        raise ValueError(f"`min_detection={min_detection!r}` must be a fraction of cells, from 0 to 1.")
    detected, source = None, key
    if key == keys.attention:
        source = "attention, all cells"
        if keys.attention_detected in adata.var:
            detected = adata.var[keys.attention_detected].to_numpy(dtype=np.float64)
    elif key == keys.similarity:
        source = "gene-embedding similarity"
    else:
        groups = record.get("groups", {})
        labels, group_keys = list(groups.get("label", [])), list(groups.get("key", []))
        if key in group_keys:
            label = str(labels[group_keys.index(key)])
            source = f"attention, {label}"
            table = adata.varm[keys.attention_detected] if keys.attention_detected in adata.varm else None
            column = safe_name(label)
            if table is not None and hasattr(table, "columns") and column in table.columns:
                detected = np.asarray(table[column], dtype=np.float64)
    return _Network(key, adata.varp[key], source, detected, threshold)


@doc_params(
    show_ax=DOC_SHOW_AX_SIZED,
    returns_ax=DOC_RETURNS_AX,
    key_added=doc_key_added_read("`bf.tl.attention_grn`"),
    min_detection=_DOC_MIN_DETECTION,
)
def attention(
    adata: AnnData,
    genes: str | Sequence[str] | None = None,
    *,
    top: int = 10,
    group: str | None = None,
    min_detection: float | None = None,
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
        strongly is kept. A group's matrix stored sparse (``top_k``) offers only its stored pairs.
        `None`: the `top` genes that receive the most attention (column sums), most first.
        Partners and most attended genes are taken among the genes expressed in at least
        `min_detection` of the cells.
    top
        Number of partners (single gene) or of genes (`genes=None`).
    group
        A group of the ``groupby`` column passed to `bf.tl.attention_grn`, by its label (e.g.
        ``"CD14+ Monocytes"``): plot that group's matrix instead of the one over all cells.
    {min_detection}
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
    ('attention around gene_3 (all cells)', 'attending gene (query)')
    """
    _check_top(top)
    keys = Keys(key_added)
    network = _attention_network(adata, keys, group, min_detection)
    matrix, ranked = network.matrix, network.ranked
    where = "all cells" if group is None else str(group)

    if genes is None:
        received = _column_sums(matrix)
        if ranked is not None:
            received = np.where(ranked, received, -np.inf)
        index = np.argsort(-received, kind="stable")[: min(top, np.count_nonzero(np.isfinite(received)))]
        title = f"attention, most attended genes ({where})"
        note = network.filter_note
    elif isinstance(genes, str):
        center = _gene_index(adata, [genes])[0]
        network.check_center(genes, center)
        index = np.concatenate([[center], _partners(matrix, center, top, ranked)])
        title = f"attention around {genes} ({where})"
        note = network.filter_note
    else:
        index = _gene_index(adata, genes)
        title = f"attention among {index.size} genes ({where})"
        note = ""

    values = _submatrix(matrix, index)
    label = "attention" + (f" (top {_top_k_of(adata, keys)} per row stored)" if sparse.issparse(matrix) else "")
    ax = _heatmap(values, adata.var_names[index], ax=ax, cmap=cmap, title=title, cbar_label=label, note=note)
    ax.set_ylabel("attending gene (query)")
    ax.set_xlabel("attended gene (key)")
    return _finish(ax, show=show, return_fig=return_fig)


@doc_params(
    show_ax=DOC_SHOW_AX_SIZED,
    returns_ax=DOC_RETURNS_AX,
    min_detection=_DOC_MIN_DETECTION,
)
def grn(
    adata: AnnData,
    gene: str,
    *,
    key: str | None = None,
    group: str | None = None,
    top: int = 20,
    min_detection: float | None = None,
    key_added: str = "bioformers",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Network of one gene and its strongest partners in a gene x gene GRN.

    For a GRN of `bf.tl.grn` (rows regulate columns), `gene` is a regulator and its partners are
    its `top` targets, ranked by ``|W[gene, target]|``; arrows point from regulator to target, and
    for a signed GRN red means the regulator raises the target, blue that it lowers it. For
    other matrices (attention, gene-embedding similarity) partners are ranked as in
    :func:`attention`, by ``max(W[g, j], W[j, g])``, and edges are undirected with that weight.
    Edges join `gene` to each partner, and two partners where their weight (absolute, for a signed
    GRN) is at least that of the weakest partner of `gene`, the strongest of those first and at
    most as many as there are partners: the modules among the partners without clutter (partner
    edges are drawn lighter). Edge width grows linearly with the weight, from the weakest to the
    strongest edge drawn. The layout (Kamada-Kawai, on the number of edges between genes) has no
    randomness, so the same GRN always gives the same picture.

    Parameters
    ----------
    adata
        Annotated data with the GRN in `varp`.
    gene
        The centre gene, highlighted.
    key
        Key of `varp` holding the GRN. Default: the first present of the GRN of `bf.tl.grn`
        ``f"{{key_added}}_grn"``, the attention GRN ``f"{{key_added}}_attention"`` of
        `bf.tl.attention_grn` and the gene-embedding similarity ``f"{{key_added}}_similarity"`` of
        `bf.tl.gene_programs`.
    group
        Instead of `key`: a group of the ``groupby`` column passed to `bf.tl.grn` (looked up first)
        or `bf.tl.attention_grn`, by its label (e.g. ``"B cells"``); draws that group's GRN. A
        matrix stored sparse (``top_k``) offers only its stored pairs as partners.
    top
        Number of partners drawn.
    {min_detection}
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
    'gene_3 and its top 10 partners (attention, all cells)'
    >>> model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, n_heads=2, max_epochs=1, batch_size=32)
    >>> bf.tl.grn(adata, model, n_cells=20)
    >>> ax = bf.pl.grn(adata, "gene_3", top=5, show=False)
    >>> ax.get_title().splitlines()[0]
    'gene_3 and its top 5 targets (knockout, all cells)'
    """
    import networkx as nx  # networkx comes with scanpy; only this plot needs it

    _check_top(top)
    keys = Keys(key_added)
    if key is not None and group is not None:
        raise ValueError("Pass `key=` (any GRN of `adata.varp`) or `group=` (a group's GRN), not both.")
    if group is not None:
        grn_key = _grn_group_keys(adata, keys).get(str(group))
        if grn_key is not None:
            network = _network(adata, keys, grn_key, min_detection)
        else:
            network = _attention_network(adata, keys, group, min_detection)
    else:
        if key is None:
            key = next((k for k in (keys.grn, keys.attention, keys.similarity) if k in adata.varp), None)
            if key is None:
                raise KeyError(
                    f"None of `adata.varp[{keys.grn!r}]`, `[{keys.attention!r}]` or `[{keys.similarity!r}]` found. "
                    f"Run {_GRN_TOOL}, {_ATTENTION_TOOL} or {_PROGRAMS_TOOL} first, or pass `key=`."
                )
        elif key not in adata.varp:
            raise KeyError(
                f"`adata.varp[{key!r}]` not found. Available keys of `adata.varp`: {list(adata.varp)}."
                f"{did_you_mean(key, adata.varp.keys())}"
            )
        network = _network(adata, keys, key, min_detection)
    matrix = network.matrix
    center = _gene_index(adata, [gene])[0]
    network.check_center(gene, center)
    if network.directed:
        partners = _targets(adata, network, gene, center, top)
    else:
        partners = _partners(matrix, center, top, network.ranked)
    index = np.concatenate([[center], partners])
    values = _submatrix(matrix, index)
    strength = np.abs(values) if network.directed else np.maximum(values, values.T)
    threshold = strength[0, 1:].min() if partners.size else np.inf

    names = list(adata.var_names[index])
    graph = nx.DiGraph() if network.directed else nx.Graph()
    graph.add_nodes_from(names)
    for j in range(1, len(names)):
        graph.add_edge(names[0], names[j], weight=float(values[0, j] if network.directed else strength[0, j]))
    # among partners, the strongest links at least as strong as the weakest partner, at most one per partner
    pairs = (
        itertools.permutations(range(1, len(names)), 2)
        if network.directed
        else itertools.combinations(range(1, len(names)), 2)
    )
    among = [(i, j) for i, j in pairs if strength[i, j] >= threshold and strength[i, j] > 0]
    among.sort(key=lambda pair: -strength[pair])
    for i, j in among[: partners.size]:
        graph.add_edge(names[i], names[j], weight=float(values[i, j] if network.directed else strength[i, j]))

    # Widths span the weakest to the strongest edge drawn: attention weights are often all close
    # to 1 / n_vars, so widths proportional to the weight itself would all look the same.
    edges = list(graph.edges(data="weight"))
    drawn = np.abs([w for *_, w in edges])
    spread = np.ptp(drawn) if drawn.size else 0.0
    relative = (drawn - drawn.min()) / spread if spread > 0 else np.full(drawn.size, 0.5)
    # Kamada-Kawai on hop distances: deterministic, and it keeps a module of partners apart from
    # the partners linked to `gene` alone, where a spring layout piles the module's labels up
    pos = nx.kamada_kawai_layout(graph.to_undirected(as_view=True), weight=None)

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    sizes = [600, *[300] * (len(names) - 1)]
    nx.draw_networkx_edges(
        graph,
        pos,
        edgelist=[(u, v) for u, v, _ in edges],
        width=0.5 + 4 * relative,
        edge_color=[_edge_colour(network, names[0] in (u, v), w) for u, v, w in edges],
        alpha=0.8,
        ax=ax,
        **({"arrows": True, "arrowstyle": "-|>", "arrowsize": 12, "node_size": sizes} if network.directed else {}),
    )
    nx.draw_networkx_nodes(
        graph,
        pos,
        nodelist=names,
        node_color=["tab:red" if not network.signed else "gold", *["lightsteelblue"] * (len(names) - 1)],
        node_size=sizes,
        ax=ax,
    )
    nx.draw_networkx_labels(graph, pos, labels={n: n for n in names[1:]}, font_size=8, ax=ax)
    nx.draw_networkx_labels(graph, pos, labels={gene: gene}, font_size=8, font_weight="bold", ax=ax)
    notes = [network.filter_note] if network.filter_note else []
    if network.signed:
        notes.append("red: raises the target, blue: lowers it")
    kind = "targets" if network.directed else "partners"
    ax.set_title(f"{gene} and its top {partners.size} {kind} ({network.source})" + "".join(f"\n{n}" for n in notes))
    ax.set_axis_off()
    ax.margins(0.1)
    return _finish(ax, show=show, return_fig=return_fig)


def _edge_colour(network: _Network, from_center: bool, weight: float) -> str:
    """Grey for unsigned GRNs, red (raises) or blue (lowers) for signed ones; lighter between partners."""
    if not network.signed:
        return "0.35" if from_center else "0.7"
    if weight >= 0:
        return "tab:red" if from_center else "lightcoral"
    return "tab:blue" if from_center else "cornflowerblue"


def _targets(adata: AnnData, network: _Network, gene: str, center: int, top: int) -> np.ndarray:
    """The `top` targets of regulator `center` in a GRN of `bf.tl.grn`, by ``|W[center, j]|``, strongest first."""
    matrix = network.matrix
    row = np.abs(matrix[center].toarray().ravel() if sparse.issparse(matrix) else np.asarray(matrix[center]))
    row[center] = 0
    if not row.any():
        with_rows = adata.var_names[np.flatnonzero(np.abs(_head_mean(matrix)).sum(axis=1))]
        raise ValueError(
            f"{gene}'s row of `adata.varp[{network.key!r}]` is all zero: it was not among the `regulators` of "
            f"`bf.tl.grn`, or none of the cells read expresses it. Rerun `bf.tl.grn` with {gene!r} in `regulators`"
            + (f", or plot a regulator with a row (e.g. {', '.join(with_rows[:3])})." if with_rows.size else ".")
        )
    return np.argsort(-row, kind="stable")[: min(top, np.count_nonzero(row))]


@doc_params(show_ax=DOC_SHOW_AX_SIZED, returns_ax=DOC_RETURNS_AX, key_added=doc_key_added_read("`bf.tl.gene_programs`"))
def gene_programs(
    adata: AnnData,
    program: str,
    *,
    max_genes: int | None = 50,
    key_added: str = "bioformers",
    cmap: str = "RdBu_r",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Heatmap of the gene-embedding similarity within one gene program.

    A program larger than `max_genes` is shown by its `max_genes` most central genes: those with
    the highest mean similarity to the rest of the program (its core; the title says how many of
    how many). Genes are ordered by average-linkage hierarchical clustering on ``1 - similarity``
    (with optimal leaf ordering), so tighter sub-modules sit together. The colour scale is the
    full cosine range [-1, 1], centred on 0.

    Parameters
    ----------
    adata
        Annotated data with the output of `bf.tl.gene_programs`.
    program
        A program label of ``adata.var[f"{key_added}_program"]`` (``"0"`` is the largest);
        ``"unassigned"`` is no program.
    max_genes
        Most genes shown, so that every gene name stays readable; `None` shows the whole program.
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
    >>> ax = bf.pl.gene_programs(adata, "0", max_genes=5, show=False)
    >>> ax.get_title()
    'program 0: the 5 most central of 12 genes'
    """
    if max_genes is not None and (not isinstance(max_genes, int | np.integer) or max_genes < 2):
        raise ValueError(f"`max_genes={max_genes!r}` must be at least 2 genes, or None to show the whole program.")
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
    title = f"program {program} ({index.size} genes)"
    if max_genes is not None and index.size > max_genes:
        # the core: highest mean similarity to the other genes of the program (self-similarity left out)
        centrality = (values.sum(axis=1) - np.diag(values)) / (index.size - 1)
        core = np.sort(np.argsort(-centrality, kind="stable")[:max_genes])
        title = f"program {program}: the {max_genes} most central of {index.size} genes"
        index, values = index[core], values[np.ix_(core, core)]
    order = _cluster_order(values)
    index, values = index[order], values[np.ix_(order, order)]
    ax = _heatmap(
        values,
        adata.var_names[index],
        ax=ax,
        cmap=cmap,
        title=title,
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


def _column_sums(matrix) -> np.ndarray:
    """Column sums of a dense, per-head or sparse gene x gene matrix (heads averaged), ``float64``."""
    if sparse.issparse(matrix):
        return np.asarray(matrix.sum(axis=0), dtype=np.float64).ravel()
    return _head_mean(matrix).sum(axis=0, dtype=np.float64)


def _submatrix(matrix, index: np.ndarray) -> np.ndarray:
    """Dense ``matrix[index][:, index]``, reading no more of a sparse matrix than that."""
    if sparse.issparse(matrix):
        return sparse.csr_matrix(matrix)[index][:, index].toarray()
    return _head_mean(np.asarray(matrix)[np.ix_(index, index)])


def _partners(matrix, center: int, top: int, ranked: np.ndarray | None = None) -> np.ndarray:
    """The `top` genes most linked to `center`, by ``max(W[center, j], W[j, center])``, strongest first.

    Only genes where `ranked` is true are candidates; in a sparse matrix, only the stored pairs.
    """
    if sparse.issparse(matrix):
        matrix = sparse.csr_matrix(matrix)
        row, column = matrix[center].toarray().ravel(), matrix[:, center].toarray().ravel()
        stored = np.zeros(row.size, dtype=bool)
        stored[matrix[center].indices] = True
        stored[sparse.csc_matrix(matrix[:, center]).indices] = True
    else:
        row, column = _head_mean(matrix[center]), _head_mean(matrix[:, center])
        stored = np.ones(row.size, dtype=bool)
    score = np.maximum(row, column).astype(np.float64)
    candidate = stored if ranked is None else stored & ranked
    candidate[center] = False
    score[~candidate] = -np.inf
    return np.argsort(-score, kind="stable")[: min(top, np.count_nonzero(candidate))]


def _top_k_of(adata: AnnData, keys: Keys) -> str:
    """The ``top_k`` that `bf.tl.attention_grn` recorded, for a label ("k" when unknown)."""
    return str(adata.uns.get(keys.attention, {}).get("params", {}).get("top_k", "k"))


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
    note: str = "",
) -> Axes:
    """Square gene x gene heatmap with gene names on both axes and a colorbar; `note` is a smaller second title line."""
    n = len(labels)
    if ax is None:
        side = min(14.0, 2.5 + 0.28 * n)
        _, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    # a label may take most of its row's height: the axes' height in points over the rows
    height = ax.get_position().height * ax.figure.get_figheight() * 72
    fontsize = float(np.clip(0.6 * height / max(n, 1), 4.0, 10.0))
    ax.set_xticks(np.arange(n), labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(n), labels, fontsize=fontsize)
    ax.figure.colorbar(image, ax=ax, label=cbar_label, shrink=0.8)
    ax.grid(False)  # Scanpy's `set_figure_params` turns axes grids on, which would cut through the cells
    ax.set_title(f"{title}\n{note}" if note else title)
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
    record = adata.uns.get(keys.attention, {})
    labels = record.get("groups", {}).get("label")
    if labels is None:
        labels = record.get("params", {}).get("groups")
    labels = [] if labels is None else [str(label) for label in labels]
    known = f" Groups with a matrix: {shown(labels, 20)}.{did_you_mean(group, labels)}" if labels else ""
    return (
        f"`adata.varp[{keys.attention_group(group)!r}]` not found: no attention GRN for group {group!r}.{known} "
        "Run `bf.tl.attention_grn(adata, model, groupby=...)` with the column that holds the group."
    )
