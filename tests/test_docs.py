"""The documentation lists every public object and every key the package writes."""

import re
from pathlib import Path

import pytest

import bioformers as bf
from bioformers._keys import Keys

DOCS = Path(__file__).parents[1] / "docs"
NAMESPACES = ["pp", "tl", "pl", "metrics", "datasets"]


def _api_entries() -> set[str]:
    """The names listed in the autosummary blocks of docs/api.md."""
    return set(re.findall(r"^ {3}([\w.]+)\s*$", (DOCS / "api.md").read_text(), re.MULTILINE))


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_api_reference_lists_every_public_function(namespace):
    module = getattr(bf, namespace)
    missing = [name for name in module.__all__ if f"{namespace}.{name}" not in _api_entries()]
    assert not missing, f"add to docs/api.md: {missing}"


def test_api_reference_lists_the_models():
    classes = [name for name in bf.__all__ if isinstance(getattr(bf, name), type)]
    assert classes, "bioformers exports no class"
    assert set(classes) <= _api_entries()


def test_keys_page_names_every_key_written():
    keys = Keys()
    names = [getattr(keys, name) for name, value in vars(Keys).items() if isinstance(value, property)]
    page = (DOCS / "keys.md").read_text()
    missing = [name for name in names if f'"{name}' not in page]
    assert not missing, f"add to docs/keys.md: {missing}"
