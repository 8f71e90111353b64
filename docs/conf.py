"""Sphinx configuration: MyST pages, notebooks shown with their stored outputs, API pages from numpydoc docstrings."""

import shutil
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).parent

# The notebooks live in the top-level `tutorials/` folder, where they run; the site renders copies of them.
_TUTORIALS = HERE / "tutorials"
shutil.rmtree(_TUTORIALS, ignore_errors=True)
_TUTORIALS.mkdir()
for _notebook in sorted((HERE.parent / "tutorials").glob("*.ipynb")):
    shutil.copy2(_notebook, _TUTORIALS / _notebook.name)

project = "bioformers"
author = "bioformers developers"
copyright = "2026, bioformers developers"
release = _version("bioformers")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_copybutton",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "_inventories"]
# .rst first: autosummary writes its generated pages with the first suffix, and they are reStructuredText.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
templates_path = ["_templates"]
html_static_path = ["_static"]

# The tutorials' outputs are committed and re-run by `make tutorials`; the docs build never executes them.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "amsmath"]
myst_heading_anchors = 3

autosummary_generate = True


def _members_from_our_bases() -> dict[str, dict]:
    """What each class inherits from bioformers' own bases, by the name it is documented under.

    The model classes are composed from the mixins of `bioformers.model.base` (as scvi-tools' models are),
    so their pages must show what the mixins give them; what scvi-tools, Lightning or torch give is
    documented where it is defined. ``members``: the public names from our bases; ``others``: the other
    bases, whose members autodoc leaves out (its ``:inherited-members:`` option).
    """
    import importlib
    import inspect

    found = {}
    for package in ("bioformers", "bioformers.module", "bioformers.train", "bioformers.data", "bioformers.nn"):
        for name, cls in vars(importlib.import_module(package)).items():
            if not inspect.isclass(cls) or not cls.__module__.startswith("bioformers"):
                continue
            ours = [base for base in cls.__mro__[1:] if base.__module__.startswith("bioformers")]
            members = {m for base in ours for m in vars(base) if not m.startswith("_") and m not in vars(cls)}
            others = {base.__name__ for base in cls.__mro__[1:] if base not in ours}
            if members:
                found[f"{package}.{name}"] = {"members": sorted(members), "others": ", ".join(sorted(others))}
    return found


# class pages (_templates/autosummary/class.rst) read it; the mixin pages show only what each mixin is for
autosummary_context = {"members_from_our_bases": _members_from_our_bases()}
autodoc_member_order = "groupwise"
autodoc_typehints = "description"
# "documented": the Returns sections say what is returned and written, so no separate "Return type" field.
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
# Our Returns sections are prose and lists of the fields written (as Scanpy's are), not `name : type` pairs.
napoleon_custom_sections = ["Returns"]

# Every cross-reference must resolve (`sphinx-build -n`). The build machines have no network, so the
# inventories of the projects we link to are stored in `_inventories/` (see its README for how they are made).
nitpicky = True
# `Conditions`: the type alias of `bf.tl.generate`'s `conditions`, whose description says what it accepts.
nitpick_ignore = [
    ("py:class", "Conditions"),
    # StreamingDataModule's annotation of its cells (documented next to it), and torch's base class (no inventory)
    ("py:class", "StreamedCells"),
    ("py:class", "torch.utils.data.dataset.IterableDataset"),
]
_INVENTORIES = HERE / "_inventories"
intersphinx_mapping = {
    name: (url, str(_INVENTORIES / f"{name}.inv"))
    for name, url in {
        "python": "https://docs.python.org/3/",
        "numpy": "https://numpy.org/doc/stable/",
        "scipy": "https://docs.scipy.org/doc/scipy/",
        "pandas": "https://pandas.pydata.org/docs/",
        "matplotlib": "https://matplotlib.org/stable/",
        "anndata": "https://anndata.readthedocs.io/en/stable/",
        "scanpy": "https://scanpy.readthedocs.io/en/stable/",
        "scvi": "https://docs.scvi-tools.org/en/stable/",
        "torch": "https://docs.pytorch.org/docs/stable/",
        "lightning": "https://lightning.ai/docs/pytorch/stable/",
        "sklearn": "https://scikit-learn.org/stable/",
    }.items()
}

html_theme = "sphinx_book_theme"
html_title = "bioformers"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_css_files = ["custom.css"]
pygments_style = "default"

# Type hints resolve to where a class is defined (``anndata._core.anndata.AnnData``) and docstrings use the
# import aliases of the code (``ad.AnnData``, ``np.ndarray``); both point to the documented public name.
PUBLIC_NAMES = {
    "AnnData": "anndata.AnnData",
    "ad.AnnData": "anndata.AnnData",
    "anndata._core.anndata.AnnData": "anndata.AnnData",
    "np.ndarray": "numpy.ndarray",
    "pd.DataFrame": "pandas.DataFrame",
    "pandas.core.frame.DataFrame": "pandas.DataFrame",
    "pd.Series": "pandas.Series",
    "pandas.core.series.Series": "pandas.Series",
    "Axes": "matplotlib.axes.Axes",
    "matplotlib.axes._axes.Axes": "matplotlib.axes.Axes",
    "Figure": "matplotlib.figure.Figure",
    "sparse.csr_matrix": "scipy.sparse.csr_matrix",
    "scipy.sparse._csr.csr_matrix": "scipy.sparse.csr_matrix",
    "scipy.sparse._matrix.spmatrix": "scipy.sparse.spmatrix",
    "scipy.sparse._base.sparray": "scipy.sparse.sparray",
    "scvi.model.base._base_model.BaseModelClass": "scvi.model.base.BaseModelClass",
    "scvi.model.base._training_mixin.UnsupervisedTrainingMixin": "scvi.model.base.UnsupervisedTrainingMixin",
    "GeneAlignment": "bioformers.pp._genes.GeneAlignment",
    "torch.utils.data.dataloader.DataLoader": "torch.utils.data.DataLoader",
    "lightning.pytorch.core.datamodule.LightningDataModule": "lightning.pytorch.LightningDataModule",
}


def _public_name(app, env, node, contnode):
    """Point a reference at the public name before intersphinx (priority 500) looks it up.

    Names listed above are replaced; otherwise private modules are dropped from the path
    (``scvi.train._trainingplans.TrainingPlan`` -> ``scvi.train.TrainingPlan``), as packages re-export.
    """
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py":
        return None
    if target in PUBLIC_NAMES:
        node["reftarget"] = PUBLIC_NAMES[target]
    elif "._" in target and not target.startswith("bioformers."):
        node["reftarget"] = ".".join(part for part in target.split(".") if not part.startswith("_"))
    return None


def setup(app):
    """Register the reference rewriting."""
    app.connect("missing-reference", _public_name, priority=400)
