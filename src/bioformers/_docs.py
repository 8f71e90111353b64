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
"""

from __future__ import annotations

import re
from textwrap import indent
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


# Tools (`bf.tl`) and models ----------------------------------------------------------------------

#: ``adata`` of a tool that reads cells with exactly the model's genes and may write into them.
DOC_ADATA = """\
adata
    Cells with exactly the model's genes, in the model's order; in memory or backed. A view is
    taken only with ``copy=True``; otherwise call ``.copy()`` first."""

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
    Column of ``adata.var`` holding the gene names the model knows; ``None`` matches ``adata.var_names``.
min_gene_coverage
    Smallest fraction of the model's genes that must be found in ``adata``."""

#: ``key_added`` of a tool that writes results into the AnnData.
DOC_KEY_ADDED = """\
key_added
    Base key of everything written."""

#: ``copy`` of a tool that writes results into the AnnData.
DOC_COPY = """\
copy
    Return a modified copy instead of writing into ``adata``."""


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
