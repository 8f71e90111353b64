"""One measured training time, in one place, that the other pages link to, and that matches the benchmark."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from scvi.dataloaders._data_splitting import validate_data_split

from bioformers.model.base._training import default_max_epochs

ROOT = Path(__file__).parents[1]
ANCHOR = "scaling.md#how-long-training-takes"


def _section() -> str:
    """The "How long training takes" section of docs/scaling.md."""
    page = (ROOT / "docs" / "scaling.md").read_text()
    assert "(training-time)=\n\n## How long training takes" in page, "the label other pages link to"
    return page.split("## How long training takes", 1)[1].split("\n## ", 1)[0]


def test_the_training_time_is_the_benchmarks():
    result = (ROOT / "benchmarks" / "results" / "pbmc3k_embedding.md").read_text()
    seconds, epochs = re.search(r"training: (\d+) s for (\d+) epochs", result).groups()
    section = _section()
    assert f"**{seconds} s**" in section, "docs/scaling.md quotes another time than benchmarks/results"
    assert f"{epochs} epochs" in section
    assert "AMD EPYC" in section and "AVX512-BF16" in section, "the machine is named"


def test_the_start_line_shown_is_what_pbmc3k_defaults_run():
    n_obs, batch_size = 2638, 64
    n_train, n_validation = validate_data_split(n_obs, 0.9, None, batch_size)
    line = (
        f"training BioFormer on {n_obs:,} cells x 2,000 genes ({n_validation:,} held out for validation): "
        f"{default_max_epochs(n_obs)} epochs of {math.ceil(n_train / batch_size)} steps of {batch_size} cells"
    )
    assert line in _section()


def test_other_pages_link_to_it():
    assert f"docs/{ANCHOR}" in (ROOT / "README.md").read_text()
    assert "<training-time>`" in (ROOT / "docs" / "index.md").read_text()
    for name in ("01_quickstart", "02_genes"):
        notebook = json.loads((ROOT / "tutorials" / f"{name}.ipynb").read_text())
        markdown = "".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "markdown")
        assert f"../{ANCHOR}" in markdown, name
