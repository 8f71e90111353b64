"""The bundled 10x Genomics PBMC 3k dataset (raw counts + cell-type labels)."""

from __future__ import annotations

from importlib import resources

import anndata as ad

_FILE = "pbmc3k.h5ad"


def pbmc3k() -> ad.AnnData:
    """3k PBMCs from a healthy donor (10x Genomics), raw UMI counts with cell-type labels.

    2,638 cells x 13,656 genes: the cells of the Scanpy/Seurat PBMC 3k tutorial that pass its
    quality control, and every gene detected in at least 3 of them. Ships with the package
    (about 5 MB), so no download is needed.

    * Counts: "3k PBMCs from a Healthy Donor", 10x Genomics (Chromium v1, Cell Ranger 1.1.0,
      hg19; published by 10x Genomics under CC BY 4.0), the raw UMI count matrix.
    * Labels: the 8 Louvain cell types of the Scanpy PBMC 3k tutorial (CD4 T cells 1,144,
      CD14+ Monocytes 480, B cells 342, CD8 T cells 316, NK cells 154, FCGR3A+ Monocytes 150,
      Dendritic cells 37, Megakaryocytes 15). They are clusters of a PCA, not ground truth,
      which favours PCA in embedding benchmarks.

    The file is built by ``benchmarks/make_bundled_pbmc3k.py``; the exact sources (repositories
    and commits) are recorded in ``adata.uns['dataset']``.

    Returns
    -------
    :class:`~anndata.AnnData`
        `X` : CSR matrix (2638, 13656), float32
            Raw UMI counts (integer values).
        `obs['cell_type']` : categorical
            The 8 cell types.
        `obs['batch']` : categorical
            One value, ``"pbmc3k"`` (a single sample).
        `obs['total_counts']`, `obs['n_genes_by_counts']` : int
            Counts and detected genes per cell, over the genes in the file.
        `var['gene_ids']` : str
            Ensembl gene IDs; `var_names` are gene symbols (unique).
        `uns['dataset']` : dict
            Provenance.

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.pbmc3k()
    >>> adata.shape
    (2638, 13656)
    >>> adata.obs["cell_type"].nunique()
    8
    """
    # as_file gives a real path even when the package is imported from a zip archive.
    with resources.as_file(resources.files(__package__) / _FILE) as path:
        return ad.read_h5ad(path)
