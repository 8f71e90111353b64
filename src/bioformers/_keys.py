"""Every AnnData key that bioformers writes, derived in one place from one base key."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_KEY = "bioformers"
#: scvi-tools registry key of the perturbation column (``setup_anndata(perturbation_key=...)``).
PERTURBATION_KEY = "perturbation"
#: scvi-tools registry key of the raw counts the bins came from (``setup_anndata(counts_layer=...)``).
COUNTS_KEY = "counts"


#: Runs of characters other than ASCII letters, digits and ``_``: each becomes one ``_`` in a key.
_UNSAFE = re.compile(r"[^0-9A-Za-z_]+")


def safe_name(label: object) -> str:
    """``label`` as a part of a key that every writer (h5ad, zarr, R converters) keeps as it is.

    Each run of characters other than ASCII letters, digits and ``_`` (spaces, ``+``, ``/``,
    ``.``, ...) becomes one ``_``, and ``_`` at either end is dropped: ``"CD14+ Monocytes"`` gives
    ``"CD14_Monocytes"``. A name that is safe already is returned unchanged; a label with no safe
    character at all gives ``""``.
    """
    return _UNSAFE.sub("_", str(label)).strip("_")


@dataclass(frozen=True)
class Keys:
    """AnnData keys derived from ``key_added`` (default ``"bioformers"``).

    Tools write, and plots read, exactly these names; nothing else spells them out.
    """

    base: str = DEFAULT_KEY

    @property
    def binned(self) -> str:
        """``layers[...]`` with binned values; ``uns[...]`` with the binning record."""
        return f"{self.base}_binned"

    @property
    def embedding(self) -> str:
        """``obsm[...]`` with the CLS cell embedding."""
        return f"X_{self.base}"

    @property
    def predicted(self) -> str:
        """``layers[...]`` with predicted expression."""
        return f"{self.base}_predicted"

    @property
    def predicted_bins(self) -> str:
        """``layers[...]`` with the most likely bin of every gene."""
        return f"{self.base}_predicted_bins"

    @property
    def gene_embedding(self) -> str:
        """``varm[...]`` with learned gene embeddings."""
        return f"{self.base}_genes"

    @property
    def attention(self) -> str:
        """``varp[...]`` with the attention GRN over all cells."""
        return f"{self.base}_attention"

    @property
    def attention_received(self) -> str:
        """``var[...]`` with the attention each gene receives; NaN for genes too rarely detected to rank."""
        return f"{self.base}_attention_received"

    @property
    def attention_detected(self) -> str:
        """``var[...]`` (all cells read) and ``varm[...]`` (per group): fraction of cells expressing each gene."""
        return f"{self.base}_attention_detected"

    def attention_group(self, group: object) -> str:
        """``varp[...]`` with the attention GRN of one group: its label made safe by :func:`safe_name`.

        ``"CD14+ Monocytes"`` gives ``"bioformers_attention_CD14_Monocytes"``; the key of a key's
        own suffix is the same key, so a group is found by its label or by that suffix.
        """
        return f"{self.attention}_{safe_name(group)}"

    @property
    def grn(self) -> str:
        """``varp[...]`` with the GRN of :func:`bioformers.tl.grn` (rows regulate columns); ``uns[...]`` its record."""
        return f"{self.base}_grn"

    def grn_group(self, group: object) -> str:
        """``varp[...]`` with the GRN of one group: its label made safe by :func:`safe_name`."""
        return f"{self.grn}_{safe_name(group)}"

    @property
    def similarity(self) -> str:
        """``varp[...]`` with the gene-embedding similarity GRN."""
        return f"{self.base}_similarity"

    @property
    def program(self) -> str:
        """``var[...]`` with gene-program labels."""
        return f"{self.base}_program"

    @property
    def label(self) -> str:
        """``obs[...]`` with predicted cell types."""
        return f"{self.base}_label"

    @property
    def confidence(self) -> str:
        """``obs[...]`` with cell-type prediction confidence."""
        return f"{self.base}_confidence"

    @property
    def label_probabilities(self) -> str:
        """``obsm[...]`` with the probability of every cell type (columns in the order of the label's categories)."""
        return f"{self.base}_label_probabilities"

    @property
    def annotation(self) -> str:
        """``uns[...]`` with the annotation record (params, classes, training history)."""
        return f"{self.base}_annotation"

    @property
    def in_silico(self) -> str:
        """``uns[...]`` with the in-silico perturbation summary per gene and its parameters."""
        return f"{self.base}_in_silico"

    @property
    def in_silico_shift(self) -> str:
        """``obsm[...]`` with each cell's embedding shift (1 - cosine) per perturbed gene."""
        return f"{self.base}_in_silico_shift"

    @property
    def in_silico_toward(self) -> str:
        """``obsm[...]`` with each cell's change in cosine similarity to the target state per perturbed gene."""
        return f"{self.base}_in_silico_toward"

    @property
    def generated(self) -> str:
        """``uns[...]`` of a generated AnnData: the generation parameters."""
        return f"{self.base}_generated"

    @property
    def neighbors(self) -> str:
        """``uns``/``obsp`` key of the neighbour graph that ``bf.pl.embedding`` computes on the embedding."""
        return f"{self.base}_neighbors"

    @property
    def umap(self) -> str:
        """``obsm[...]`` with the UMAP of the embedding (so the user's own ``X_umap`` is kept)."""
        return f"X_umap_{self.base}"

    @property
    def perturbation(self) -> str:
        """``uns[...]`` with the perturbation training record and split, or the prediction parameters."""
        return f"{self.base}_perturbation"

    @property
    def record(self) -> str:
        """``uns[...]`` with the training record (params, loss history)."""
        return self.base
