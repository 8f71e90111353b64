"""The parameter record every call stores under ``uns[...]["params"]``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any


def package_version() -> str:
    """Installed bioformers version (``"0.0.0"`` in an uninstalled source tree)."""
    try:
        return version("bioformers")
    except PackageNotFoundError:
        return "0.0.0"


def params_record(**params: Any) -> dict[str, Any]:
    """Arguments of a call plus the package version, in a form ``write_h5ad`` can store.

    h5ad cannot store ``None``, so unset arguments are left out.
    """
    record = {k: v for k, v in params.items() if v is not None}
    record["version"] = package_version()
    return record
