"""``bf.tl.pretrain(adata, init=model)``: continue training a copy of a trained model on other data."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._keys import Keys
from .._logging import seed as quiet_seed
from .._validation import check_batch_size, check_counts, check_obs_key, check_train_kwargs, get_matrix, matrix_name
from ..model import BioFormer, BioFormerDecoder
from ..model.base._save_load import init_arguments
from ..pp._tokens import bin_as_recorded
from ._pretrain_results import write_results

#: ``pretrain`` arguments that fix a model's tokens, network and objective: a fine-tuned model keeps its own.
KEPT_BY_INIT = (
    "binning",
    "n_bins",
    "n_layers",
    "n_heads",
    "n_hidden",
    "max_seq_len",
    "value_encoder",
    "architecture",
    "batch_adversarial_weight",
    "count_weight",
    "view_weight",
    "mask_ratio",
    "nonzero_ratio",
)


def fine_tune(
    adata: AnnData,
    init: BioFormer | BioFormerDecoder,
    *,
    genes: dict,
    layer: str | None,
    batch_key: str | None,
    labels_key: str | None,
    max_epochs: int | None,
    batch_size: int,
    lr: float,
    seed: int,
    key_added: str,
    copy: bool,
    kept: dict,
    defaults: dict,
    tool,
    train_kwargs: dict,
):
    """``pretrain(adata, init=model)``: check everything, then continue training a copy of ``init`` on ``adata``."""
    _check_init(init, kept, defaults)
    model_cls = type(init)
    check_train_kwargs(train_kwargs, tool=tool, train=model_cls.train, where="`bf.tl.pretrain`")
    obs = _init_columns(adata, init, batch_key=batch_key, labels_key=labels_key)
    genes = init.align_genes(adata, **genes)
    counts = get_matrix(adata, layer)
    aligned = sparse.csr_matrix(counts) if genes.is_identity else genes.take(counts)
    genes.check_cells(counts, aligned, where=matrix_name(layer))
    normalize = init.binning_.get("method", "value") == "value"
    check_counts(aligned, where=f"{matrix_name(layer)} (the model's genes)", require_integer=normalize)
    binned_layer = init.registry_["setup_args"]["layer"]
    if not binned_layer.endswith("_binned"):
        raise ValueError(
            f"The model reads its tokens from `layers[{binned_layer!r}]`, a layer `bf.pp.bin` does not name; "
            "`init=` fine-tunes models trained by `bf.tl.pretrain`, which bins into `<key_added>_binned`."
        )
    check_batch_size(adata.n_obs, batch_size)

    if copy:
        adata = adata.copy()
    quiet_seed(seed)
    # the model's genes, in its order, binned on its scale (its recorded target_sum), as a query is
    work = AnnData(X=aligned, obs=obs.set_axis(adata.obs_names.copy()), var=init.gene_table_.copy())
    bin_as_recorded(work, init.binning_, layer=None, key_added=binned_layer.removesuffix("_binned"))
    registry = init.registry_
    model_cls.setup_anndata(work, source_registry=registry, **registry["setup_args"])
    model = model_cls(work, **init_arguments(init.init_params_) | {"n_bins": int(init.module.n_bins)})
    model.module.load_state_dict(init.module.state_dict())
    model.binning_ = dict(init.binning_)
    model.train(max_epochs=max_epochs, batch_size=batch_size, lr=lr, **train_kwargs)
    # the binned layer fits the caller's AnnData only when it has exactly the model's genes
    same_layout = genes.is_identity and binned_layer == Keys(key_added).binned
    binned = (work.layers[binned_layer], work.uns[binned_layer]) if same_layout else None
    params = {
        "layer": layer,
        "batch_key": batch_key,
        "labels_key": labels_key,
        "init": f"{type(init).__name__} of {init.genes_.size} genes",
        "gene_coverage": float(genes.coverage),
        **{k: v for k, v in init_arguments(init.init_params_).items() if isinstance(v, int | float | str)},
    }
    return write_results(
        adata, model, Keys(key_added), binned, params | {"batch_size": batch_size, "lr": lr, "seed": seed}, copy
    )


def _check_init(init, kept: dict, defaults: dict) -> None:
    """Raise unless ``init`` is a trained pretrained model and no argument asks to change what it keeps."""
    if not isinstance(init, BioFormer | BioFormerDecoder):
        raise TypeError(
            f"`init` must be a trained BioFormer or BioFormerDecoder (e.g. `bf.BioFormer.load(dir_path)`), not "
            f"{type(init).__name__}."
        )
    if not init.is_trained_:
        raise ValueError("`init` is not trained: train it first, or leave `init` out to train a new model.")
    if getattr(init, "control_", None) is not None:
        raise ValueError(
            "`init` is a perturbation model; `pretrain(init=...)` continues the pretraining of a pretrained one. "
            "Fine-tune perturbation models with `bf.tl.train_perturbation(adata, model, ...)`."
        )
    own = init_arguments(init.init_params_) | {
        "binning": init.binning_.get("method", "value"),
        "n_bins": init.binning_.get("n_bins", init.binning_.get("n_ranks")),
        "architecture": init.architecture,
    }
    changed = [
        f"{name}={value!r}"
        for name, value in kept.items()
        if value != defaults[name] and (name not in own or value != own[name])
    ]
    if changed:
        raise ValueError(
            f"With `init=`, the model keeps its own tokens, size and objective, so {', '.join(changed)} cannot apply. "
            "Leave them out, or train a new model without `init`."
        )


def _init_columns(adata: AnnData, init, *, batch_key: str | None, labels_key: str | None) -> pd.DataFrame:
    """The batch and label columns of the cells, under the names and with the categories of ``init``'s registry.

    A column ``init`` was not trained with is refused (it has no token for it); without the column,
    every cell gets the model's first category, as a query does.
    """
    columns = {}
    for kind, key in (("batch", batch_key), ("labels", labels_key)):
        check_obs_key(adata, key, argument=f"{kind}_key")
        registered, known = init.registry_["setup_args"].get(f"{kind}_key"), init.condition_categories(kind)
        if key is not None and registered is None:
            raise ValueError(
                f"`{kind}_key` was given, but the model in `init` was trained without one, so it has no {kind} token "
                f"to learn. Leave `{kind}_key` out, or train a new model with it."
            )
        if registered is None:
            continue
        values = adata.obs[key].astype(str) if key is not None else pd.Series(known[0], index=adata.obs_names)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"`adata.obs[{key!r}]` has categories the model in `init` was not trained with ({unknown[:5]}); it "
                f"knows {known[:10]}. Relabel the cells with these, leave `{kind}_key` out (every cell then gets "
                f"{known[0]!r}), or train a new model."
            )
        columns[registered] = pd.Categorical(values.to_numpy(), categories=known)
    return pd.DataFrame(columns, index=pd.RangeIndex(adata.n_obs))
