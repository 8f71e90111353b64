"""Write the intersphinx inventories (``<project>.inv``) that ``docs/conf.py`` links against.

The machines that build these docs have no network, so Sphinx cannot download the ``objects.inv``
files of the projects we cross-reference. This script writes equivalent inventories offline: it
lists the public objects of the *installed* packages by introspection and maps each to the page
where that project's documentation puts it (each project's URL layout is one rule below).
Re-run it after upgrading a dependency or when ``make docs`` reports a missing external target::

    .venv/bin/python docs/_inventories/make_inventories.py
"""

from __future__ import annotations

import importlib
import inspect
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

HERE = Path(__file__).parent

# (name, sphinx role, uri relative to the project's docs root)
Entry = tuple[str, str, str]


def _role(obj: object) -> str:
    if inspect.isclass(obj):
        return "py:exception" if issubclass(obj, BaseException) else "py:class"
    if inspect.ismodule(obj):
        return "py:module"
    if inspect.isroutine(obj):
        return "py:function"
    return "py:data"


def _public(module_name: str) -> Iterable[tuple[str, object]]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name, None)
        if obj is not None and not inspect.ismodule(obj):
            yield f"{module_name}.{name}", obj


def _members(cls: type) -> Iterable[tuple[str, str]]:
    """Public methods and attributes of a class, with their roles."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            yield name, "py:property"
        elif isinstance(value, classmethod | staticmethod) or inspect.isfunction(value):
            yield name, "py:method"
        else:
            yield name, "py:attribute"


def _one_page_per_object(modules: list[str], page: Callable[[str], str], *, members: bool = True) -> list[Entry]:
    """The autosummary layout: one page per public object, class members anchored on the class page."""
    entries = []
    for module in modules:
        entries.append((module, "py:module", page(module)))
        for full, obj in _public(module):
            entries.append((full, _role(obj), f"{page(full)}#{full}"))
            if members and inspect.isclass(obj):
                entries += [(f"{full}.{m}", role, f"{page(full)}#{full}.{m}") for m, role in _members(obj)]
    return entries


def python() -> list[Entry]:
    builtins = {
        "functions.html": ["int", "float", "bool", "object", "type", "range", "slice"],
        "stdtypes.html": ["str", "list", "dict", "tuple", "set", "frozenset", "bytes"],
    }
    entries = [(n, "py:class", f"library/{page}#{n}") for page, names in builtins.items() for n in names]
    entries += [
        ("None", "py:data", "library/constants.html#None"),
        ("Ellipsis", "py:data", "library/constants.html#Ellipsis"),
    ]
    entries += [(n, "py:exception", f"library/exceptions.html#{n}") for n in dir(__builtins__) if n.endswith("Error")]
    for module in ["collections.abc", "typing", "pathlib", "os", "os.path", "types", "logging", "contextlib"]:
        entries.append((module, "py:module", f"library/{module}.html"))
        for full, obj in _public(module):
            entries.append((full, _role(obj), f"library/{module}.html#{full}"))
    entries.append(("os.PathLike", "py:class", "library/os.html#os.PathLike"))
    return entries


def numpy() -> list[Entry]:
    entries = []
    for full, obj in _public("numpy"):
        if inspect.isclass(obj) and issubclass(obj, importlib.import_module("numpy").generic):
            entries.append((full, "py:class", f"reference/arrays.scalars.html#{full}"))
        else:
            entries.append((full, _role(obj), f"reference/generated/{full}.html#{full}"))
    entries += [
        (f"numpy.ndarray.{m}", r, f"reference/generated/numpy.ndarray.{m}.html#numpy.ndarray.{m}")
        for m, r in _members(importlib.import_module("numpy").ndarray)
    ]
    entries += [(full, _role(obj), f"reference/generated/{full}.html#{full}") for full, obj in _public("numpy.linalg")]
    entries += [
        (f"numpy.random.{n}", "py:class", f"reference/random/{p}.html#numpy.random.{n}")
        for n, p in [("Generator", "generator"), ("RandomState", "legacy")]
    ]
    entries += [
        (f"numpy.random.{n}", "py:function", f"reference/random/generated/numpy.random.{n}.html")
        for n in ["default_rng", "seed"]
    ]
    entries += [
        (f"numpy.typing.{n}", "py:data", f"reference/typing.html#numpy.typing.{n}")
        for n in ["ArrayLike", "DTypeLike", "NDArray"]
    ]
    return entries


def scipy() -> list[Entry]:
    return _one_page_per_object(
        ["scipy.sparse", "scipy.sparse.csgraph", "scipy.stats"],
        lambda n: f"reference/generated/{n}.html",
        members=False,
    )


def pandas() -> list[Entry]:
    return _one_page_per_object(["pandas"], lambda n: f"reference/api/{n}.html")


def matplotlib() -> list[Entry]:
    return _one_page_per_object(
        ["matplotlib.axes", "matplotlib.figure", "matplotlib.colors"], lambda n: f"api/_as_gen/{n}.html", members=False
    )


def anndata() -> list[Entry]:
    return _one_page_per_object(["anndata"], lambda n: f"generated/{n}.html")


def scanpy() -> list[Entry]:
    return _one_page_per_object(
        ["scanpy", "scanpy.pp", "scanpy.tl", "scanpy.pl", "scanpy.get", "scanpy.datasets"],
        lambda n: f"generated/{n}.html",
    )


def scvi() -> list[Entry]:
    modules = [
        "scvi.model",
        "scvi.model.base",
        "scvi.module",
        "scvi.module.base",
        "scvi.data",
        "scvi.data.fields",
        "scvi.train",
        "scvi.nn",
    ]
    return _one_page_per_object(modules, lambda n: f"api/reference/{n}.html")


def torch() -> list[Entry]:
    import torch as _torch

    entries = [
        ("torch.Tensor", "py:class", "tensors.html#torch.Tensor"),
        ("torch.device", "py:class", "tensor_attributes.html#torch.device"),
        ("torch.dtype", "py:class", "tensor_attributes.html#torch.dtype"),
        ("torch.Generator", "py:class", "generated/torch.Generator.html#torch.Generator"),
    ]
    entries += [(f"torch.Tensor.{m}", r, f"generated/torch.Tensor.{m}.html") for m, r in _members(_torch.Tensor)]
    entries += _one_page_per_object(["torch.nn"], lambda n: f"generated/{n}.html")
    entries += [
        (f"torch.{n}", "py:function", f"generated/torch.{n}.html#torch.{n}") for n in ["compile", "manual_seed"]
    ]
    entries += [("torch.utils.data.DataLoader", "py:class", "data.html#torch.utils.data.DataLoader")]
    return entries


def lightning() -> list[Entry]:
    import lightning.pytorch as pl

    entries = [
        ("lightning.pytorch.Trainer", "py:class", "common/trainer.html#lightning.pytorch.trainer.trainer.Trainer"),
        ("lightning.pytorch.LightningModule", "py:class", "api/lightning.pytorch.core.LightningModule.html"),
        ("lightning.pytorch.LightningDataModule", "py:class", "api/lightning.pytorch.core.LightningDataModule.html"),
    ]
    entries += [
        (f"lightning.pytorch.callbacks.{n}", "py:class", f"api/lightning.pytorch.callbacks.{n}.html")
        for n in pl.callbacks.__all__
    ]
    return entries


def sklearn() -> list[Entry]:
    modules = [
        "sklearn.base",
        "sklearn.neural_network",
        "sklearn.metrics",
        "sklearn.linear_model",
        "sklearn.cluster",
        "sklearn.decomposition",
        "sklearn.ensemble",
    ]
    return _one_page_per_object(modules, lambda n: f"modules/generated/{n}.html", members=False)


PROJECTS = {
    "python": python,
    "numpy": numpy,
    "scipy": scipy,
    "pandas": pandas,
    "matplotlib": matplotlib,
    "anndata": anndata,
    "scanpy": scanpy,
    "scvi": scvi,
    "torch": torch,
    "lightning": lightning,
    "sklearn": sklearn,
}


def write_inventory(path: Path, project: str, entries: list[Entry]) -> None:
    """Sphinx's ``objects.inv`` format, version 2: four header lines, then zlib-compressed entries."""
    header = (
        f"# Sphinx inventory version 2\n# Project: {project}\n# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in sorted(set(entries)))
    path.write_bytes(header.encode() + zlib.compress(body.encode(), 9))


def main() -> None:
    for project, entries in PROJECTS.items():
        listed = entries()
        write_inventory(HERE / f"{project}.inv", project, listed)
        print(f"{project}: {len(listed)} objects")


if __name__ == "__main__":
    main()
