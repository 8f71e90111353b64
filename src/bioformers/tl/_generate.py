"""``bf.tl.generate``: sample new cells from a CellDiffusion or a BioFormerDecoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
from scanpy import logging as logg
from scipy import sparse

from .._conditions import Conditions, condition_table
from .._docs import DOC_BATCH_SIZE_GENERATE, DOC_KEY_ADDED_RETURNED, doc_params
from .._keys import DEFAULT_KEY, Keys
from .._record import params_record
from ..pp._binning import bin_centers
from ._models import require_decoder

if TYPE_CHECKING:
    from ..model import BioFormerDecoder, CellDiffusion


@doc_params(batch_size=DOC_BATCH_SIZE_GENERATE, key_added=DOC_KEY_ADDED_RETURNED)
def generate(
    model: BioFormerDecoder | CellDiffusion,
    conditions: Conditions = None,
    *,
    n_per_condition: int = 100,
    seed: int = 0,
    n_steps: int | None = None,
    guidance: float | None = None,
    eta: float | None = None,
    allow_unseen: bool = False,
    temperature: float | None = None,
    batch_size: int = 256,
    key_added: str = DEFAULT_KEY,
) -> ad.AnnData:
    """Generate cells of given conditions with a :class:`~bioformers.CellDiffusion` or a BioFormerDecoder.

    * :class:`~bioformers.CellDiffusion`: latent tokens are drawn by DDIM from noise, guided by the
      conditions, and decoded into expression; each gene is detected with the probability the
      decoder gives it.
    * :class:`~bioformers.BioFormerDecoder` (``bf.tl.pretrain(adata, architecture="decoder")``): each
      cell is drawn token by token, the next gene among those not yet drawn (or the end of the cell)
      then its bin, no larger than the previous one (:meth:`bioformers.BioFormerDecoder.generate`). Cells have at most
      ``max_seq_len`` minus the start and condition tokens expressed genes.

    Parameters
    ----------
    model
        A trained :class:`~bioformers.CellDiffusion` or :class:`~bioformers.BioFormerDecoder`.
    conditions
        The conditions to generate, each ``n_per_condition`` times, under the names of the
        training data's ``obs`` columns:

        * a dict mapping each condition key to a value or to a list of values (lists of one length,
          zipped into one condition per position; single values repeated), e.g.
          ``{"cell_type": ["B cells", "NK cells"], "donor": "d1"}``;
        * a DataFrame with one row per condition and one column per key;
        * when the model has a single condition, a value or list of values of it;
        * ``None``: unconditional cells.

        ``None`` as a value leaves that condition out. A :class:`~bioformers.CellDiffusion` needs
        every key it was set up with (:attr:`~bioformers.CellDiffusion.condition_keys`); a
        decoder conditions on its ``labels_key`` and ``batch_key``, and treats absent keys as unknown.
    n_per_condition
        Cells generated per condition.
    seed
        Seed of the draws: the same seed gives the same cells on one machine.
    n_steps
        CellDiffusion only: DDIM steps (default 50); fewer is faster and coarser.
    guidance
        CellDiffusion only: classifier-free guidance scale (default 1: conditional model alone; above
        1 pushes cells further towards their condition, at some cost in diversity).
    eta
        CellDiffusion only: DDIM noise (default 0: deterministic given the starting noise; 1: DDPM-like).
    allow_unseen
        CellDiffusion only: generate conditions no training cell had (a new combination of
        categories or perturbed genes, or a continuous value outside the training range), which
        are refused by default.
    temperature
        Decoder only: softmax temperature of every draw (default 1); below 1 sharpens towards the
        most likely genes and bins.
    {batch_size}
    {key_added}

    Returns
    -------
    :class:`~anndata.AnnData`
        A new AnnData of the generated cells over the model's genes (``var_names``), ready for
        Scanpy, ``n_per_condition`` cells per condition, in the order of the conditions; cells are
        named ``generated_0``, ``generated_1``, .... It holds (``bioformers`` in the names is
        ``key_added``):

        ``obs['<condition key>']`` : categorical or ``float64``
            Each cell's condition under the training column's name (categorical with the training
            data's categories, or float for continuous conditions); no column for a condition left
            out everywhere.
        ``uns['bioformers_generated']`` : :class:`dict`
            ``params``: the conditions and the other arguments.

        From a :class:`~bioformers.CellDiffusion`:

        ``X`` : :class:`~scipy.sparse.csr_matrix` ``float32``
            ``log1p`` of counts per 10,000 (what :func:`scanpy.pp.normalize_total` with
            ``target_sum=1e4`` then :func:`scanpy.pp.log1p` give for real cells).
        ``uns['log1p']`` : :class:`dict`
            ``{'base': None}``, as :func:`scanpy.pp.log1p` records.

        From a decoder-only BioFormer:

        ``X`` : :class:`~scipy.sparse.csr_matrix` ``float32``
            For value binning with normalisation, the value each bin stands for (counts scaled to
            the training data's total: the bin itself up to ``cutoff``, the geometric middle of its
            interval above); otherwise the bins themselves.
        ``layers['bioformers_binned']`` : :class:`~scipy.sparse.csr_matrix` ``int16``
            The generated bins, the model's input format (so :func:`bioformers.tl.embed` embeds the
            cells as they are); the layer the model was trained on, whatever ``key_added``.
        ``uns['bioformers_binned']`` : :class:`dict`
            The training data's binning record (``params``, ``n_tokens``).

    Examples
    --------
    >>> import bioformers as bf
    >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
    >>> model = bf.tl.pretrain(
    ...     adata, architecture="decoder", labels_key="cell_type", n_layers=1, n_hidden=16, max_epochs=1, batch_size=32
    ... )
    >>> cells = bf.tl.generate(model, ["type_0", "type_1"], n_per_condition=5)
    >>> cells.shape
    (10, 50)
    >>> cells.obs["cell_type"].value_counts().to_dict()
    {'type_0': 5, 'type_1': 5, 'type_2': 0}
    """
    from ..model import CellDiffusion

    keys = Keys(key_added)
    if isinstance(n_per_condition, bool) or not isinstance(n_per_condition, int | np.integer) or n_per_condition < 1:
        raise ValueError(f"`n_per_condition` must be a positive integer, not {n_per_condition!r}.")
    if isinstance(model, CellDiffusion):
        return _generate_diffusion(
            model,
            conditions,
            n_per_condition=int(n_per_condition),
            seed=seed,
            n_steps=n_steps,
            guidance=guidance,
            eta=eta,
            allow_unseen=allow_unseen,
            temperature=temperature,
            batch_size=batch_size,
            keys=keys,
        )
    require_decoder(model, "`bf.tl.generate`")
    diffusion_only = {"n_steps": n_steps, "guidance": guidance, "eta": eta, "allow_unseen": allow_unseen or None}
    _refuse_other_model_arguments(diffusion_only, "a CellDiffusion")
    args = model.registry_["setup_args"]
    condition_keys = {kind: args.get(f"{kind}_key") for kind in ("labels", "batch")}
    known = [key for key in condition_keys.values() if key is not None]
    if conditions is not None and not known:
        raise ValueError(
            "The decoder was trained without `labels_key` or `batch_key`, so it cannot condition on anything. Train "
            "it with `bf.tl.pretrain(adata, architecture='decoder', labels_key=...)`, or pass `conditions=None`."
        )
    table = condition_table(conditions, known, missing="none")
    rows = table.loc[table.index.repeat(n_per_condition)].reset_index(drop=True)
    values = {kind: list(rows[key]) if key is not None else [None] * len(rows) for kind, key in condition_keys.items()}
    # checks the values (naming the known ones) before any work
    model.condition_codes("labels", values["labels"])
    model.condition_codes("batch", values["batch"])
    start = logg.info(f"generating {len(rows)} cells")
    bins = model.generate(
        len(rows),
        labels=values["labels"],
        batch=values["batch"],
        temperature=1.0 if temperature is None else temperature,
        seed=seed,
        batch_size=batch_size,
    )
    generated = ad.AnnData(
        X=_expression(bins, model),
        var=pd.DataFrame(index=pd.Index(model.genes_, name=None)),
        obs=_decoder_conditions(model, values["labels"], values["batch"]),
    )
    binned_layer = args["layer"]
    generated.layers[binned_layer] = bins
    generated.uns[binned_layer] = {"params": dict(model.binning_), "n_tokens": int(model.module.n_bins)}
    generated.uns[keys.generated] = {
        "params": params_record(
            conditions=_record(table),
            n_per_condition=int(n_per_condition),
            temperature=1.0 if temperature is None else float(temperature),
            seed=int(seed),
        )
    }
    logg.info("    finished", time=start)
    return generated


def _generate_diffusion(
    model: CellDiffusion,
    conditions: Conditions,
    *,
    n_per_condition: int,
    seed: int,
    n_steps,
    guidance,
    eta,
    allow_unseen: bool,
    temperature,
    batch_size: int,
    keys: Keys,
) -> ad.AnnData:
    _refuse_other_model_arguments({"temperature": temperature}, "a decoder-only BioFormer")
    n_steps = 50 if n_steps is None else n_steps
    guidance = 1.0 if guidance is None else guidance
    eta = 0.0 if eta is None else eta
    table = model.check_conditions(conditions, allow_unseen=allow_unseen)
    rows = table.loc[table.index.repeat(n_per_condition)].reset_index(drop=True)
    start = logg.info(f"generating {len(rows)} cells")
    X = model.generate(rows, n_steps=n_steps, guidance=guidance, eta=eta, seed=seed, batch_size=batch_size)
    obs = pd.DataFrame(index=pd.Index([f"generated_{i}" for i in range(len(rows))]))
    for condition in model.conditions_:
        key = condition["key"]
        column = rows[key]
        if column.isna().all():
            continue
        if condition["kind"] == "continuous":
            obs[key] = column.astype(float).to_numpy()
        else:
            given = [str(v) for v in column if v is not None]
            categories = [*condition["values"], *sorted(set(given) - set(condition["values"]))]
            obs[key] = pd.Categorical([None if v is None else str(v) for v in column], categories=categories)
    generated = ad.AnnData(X=X, var=pd.DataFrame(index=pd.Index(model.genes_, name=None)), obs=obs)
    generated.uns["log1p"] = {"base": None}
    generated.uns[keys.generated] = {
        "params": params_record(
            conditions=_record(table),
            n_per_condition=int(n_per_condition),
            n_steps=int(n_steps),
            guidance=float(guidance),
            eta=float(eta),
            allow_unseen=bool(allow_unseen),
            seed=int(seed),
        )
    }
    logg.info("    finished", time=start)
    return generated


def _refuse_other_model_arguments(arguments: dict, model_kind: str) -> None:
    given = [name for name, value in arguments.items() if value is not None]
    if given:
        raise ValueError(f"{given} apply to {model_kind} only; leave them out for this model.")


def _record(table: pd.DataFrame) -> dict:
    """The condition table as an ``uns``-writable dict of string arrays (None as "")."""
    return {str(k): np.asarray(["" if v is None else str(v) for v in table[k]], dtype=str) for k in table.columns}


def _expression(bins: sparse.csr_matrix, model: BioFormerDecoder) -> sparse.csr_matrix:
    """The value each bin stands for (value binning with normalisation), else the bins, as ``float32``."""
    centers = bin_centers(model.binning_, model.module.n_bins) if model.binning_.get("normalize", True) else None
    values = centers[bins.data] if centers is not None else bins.data.astype(np.float32)
    return sparse.csr_matrix((values.astype(np.float32), bins.indices, bins.indptr), shape=bins.shape)


def _decoder_conditions(model: BioFormerDecoder, labels: list, batches: list) -> pd.DataFrame:
    """``obs`` of the generated cells: the condition columns under the training data's names."""
    obs = pd.DataFrame(index=pd.Index([f"generated_{i}" for i in range(len(labels))]))
    args = model.registry_["setup_args"]
    for kind, values in (("labels", labels), ("batch", batches)):
        key = args.get(f"{kind}_key")
        # an unconditional draw gets no column: a column of missing values would not register
        if key is not None and any(v is not None for v in values):
            obs[key] = pd.Categorical(values, categories=model.condition_categories(kind))
    return obs
