"""Docstring paragraphs that many public functions share, and :func:`doc_params`, which fills them in.

A docstring names a shared paragraph with a line that holds nothing but ``{name}``, indented
like the text it stands for (a parameter's name in a Parameters section, for instance);
``@doc_params(name=PARAGRAPH)`` replaces that line with the paragraph, indented the same.
E.g. ``@doc_params(show_ax=DOC_SHOW_AX, returns_ax=DOC_RETURNS_AX)`` on a plot whose
Parameters section ends with a line ``{show_ax}`` and whose Returns section is a line
``{returns_ax}``.

Only such whole-line placeholders are filled, so every other brace in a docstring (a dict in
an example, ``f"{key_added}_binned"``) stays as written and needs no escaping. The paragraphs
are numpydoc: a parameter's name on one line, its description indented by 4 spaces below.
:data:`DOC_VIEW` is a single sentence, for a line of its own inside a description. The dicts
(:data:`DOC_WRITES`, :data:`DOC_QUERY_TOOL`, :func:`doc_tokens`) bundle the placeholders that a
family of functions shares, passed as ``@doc_params(**DOC_WRITES, ...)``.
"""

from __future__ import annotations

import re
from textwrap import fill, indent
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

_F = TypeVar("_F", bound="Callable")

#: A line that holds only ``{name}``: group 1 is its indentation, group 2 the name.
_PLACEHOLDER = re.compile(r"^([ ]*)\{([A-Za-z_]\w*)\}[ ]*$", re.MULTILINE)

# Plots (`bf.pl`) --------------------------------------------------------------------------------

#: ``ax`` of a plot that draws a new figure of a fixed size.
DOC_AX = """\
ax
    Axes to draw into; a new figure by default."""

#: ``ax`` of a plot whose new figure grows with the number of genes shown.
DOC_AX_SIZED = """\
ax
    Axes to draw into; a new figure, sized to the number of genes, by default."""

#: ``show`` and ``return_fig`` of every plot (Scanpy's conventions).
DOC_SHOW = """\
show
    Show the plot and return nothing. Default: show in an interactive session
    (when Scanpy's `settings.autoshow` is on), otherwise return the Axes.
return_fig
    Return the Figure instead of the Axes."""

#: ``ax``, ``show`` and ``return_fig`` of a plot that draws a new figure of a fixed size.
DOC_SHOW_AX = f"{DOC_AX}\n{DOC_SHOW}"

#: ``ax``, ``show`` and ``return_fig`` of a plot whose new figure grows with the number of genes.
DOC_SHOW_AX_SIZED = f"{DOC_AX_SIZED}\n{DOC_SHOW}"

#: The Returns entry of a plot that draws into one Axes.
DOC_RETURNS_AX = """\
:class:`~matplotlib.axes.Axes`, :class:`~matplotlib.figure.Figure` or None
    The Axes, the Figure if `return_fig`, or None if shown."""


def doc_key_added_read(tool: str) -> str:
    """``key_added`` of a function that reads what ``tool`` (e.g. ``"`bf.tl.predict`"``) wrote."""
    return f'key_added\n    Base key used by {tool} (default ``"bioformers"``).'


# Perturbations (`bf.metrics`, `bf.pl`) ----------------------------------------------------------

#: ``perturbation_key`` and ``control`` of the functions that read a perturbation screen.
DOC_PERTURBATION_KEY = """\
perturbation_key
    Column of ``obs`` with the control label or the perturbation of each cell.
control
    Label of the control cells."""


def doc_layer_lognorm(name: str = "adata") -> str:
    """``layer`` of a function that reads log-normalised expression from the AnnData argument ``name``."""
    return f"layer\n    Layer of `{name}` with the log-normalised expression; `None`: `{name}.X`."


# Tools (`bf.tl`) and the model methods behind them ------------------------------------------------

#: The sentence on views of a tool that writes into ``adata`` unless ``copy=True``: a line of its
#: own at the end of ``adata``'s description.
DOC_VIEW = "A view is taken only with ``copy=True``; otherwise call ``.copy()`` first."

#: ``adata`` of a tool that reads cells with exactly the model's genes and may write into them.
DOC_ADATA = f"""\
adata
    Cells with exactly the model's genes, in the model's order; in memory or backed.
    {DOC_VIEW}"""

#: ``model`` of a tool that needs a trained model.
DOC_MODEL = """\
model
    A trained :class:`bioformers.BioFormer`."""

#: ``layer`` of a tool that bins raw counts when the binned layer is missing.
DOC_LAYER = """\
layer
    Layer with raw counts, used when binning is needed; ``None`` uses ``adata.X``."""

#: ``gene_symbols`` and ``min_gene_coverage`` of a tool that matches genes to the model's by name.
DOC_GENE_MATCHING = """\
gene_symbols
    Column of ``adata.var`` holding the gene names the model knows (e.g. ``"feature_name"``);
    ``None`` matches ``adata.var_names``.
min_gene_coverage
    Smallest fraction of the model's genes that must be found in ``adata``."""

#: ``batch_size`` of a tool or method that runs the network over cells.
DOC_BATCH_SIZE = """\
batch_size
    Cells per forward pass."""

#: ``chunk_size`` of a tool that streams a backed AnnData.
DOC_CHUNK_SIZE = """\
chunk_size
    Cells read and binned at a time from a backed AnnData; ``None``: 4,096."""

#: ``batch_size`` and ``chunk_size`` of a tool that streams a backed AnnData through the network.
DOC_BATCH_CHUNK_SIZE = f"{DOC_BATCH_SIZE}\n{DOC_CHUNK_SIZE}"

#: ``key_added`` of a tool that writes results into the AnnData.
DOC_KEY_ADDED = """\
key_added
    Base key of everything written."""

#: ``key_added`` of a tool that returns a new AnnData.
DOC_KEY_ADDED_RETURNED = """\
key_added
    Base key of what the returned AnnData holds."""

#: ``copy`` of a tool that writes results into the AnnData.
DOC_COPY = """\
copy
    Return a modified copy instead of writing into ``adata``."""

#: ``key_added`` and ``copy`` of a tool that writes results into the AnnData.
DOC_KEY_ADDED_COPY = f"{DOC_KEY_ADDED}\n{DOC_COPY}"

#: The Returns entry of a tool with ``copy``; the fields it sets follow, indented by 4 more.
DOC_RETURNS_COPY = """\
:class:`~anndata.AnnData` or None
    A copy of ``adata`` with the results if ``copy=True``, else `None`. Sets (``bioformers`` in
    the names is ``key_added``):"""

#: The field of the Returns section of a tool that bins a query like the training data.
DOC_BINNED_WRITTEN = """\
``adata.layers['bioformers_binned']``, ``adata.uns['bioformers_binned']``
    The value tokens and their record, binned like the training data; only when it binned."""

#: The placeholders of a tool that writes into ``adata`` unless ``copy=True``: ``{key_added_copy}``
#: in its Parameters and ``{returns_copy}`` in its Returns; ``@doc_params(**DOC_WRITES, ...)``.
DOC_WRITES = {"key_added_copy": DOC_KEY_ADDED_COPY, "returns_copy": DOC_RETURNS_COPY}

#: The placeholders of a tool that applies the model to a query whose genes it matches by name
#: (:func:`bioformers.tl.embed`, :func:`bioformers.tl.predict`): :data:`DOC_WRITES` and ``{view}``,
#: ``{model}``, ``{layer}``, ``{gene_matching}``, ``{batch_chunk_size}``, ``{binned_written}``.
DOC_QUERY_TOOL = {
    **DOC_WRITES,
    "view": DOC_VIEW,
    "model": DOC_MODEL,
    "layer": DOC_LAYER,
    "gene_matching": DOC_GENE_MATCHING,
    "batch_chunk_size": DOC_BATCH_CHUNK_SIZE,
    "binned_written": DOC_BINNED_WRITTEN,
}

#: ``batch_size`` of a function that generates cells.
DOC_BATCH_SIZE_GENERATE = """\
batch_size
    Cells generated at once."""

#: ``seed`` and ``batch_size`` of a model's method that generates cells.
DOC_DRAWS = f"""\
seed
    Seed of the draws.
{DOC_BATCH_SIZE_GENERATE}"""

#: ``batch_size`` of a function that trains.
DOC_MINIBATCH = """\
batch_size
    Cells per minibatch."""

#: ``lr`` of a function that trains.
DOC_LR = """\
lr
    Peak learning rate."""

#: ``batch_size`` of perturbation fine-tuning, whose minibatches are control -> perturbed pairs.
DOC_PAIRS_BATCH_SIZE = """\
batch_size
    Pairs per minibatch."""

#: ``checkpoint_every`` of a function that trains with checkpoints.
DOC_CHECKPOINT_EVERY = """\
checkpoint_every
    Epochs between checkpoints."""

# Models (`bioformers.BioFormer`, ...) and their networks (`bioformers.module`) --------------------

#: ``adata`` of a model's constructor.
DOC_ADATA_REGISTERED = """\
adata
    AnnData registered with :meth:`setup_anndata`.
registry
    Instead of ``adata``: the scvi-tools registry of data set up like it (``model.registry_``), as
    :meth:`load` passes it for a model directory without its data (then ``n_bins`` is needed). A
    model built this way reads cells only as queries of the tools; it cannot train."""

#: ``**kwargs`` of a model's ``setup_anndata``.
DOC_SETUP_KWARGS = """\
**kwargs
    Passed to scvi-tools' :meth:`~scvi.data.AnnDataManager.register_fields` (e.g.
    ``source_registry``, which :meth:`load` uses to register data as at training)."""

#: The Returns entry of a model's ``setup_anndata``; the fields it sets follow, indented by 4 more
#: and ending with :data:`DOC_SCVI_FIELDS`.
DOC_RETURNS_SETUP = """\
None
    Registers ``adata`` with scvi-tools, which sets:"""

#: The last fields of the Returns section of a model's ``setup_anndata``: those every model sets.
DOC_SCVI_FIELDS = """\
``adata.obs['_scvi_perturbation']`` : ``int8``
    Codes of ``perturbation_key``, when given.
``adata.uns['_scvi_uuid']``, ``adata.uns['_scvi_manager_uuid']`` : :class:`str`
    The identifiers that tie ``adata`` to its registration."""

#: ``kind`` of a model's method about one of its registered condition columns.
DOC_CONDITION_KIND = """\
kind
    ``"labels"`` or ``"batch"``."""

#: ``n_cells`` of a decoder's method that generates cells.
DOC_N_CELLS_DRAWN = """\
n_cells
    Number of cells to draw."""

#: ``n_hidden`` of the transformer over gene tokens.
DOC_N_HIDDEN = """\
n_hidden
    Width of the token representations, and so of the cell embedding."""

#: ``n_layers`` of the transformer over gene tokens.
DOC_N_LAYERS = """\
n_layers
    Number of transformer blocks."""

#: ``n_heads`` of the transformer over gene tokens.
DOC_N_HEADS = """\
n_heads
    Attention heads per block."""

#: ``max_seq_len`` of the encoder over gene tokens.
DOC_MAX_SEQ_LEN = """\
max_seq_len
    Longest sequence (CLS included). Cells with more genes keep every expressed gene plus
    sampled unexpressed ones."""

#: ``value_encoder`` of the transformer over gene tokens.
DOC_VALUE_ENCODER = """\
value_encoder
    ``"linear"`` on the bin index or ``"embedding"``: a learned vector per bin."""

#: The size of the encoder over gene tokens, in the order of its arguments.
DOC_NETWORK = f"""\
{DOC_N_HIDDEN}
{DOC_N_LAYERS}
{DOC_N_HEADS}
dropout
    Dropout in attention and feed-forward layers.
{DOC_MAX_SEQ_LEN}
{DOC_VALUE_ENCODER}"""

#: ``mask_ratio`` of masked gene modelling.
DOC_MASK_RATIO = """\
mask_ratio
    Masked gene modelling: fraction of each cell's positions that are masked."""

#: ``nonzero_ratio`` of masked gene modelling.
DOC_NONZERO_RATIO = """\
nonzero_ratio
    Fraction of the masked positions drawn from expressed genes (the rest are unexpressed), so
    the model is not rewarded for predicting zero everywhere."""

#: The objective of the encoder over gene tokens, in the order of its arguments.
DOC_OBJECTIVE = f"""\
{DOC_MASK_RATIO}
{DOC_NONZERO_RATIO}
expression_weight
    Weight of the loss of the expression decoded from CLS; 0 trains masked modelling alone."""

#: ``n_bins`` of a network that reads bins.
DOC_N_BINS = """\
n_bins
    Number of bin values (largest bin index + 1)."""

#: ``n_encoder_hidden`` and ``dropout`` of the latent-token diffusion model.
DOC_DIFFUSION_WIDTHS = """\
n_encoder_hidden
    Width of the autoencoder's hidden layers.
dropout
    Dropout in the denoiser."""

#: ``condition_dropout`` of the latent-token diffusion model.
DOC_CONDITION_DROPOUT = """\
condition_dropout
    Probability that a training cell's conditions are all replaced by "none", and, separately,
    that each one is."""

#: ``bins`` of a network method that reads binned cells.
DOC_BINS = """\
bins
    Binned cells, ``(cells, n_genes)``."""

#: The Returns entry of a network's ``embed``.
DOC_RETURNS_EMBED = """\
:class:`~torch.Tensor`
    ``(cells, n_hidden)``."""

#: ``external`` of a network's ``external_tokens``.
DOC_EXTERNAL = """\
external
    Categories, ``(cells, length)``."""

#: ``inference_outputs`` and ``generative_outputs`` of a network's ``loss``.
DOC_LOSS_OUTPUTS = """\
inference_outputs, generative_outputs
    What :meth:`inference` and :meth:`generative` returned."""

#: The parameters of a network's ``loss``.
DOC_LOSS_INPUTS = f"""\
tensors
    The minibatch.
{DOC_LOSS_OUTPUTS}"""


def doc_returns_loss(metrics: str) -> str:
    """The Returns entry of a network's ``loss``, with ``metrics`` (rST naming its extra metrics) filled in."""
    description = fill(f"The loss per cell and its mean; {metrics} as extra metrics.", width=96, break_on_hyphens=False)
    return f":class:`~scvi.module.base.LossOutput`\n{indent(description, '    ')}"


# Layers (`bioformers.nn`) -------------------------------------------------------------------------

#: ``n_heads`` of a layer with multi-head attention.
DOC_NN_N_HEADS = """\
n_heads
    Number of attention heads; must divide ``n_hidden``."""

# Value tokens (`bf.pp`) ---------------------------------------------------------------------------

#: ``X`` of a function on a count matrix.
DOC_X_COUNTS = """\
X
    Counts, sparse or dense (cells x genes)."""

#: ``layer`` of a function that makes value tokens from counts.
DOC_COUNTS_LAYER = """\
layer
    Layer holding the counts; `None` uses ``adata.X``."""

#: The ``target_sum`` Returns entry of the arithmetic of value binning on a matrix.
DOC_RETURNS_TARGET_SUM = """\
target_sum : float or None
    The total every row was scaled to; `None` when nothing was scaled."""

#: ``key_added`` of a function that writes value tokens.
DOC_TOKENS_KEY_ADDED = """\
key_added
    Base key: results go to ``adata.layers[f"{key_added}_binned"]`` and
    ``adata.uns[f"{key_added}_binned"]``."""


def doc_tokens(made: str, making: str) -> dict[str, str]:
    """``adata``, ``copy`` and the Returns entry of a function that writes value tokens into ``adata``.

    ``made`` and ``making`` name what it does (``"binned"``, ``"binning"``); the keys of the
    result are the placeholders ``tokens_adata``, ``tokens_copy`` and ``returns_tokens``, to pass
    as ``@doc_params(**doc_tokens(...))``. The fields set follow the Returns entry, indented by 4 more.
    """
    return {
        "tokens_adata": (
            "adata\n"
            f"    Annotated data matrix with counts (cells x genes). A view is {made} only with\n"
            "    ``copy=True``; otherwise call ``.copy()`` on it first. A backed AnnData works with a\n"
            "    ``layer`` in memory, not with ``adata.X`` on disk."
        ),
        "tokens_copy": f"copy\n    Whether to return a {made} copy of ``adata`` instead of {making} it in place.",
        "returns_tokens": (
            ":class:`~anndata.AnnData` or None\n"
            f"    A {made} copy of ``adata`` if ``copy=True``, else `None`. Sets (``bioformers`` in the\n"
            "    names is ``key_added``):"
        ),
    }


def doc_params(**snippets: str) -> Callable[[_F], _F]:
    """Fill the ``{name}`` placeholder lines of a docstring with the given paragraphs.

    Parameters
    ----------
    **snippets
        Placeholder name -> paragraph (e.g. ``show_ax=DOC_SHOW_AX``). Each placeholder line is
        replaced by its paragraph, every line indented like the placeholder.

    Returns
    -------
    Callable
        A decorator that rewrites ``__doc__`` in place and returns the object itself.

    Raises
    ------
    KeyError
        When the docstring has a placeholder line with no paragraph given, or a paragraph is
        given for which the docstring has no placeholder line (both are mistakes in the source).

    Examples
    --------
    >>> import inspect
    >>> from bioformers._docs import DOC_COPY, doc_params
    >>> @doc_params(copy=DOC_COPY)
    ... def f(adata, copy=False):
    ...     '''Do something.
    ...
    ...     Parameters
    ...     ----------
    ...     {copy}
    ...     '''
    >>> inspect.getdoc(f).splitlines()[-2:]
    ['copy', '    Return a modified copy instead of writing into ``adata``.']
    """

    def decorate(obj: _F) -> _F:
        if obj.__doc__ is None:  # `python -OO` strips docstrings
            return obj
        used = set()

        def fill(match: re.Match) -> str:
            margin, name = match.groups()
            if name not in snippets:
                raise KeyError(f"{obj.__qualname__}: no paragraph given for the docstring placeholder {{{name}}}.")
            used.add(name)
            return indent(snippets[name], margin)

        obj.__doc__ = _PLACEHOLDER.sub(fill, obj.__doc__)
        unused = sorted(set(snippets) - used)
        if unused:
            raise KeyError(f"{obj.__qualname__}: the docstring has no placeholder line for {unused}.")
        return obj

    return decorate
