"""Seeded synthetic counts with cell types and batches, for examples and tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix

# Generative constants: chosen so that 100 genes give sparse, PBMC-like counts
# (median ~50% zeros per cell) with cell types that a PCA separates cleanly.
_BASE_LOG_MEAN, _BASE_LOG_SD = -0.5, 1.0  # per-gene mean expression (log scale)
_TYPE_LOG_SD = 0.3  # per-type deviation of every gene
_MARKER_FOLD = 6.0  # marker genes of a type are this many times higher in it
_BATCH_LOG_SD = 0.2  # mild per-batch, per-gene multiplicative effect
_LIBRARY_LOG_SD = 0.3  # per-cell library size
_DISPERSION = 0.2  # negative-binomial overdispersion (variance = mu + dispersion * mu^2)


def synthetic(
    n_obs: int = 300,
    n_vars: int = 100,
    *,
    n_cell_types: int = 3,
    n_batches: int = 2,
    sparse: bool = True,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate raw counts with cell types and batches.

    Each cell type has its own mean profile: a random per-gene deviation plus a set of
    marker genes, disjoint between types where the genes suffice, expressed several times
    higher than in the other types. Each batch multiplies every gene by a mild random factor.
    Counts are drawn from a negative binomial (gamma–Poisson) around these means, scaled by
    a per-cell library size. A cell that would come out without any count gets one count in
    its most expected gene, so no cell is empty.

    Parameters
    ----------
    n_obs
        Number of cells.
    n_vars
        Number of genes.
    n_cell_types
        Number of cell types, assigned in (shuffled) equal shares.
    n_batches
        Number of batches, assigned in (shuffled) equal shares, independently of the type.
    sparse
        Store `X` as a CSR matrix; otherwise as a dense array.
    seed
        Random seed; the same seed and arguments give identical data.

    Returns
    -------
    :class:`~anndata.AnnData`
        `X` : CSR matrix or ndarray (n_obs, n_vars), float32
            Raw counts (integer values).
        `obs['cell_type']` : categorical
            ``"type_0"``, ``"type_1"``, …
        `obs['batch']` : categorical
            ``"batch_0"``, ``"batch_1"``, …

        `obs_names` are ``"cell_0"``, …; `var_names` are ``"gene_0"``, ….

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50, n_cell_types=4, seed=1)
    >>> adata.shape
    (200, 50)
    >>> adata.obs["cell_type"].cat.categories.tolist()
    ['type_0', 'type_1', 'type_2', 'type_3']
    """
    for name, value in {"n_obs": n_obs, "n_vars": n_vars, "n_cell_types": n_cell_types, "n_batches": n_batches}.items():
        if value < 1:
            raise ValueError(f"`{name}` must be at least 1, got {value}.")
    rng = np.random.default_rng(seed)

    base = rng.lognormal(_BASE_LOG_MEAN, _BASE_LOG_SD, size=n_vars)
    type_means = base * rng.lognormal(0.0, _TYPE_LOG_SD, size=(n_cell_types, n_vars))
    n_markers = max(1, n_vars // (4 * n_cell_types))
    order = rng.permutation(n_vars)
    for t in range(n_cell_types):
        markers = np.take(order, np.arange(t * n_markers, (t + 1) * n_markers), mode="wrap")
        # Markers start from at least an average gene so that "up" is visible, not 6 x ~0.
        type_means[t, markers] = np.maximum(type_means[t, markers], np.median(base)) * _MARKER_FOLD
    batch_effect = rng.lognormal(0.0, _BATCH_LOG_SD, size=(n_batches, n_vars))

    cell_type = rng.permutation(np.arange(n_obs) % n_cell_types)
    batch = rng.permutation(np.arange(n_obs) % n_batches)
    library = rng.lognormal(0.0, _LIBRARY_LOG_SD, size=(n_obs, 1))

    mu = type_means[cell_type] * batch_effect[batch] * library
    counts = rng.poisson(mu * rng.gamma(1 / _DISPERSION, _DISPERSION, size=mu.shape)).astype(np.float32)
    empty = np.flatnonzero(counts.sum(axis=1) == 0)
    counts[empty, mu[empty].argmax(axis=1)] = 1

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(cell_type, [f"type_{i}" for i in range(n_cell_types)]),
            "batch": pd.Categorical.from_codes(batch, [f"batch_{i}" for i in range(n_batches)]),
        },
        index=pd.Index([f"cell_{i}" for i in range(n_obs)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene_{j}" for j in range(n_vars)]))
    X = csr_matrix(counts) if sparse else counts
    return ad.AnnData(X=X, obs=obs, var=var)


_PROGRAM_LOG_SD = 0.5  # per-cell activity of each gene program: co-expression within programs
_KNOCKOUT_FOLD = 0.1  # a measured target keeps this fraction of its expression when knocked out
_PROGRAM_FOLDS = (0.3, 3.0)  # a knock-out scales its program's genes down (even programs) or up (odd ones)


def synthetic_perturbation(
    n_obs: int = 800,
    n_vars: int = 60,
    *,
    n_programs: int = 4,
    targets_per_program: int = 2,
    n_unmeasured: int = 2,
    control_fraction: float = 0.3,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate a CRISPR knock-out screen with planted, learnable effects.

    Genes fall into ``n_programs`` programs; each cell has a random activity per program that
    scales all its genes, so genes of a program are co-expressed and a model can learn which
    program a gene belongs to from control cells alone. Knocking out a measured target leaves
    the target at a tenth of its expression and scales every other gene of its program by
    0.3 (even programs) or 3 (odd programs). So the effect of a held-out target is predictable
    from its program, which the training perturbations reveal. Unmeasured targets (genes not
    among ``var_names``, as when a screen's targets were not sequenced) act on one program each.

    Parameters
    ----------
    n_obs
        Number of cells.
    n_vars
        Number of measured genes.
    n_programs
        Number of co-expressed gene programs.
    targets_per_program
        Measured genes of each program that are knocked out in some cells.
    n_unmeasured
        Additional targets that are not measured genes (named ``"unmeasured_0"``, …).
    control_fraction
        Share of cells that are controls; the rest are split equally between the targets.
    seed
        Random seed.

    Returns
    -------
    :class:`~anndata.AnnData`
        Raw counts (CSR, ``float32``), with

        `obs['perturbation']` : categorical
            ``"control"`` or the knocked-out target.
        `var['program']` : int
            Program of each gene.
        `uns['planted_effect']` : DataFrame (targets, n_vars)
            The planted log fold change of each gene's mean for each target.

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic_perturbation(n_obs=400, seed=1)
    >>> round(float((adata.obs["perturbation"] == "control").mean()), 1)
    0.3
    """
    if n_vars < n_programs * (targets_per_program + 1):
        raise ValueError(
            f"`n_vars` ({n_vars}) must be at least n_programs x (targets_per_program + 1) = "
            f"{n_programs * (targets_per_program + 1)}, so every program has a target and genes that respond."
        )
    if not 0 < control_fraction < 1:
        raise ValueError(f"`control_fraction` must lie in (0, 1), not {control_fraction}.")
    rng = np.random.default_rng(seed)
    program = rng.permutation(np.arange(n_vars) % n_programs)
    base = rng.lognormal(0.5, 0.8, size=n_vars)
    genes = [f"gene_{j}" for j in range(n_vars)]

    effects = {}
    for p in range(n_programs):
        members = np.flatnonzero(program == p)
        fold = np.where(program == p, np.log(_PROGRAM_FOLDS[p % 2]), 0.0)
        for target in rng.choice(members, size=targets_per_program, replace=False):
            effect = fold.copy()
            effect[target] = np.log(_KNOCKOUT_FOLD)
            effects[genes[target]] = effect
    for k in range(n_unmeasured):
        p = k % n_programs
        effects[f"unmeasured_{k}"] = np.where(program == p, np.log(_PROGRAM_FOLDS[p % 2]), 0.0)
    targets = list(effects)

    n_control = round(control_fraction * n_obs)
    labels = np.array(["control"] * n_control + [targets[i % len(targets)] for i in range(n_obs - n_control)])
    labels = labels[rng.permutation(n_obs)]
    log_effect = np.zeros((n_obs, n_vars))
    for target, effect in effects.items():
        log_effect[labels == target] = effect

    activity = rng.lognormal(0.0, _PROGRAM_LOG_SD, size=(n_obs, n_programs))[:, program]
    library = rng.lognormal(0.0, _LIBRARY_LOG_SD, size=(n_obs, 1))
    mu = base * activity * np.exp(log_effect) * library
    counts = rng.poisson(mu * rng.gamma(1 / _DISPERSION, _DISPERSION, size=mu.shape)).astype(np.float32)
    empty = np.flatnonzero(counts.sum(axis=1) == 0)
    counts[empty, mu[empty].argmax(axis=1)] = 1

    obs = pd.DataFrame(
        {"perturbation": pd.Categorical(labels, categories=["control", *targets])},
        index=pd.Index([f"cell_{i}" for i in range(n_obs)]),
    )
    var = pd.DataFrame({"program": program}, index=pd.Index(genes))
    adata = ad.AnnData(X=csr_matrix(counts), obs=obs, var=var)
    adata.uns["planted_effect"] = pd.DataFrame(np.array(list(effects.values())), index=targets, columns=genes)
    return adata
