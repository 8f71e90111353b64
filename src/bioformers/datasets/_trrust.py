"""The bundled TRRUST v2 human TF → target reference network."""

from __future__ import annotations

from importlib import resources

import pandas as pd

_FILE = "trrust_rawdata.human.tsv"
_MODES = ["Activation", "Repression", "Unknown"]


def trrust() -> pd.DataFrame:
    """TRRUST v2: literature-curated human transcription factor → target gene relations.

    9,396 rows over 795 TFs and 2,492 targets, each a TF → target relation with its mode of
    regulation and the PubMed IDs that support it. Ships with the package (0.3 MB), so no
    download is needed. A common reference for scoring inferred gene regulatory networks,
    e.g. with :func:`bioformers.metrics.score_grn`.

    * Source: TRRUST v2 (Han et al. 2018, Nucleic Acids Res 46:D380), file
      ``trrust_rawdata.human.tsv`` as distributed at grnpedia.org/trrust. Copied byte for byte
      from GitHub ``juexinwang/GRGNN``, ``data/trrust_rawdata.human.tsv`` (commit
      ``134728b376c2a25f250473729c560b7df264fedb``), and cross-checked against two other public
      copies. That repository states no license; check TRRUST's own terms before redistributing.
    * Rows are returned as in the file. A TF–target pair can have several rows, one per mode
      (853 pairs), and 9 rows are exact duplicates (current symbols merged old aliases, e.g.
      AR → CCRK and AR → CDK20). 27 rows are self-regulation (TF = target). Collapse pairs before
      counting edges; :func:`bioformers.metrics.score_grn` does so.
    * Genes are human HGNC symbols (upper case), as in 10x `var_names`; mouse data needs
      its genes mapped to human orthologues first.

    Returns
    -------
    :class:`~pandas.DataFrame`
        One row per relation, with the columns

        `source` : str
            The transcription factor.
        `target` : str
            The regulated gene.
        `mode` : categorical
            ``"Activation"`` (3,149 rows), ``"Repression"`` (1,922) or ``"Unknown"`` (4,325).
        `pmids` : str
            Supporting PubMed IDs, ``;``-separated.

    Examples
    --------
    >>> import bioformers as bf
    >>> ref = bf.datasets.trrust()
    >>> ref.shape
    (9396, 4)
    >>> ref.query("source == 'TP53' and target == 'CDKN1A'")["mode"].tolist()
    ['Activation', 'Repression', 'Unknown']
    """
    with resources.files(__package__).joinpath(_FILE).open("r", encoding="utf-8") as handle:
        # No header. na_filter=False: gene symbols such as "NA" or "NAN" must stay strings.
        ref = pd.read_csv(
            handle, sep="\t", header=None, names=["source", "target", "mode", "pmids"], dtype=str, na_filter=False
        )
    ref["mode"] = pd.Categorical(ref["mode"], categories=_MODES)
    return ref
