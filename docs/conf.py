"""Sphinx configuration: MyST Markdown pages, API pages generated from numpydoc docstrings."""

from importlib.metadata import version as _version

project = "bioformers"
author = "bioformers developers"
copyright = "2026, bioformers developers"
release = _version("bioformers")

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]

autosummary_generate = True
autodoc_typehints = "description"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True

html_theme = "alabaster"
html_title = project
