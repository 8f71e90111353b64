"""CellDiffusion: the latent-token diffusion model, its conditions, sampler, generation and files."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi
import torch

import bioformers as bf
from bioformers.module import CellDiffusionModule
from bioformers.nn import AdaLNBlock, ConditionEmbedding, cosine_alphas_cumprod, timestep_embedding

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def _type_means(X, labels: pd.Series, types: list[str]) -> np.ndarray:
    return np.vstack([np.asarray(X[(labels == t).to_numpy()].mean(axis=0)).ravel() for t in types])


def _log_normalized(adata):
    out = adata.copy()
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


@pytest.fixture(scope="module")
def typed():
    """A model conditioned on cell type (categorical) and a dose (continuous), trained briefly."""
    scvi.settings.seed = 0
    adata = bf.datasets.synthetic(n_obs=600, n_vars=60, seed=3)
    adata.obs["dose"] = np.random.default_rng(0).uniform(0.0, 1.0, adata.n_obs)
    bf.CellDiffusion.setup_anndata(
        adata, categorical_covariate_keys=["cell_type", "batch"], continuous_covariate_keys=["dose"]
    )
    model = bf.CellDiffusion(adata, n_tokens=4, token_dim=8, n_hidden=32, n_layers=2, n_heads=2, n_encoder_hidden=128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=80, autoencoder_epochs=40, batch_size=100, lr=3e-3, **QUIET)
    return adata, model


@pytest.fixture(scope="module")
def perturbed():
    """A model conditioned on a set of knocked-out genes (planted program effects)."""
    scvi.settings.seed = 0
    adata = bf.datasets.synthetic_perturbation(n_obs=600, n_vars=40, n_programs=2, targets_per_program=1, seed=2)
    bf.CellDiffusion.setup_anndata(adata, perturbation_key="perturbation", control="control")
    model = bf.CellDiffusion(adata, n_tokens=4, token_dim=8, n_hidden=32, n_layers=2, n_heads=2, n_encoder_hidden=128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=80, autoencoder_epochs=40, batch_size=100, lr=3e-3, **QUIET)
    return adata, model


# --- the network's parts ------------------------------------------------------------------------------


def test_cosine_schedule_runs_from_signal_to_noise():
    alphas = cosine_alphas_cumprod(1000)
    assert alphas.shape == (1000,)
    assert (alphas[1:] < alphas[:-1]).all()
    assert alphas[0] > 0.999 and alphas[-1] < 1e-3


def test_timestep_embedding_tells_steps_apart():
    embedding = timestep_embedding(torch.tensor([0, 1, 500, 999]), 15)
    assert embedding.shape == (4, 15)
    assert torch.cdist(embedding, embedding).triu(1)[torch.triu(torch.ones(4, 4), 1).bool()].min() > 0.1


def test_adaptive_block_starts_as_identity_and_is_steered_by_the_condition():
    torch.manual_seed(0)
    block = AdaLNBlock(16, 2)
    x, c = torch.randn(3, 5, 16), torch.randn(3, 16)
    torch.testing.assert_close(block(x, c), x)  # adaLN-Zero: gates start at 0
    torch.nn.init.normal_(block.modulation[-1].weight)
    assert not torch.allclose(block(x, c), block(x, c + 1))


def test_condition_embedding_kinds():
    torch.manual_seed(0)
    embedding = ConditionEmbedding(8, categorical_sizes=[3], n_continuous=1, n_set_items=3)
    for p in (embedding.set_empty, embedding.set_none, embedding.continuous_none):
        torch.nn.init.normal_(p)
    cat = torch.tensor([[0], [0], [0], [0], [3]])
    cont = torch.tensor([[0.5], [0.5], [0.5], [float("nan")], [0.5]])
    # the set {0, 2} in two orders and with different padding, the empty set, and "none"
    items = torch.tensor([[0, 2, -1], [2, 0, -1], [-1, -1, -1], [0, 2, -1], [0, 2, -1]])
    none = torch.tensor([False, False, False, False, True])
    out = embedding(5, cat, cont, items, none)
    torch.testing.assert_close(out[0], out[1])  # a set: order does not matter
    assert not torch.allclose(out[0], out[2])  # the empty set (control) has its own vector
    categorical = embedding.categorical[0]
    continuous = embedding.continuous[0](torch.tensor([[0.5]]))[0]
    pooled = embedding.set_projection(embedding.set_items(torch.tensor([0, 2])).mean(dim=0))
    torch.testing.assert_close(out[0], categorical.weight[0] + continuous + pooled)
    torch.testing.assert_close(out[3], categorical.weight[0] + embedding.continuous_none[0] + pooled)
    torch.testing.assert_close(out[4], categorical.weight[3] + continuous + embedding.set_none)
    # dropping every condition gives the same "none" vector for every cell
    dropped = embedding(5, cat, cont, items, none, drop=torch.ones(5, 3, dtype=torch.bool))
    torch.testing.assert_close(dropped, dropped[:1].expand(5, -1))


def test_ddim_with_the_ideal_denoiser_recovers_the_data_point():
    """For data concentrated on one point z*, the ideal noise estimate is known in closed form."""
    torch.manual_seed(0)
    module = CellDiffusionModule(10, n_tokens=3, token_dim=4, n_hidden=8, n_layers=1, n_heads=2, n_encoder_hidden=8)
    target = torch.nn.functional.layer_norm(torch.randn(3, 4), (4,))

    def ideal(z_t, t, condition):
        alpha = module.alphas_cumprod[t].view(-1, 1, 1)
        return (z_t - alpha.sqrt() * target) / (1 - alpha).sqrt()

    module.predict_noise = ideal
    for n_steps in (5, 50):
        z = module.sample(torch.zeros(6, 8), None, n_steps=n_steps, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(z, target.expand(6, -1, -1), atol=1e-4, rtol=1e-4)


def test_stages_decide_what_learns():
    torch.manual_seed(0)
    module = CellDiffusionModule(12, n_tokens=2, token_dim=4, n_hidden=8, n_layers=1, n_heads=2, n_encoder_hidden=16)
    tensors = {"X": torch.poisson(torch.rand(6, 12) * 3) + torch.eye(6, 12)}

    def run(stage):
        module.zero_grad()
        module.stage = stage
        inference = module.inference(tensors["X"])
        generative = module.generative(**module._get_generative_input(tensors, inference))
        loss = module.loss(tensors, inference, generative)
        loss.loss.backward()
        return loss

    loss = run("autoencoder")
    assert float(loss.extra_metrics["diffusion"]) == 0 and float(loss.extra_metrics["reconstruction"]) > 0
    assert module.denoiser.output.weight.grad is None or not module.denoiser.output.weight.grad.any()
    loss = run("diffusion")
    assert float(loss.extra_metrics["reconstruction"]) == 0 and float(loss.extra_metrics["diffusion"]) > 0
    assert module.encoder[0].weight.grad is None or not module.encoder[0].weight.grad.any()
    assert module.denoiser.output.weight.grad.abs().sum() > 0
    loss = run("joint")
    # the diffusion loss never reaches the encoder: its gradient is the reconstruction's alone
    joint_grad = module.encoder[0].weight.grad.clone()
    module.zero_grad()
    module.stage = "autoencoder"
    inference = module.inference(tensors["X"])
    module.reconstruction_loss(inference["expression"], inference["z"]).mean().backward()
    torch.testing.assert_close(module.encoder[0].weight.grad, joint_grad)


def test_latent_tokens_are_standardised_and_input_is_log_normalised():
    module = CellDiffusionModule(5, n_tokens=3, token_dim=4, n_hidden=8, n_layers=1, n_heads=2, n_encoder_hidden=8)
    counts = torch.tensor([[1.0, 0, 3, 0, 6], [0, 2, 0, 2, 0]])
    expected = torch.log1p(counts / counts.sum(dim=1, keepdim=True) * 1e4)
    torch.testing.assert_close(module.normalize(counts), expected)
    z = module.encode(expected)
    assert z.shape == (2, 3, 4)
    torch.testing.assert_close(z.mean(dim=-1), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(dim=-1, unbiased=False), torch.ones(2, 3), atol=1e-3, rtol=0)


# --- the trained model ----------------------------------------------------------------------------------


def test_generated_anndata_is_ready_for_scanpy(typed):
    adata, model = typed
    cells = bf.tl.generate(
        model, {"cell_type": ["type_0", "type_1"], "batch": "batch_0", "dose": 0.5}, n_per_condition=7
    )
    assert cells.shape == (14, adata.n_vars)
    assert (cells.var_names == adata.var_names).all()
    assert cells.obs["cell_type"].tolist() == ["type_0"] * 7 + ["type_1"] * 7
    assert list(cells.obs["cell_type"].cat.categories) == ["type_0", "type_1", "type_2"]
    assert (cells.obs["dose"] == 0.5).all() and cells.obs["dose"].dtype == float
    assert cells.X.format == "csr" and cells.X.dtype == np.float32
    assert cells.X.data.min() > 0 and np.isfinite(cells.X.data).all()
    assert 0 < cells.X.nnz < cells.X.shape[0] * cells.X.shape[1]  # sparse: genes are detected or not
    assert cells.uns["log1p"] == {"base": None}
    params = cells.uns["bioformers_generated"]["params"]
    assert params["n_per_condition"] == 7 and params["n_steps"] == 50 and params["guidance"] == 1.0
    # joins real cells for a joint analysis
    joint = sc.concat({"real": _log_normalized(adata), "generated": cells}, label="source", index_unique="-")
    sc.pp.pca(joint, n_comps=5)
    assert joint.obsm["X_pca"].shape == (adata.n_obs + 14, 5)


def test_generated_cells_follow_their_cell_type(typed):
    adata, model = typed
    types = ["type_0", "type_1", "type_2"]
    cells = bf.tl.generate(model, {"cell_type": types, "batch": None, "dose": None}, n_per_condition=80, seed=0)
    real = _log_normalized(adata)
    corr = np.corrcoef(
        _type_means(real.X, real.obs["cell_type"], types), _type_means(cells.X, cells.obs["cell_type"], types)
    )
    corr = corr[:3, 3:]
    assert (np.argmax(corr, axis=1) == np.arange(3)).all(), corr
    assert np.diag(corr).min() > 0.8, corr
    # the detection rate is learned too: generated cells express about as many genes as real ones
    ratio = cells.X.getnnz(axis=1).mean() / real.X.getnnz(axis=1).mean()
    assert 0.7 < ratio < 1.3, ratio


def test_conditioning_changes_the_cells_from_the_same_noise(typed):
    _, model = typed
    first = bf.tl.generate(model, {"cell_type": "type_0", "batch": "batch_0", "dose": 0.5}, n_per_condition=20, seed=1)
    second = bf.tl.generate(model, {"cell_type": "type_1", "batch": "batch_0", "dose": 0.5}, n_per_condition=20, seed=1)
    free = bf.tl.generate(model, {"cell_type": None, "batch": None, "dose": None}, n_per_condition=20, seed=1)
    assert "cell_type" not in free.obs
    assert abs(first.X - second.X).sum() > 0.1 * abs(first.X).sum()
    assert abs(first.X - free.X).sum() > 0
    # guidance above 1 moves the cells further, from the same noise
    guided = bf.tl.generate(
        model, {"cell_type": "type_0", "batch": "batch_0", "dose": 0.5}, n_per_condition=20, seed=1, guidance=3.0
    )
    assert abs(guided.X - first.X).sum() > 0


def test_seeds_reproduce(typed):
    _, model = typed
    condition = {"cell_type": "type_2", "batch": "batch_1", "dose": 0.2}
    first = bf.tl.generate(model, condition, n_per_condition=10, seed=4)
    again = bf.tl.generate(model, condition, n_per_condition=10, seed=4)
    other = bf.tl.generate(model, condition, n_per_condition=10, seed=5)
    np.testing.assert_array_equal(first.X.toarray(), again.X.toarray())
    assert (first.X != other.X).nnz > 0


def test_save_and_load_generate_the_same_cells(typed, tmp_path):
    adata, model = typed
    model.save(str(tmp_path / "diffusion"), save_anndata=True)
    loaded = bf.CellDiffusion.load(str(tmp_path / "diffusion"))
    assert loaded.condition_keys == ["cell_type", "batch", "dose"]
    assert loaded.training_stages_ == {"autoencoder": 40, "diffusion": 80}
    condition = {"cell_type": "type_1", "batch": "batch_0", "dose": 0.7}
    before = bf.tl.generate(model, condition, n_per_condition=8, seed=2)
    after = bf.tl.generate(loaded, condition, n_per_condition=8, seed=2)
    np.testing.assert_array_equal(before.X.toarray(), after.X.toarray())
    # each model class refuses the other's files, saying which class to use
    with pytest.raises(ValueError, match=r"holds a CellDiffusion, not a BioFormer.*bf.CellDiffusion.load"):
        bf.BioFormer.load(str(tmp_path / "diffusion"))
    assert np.isfinite(model.get_latent_representation()).all()
    assert model.get_latent_representation().shape == (adata.n_obs, 4 * 8)


def test_training_records_both_stages(typed):
    _, model = typed
    assert model.training_stages_ == {"autoencoder": 40, "diffusion": 80}
    reconstruction = model.history_["reconstruction_train"].iloc[:, 0].to_numpy()
    diffusion = model.history_["diffusion_train"].iloc[:, 0].to_numpy()
    assert len(reconstruction) == 120
    assert reconstruction[39] < reconstruction[0]  # the autoencoder learned
    assert diffusion[-1] < diffusion[40]  # then the denoiser did
    assert all(p.requires_grad for p in model.module.parameters())  # nothing left frozen


def test_perturbation_sets_reproduce_the_planted_effects(perturbed):
    adata, model = perturbed
    effect = adata.uns["planted_effect"]
    targets = [t for t in effect.index if t in set(adata.obs["perturbation"])]
    conditions = {"perturbation": ["control", *targets]}
    cells = bf.tl.generate(model, conditions, n_per_condition=150, seed=0)
    means = _type_means(np.expm1(cells.X.toarray()), cells.obs["perturbation"], ["control", *targets])
    for i, target in enumerate(targets, start=1):
        planted = effect.loc[target].to_numpy()
        responding = (np.abs(planted) > 0.5) & (adata.var_names != target)
        change = np.log((means[i] + 0.1) / (means[0] + 0.1))
        agree = (np.sign(change[responding]) == np.sign(planted[responding])).mean()
        assert agree > 0.8, (target, agree)


def test_unseen_perturbation_combinations_need_permission(perturbed):
    _, model = perturbed
    targets = model.conditions_[0]["items"]
    combination = f"{targets[0]}+{targets[1]}"
    with pytest.raises(ValueError, match=r"No training cell had perturbation=.*allow_unseen=True"):
        bf.tl.generate(model, {"perturbation": combination}, n_per_condition=3)
    cells = bf.tl.generate(model, {"perturbation": combination}, n_per_condition=3, allow_unseen=True)
    assert cells.obs["perturbation"].tolist() == [combination] * 3
    with pytest.raises(ValueError, match=r"Unknown perturbation\(s\) \['NOPE'\].*perturbed in training"):
        bf.tl.generate(model, {"perturbation": "NOPE"}, n_per_condition=3)


# --- bad input ------------------------------------------------------------------------------------------


def test_bad_conditions_name_what_to_do(typed):
    _, model = typed
    full = {"cell_type": "type_0", "batch": "batch_0", "dose": 0.5}
    with pytest.raises(ValueError, match=r"Unknown value\(s\) \['type_9'\] of condition 'cell_type'.*type_0.*type_2"):
        bf.tl.generate(model, full | {"cell_type": "type_9"})
    with pytest.raises(ValueError, match=r"Condition key\(s\) \['dose'\] missing.*'dose': None"):
        bf.tl.generate(model, {"cell_type": "type_0", "batch": "batch_0"})
    with pytest.raises(ValueError, match=r"\['donor'\] are not conditions of this model"):
        bf.tl.generate(model, full | {"donor": "d1"})
    with pytest.raises(ValueError, match="bare value is ambiguous"):
        bf.tl.generate(model, "type_0")
    with pytest.raises(ValueError, match=r"outside the training range.*allow_unseen=True"):
        bf.tl.generate(model, full | {"dose": 5.0})
    with pytest.raises(ValueError, match="different lengths"):
        bf.tl.generate(model, full | {"cell_type": ["type_0", "type_1"], "batch": ["batch_0"] * 3})
    with pytest.raises(ValueError, match=r"\['temperature'\] apply to a decoder-only BioFormer only"):
        bf.tl.generate(model, full, temperature=0.5)
    with pytest.raises(ValueError, match="n_steps"):
        bf.tl.generate(model, full, n_steps=0)
    with pytest.raises(ValueError, match="finite numbers"):
        bf.tl.generate(model, full | {"dose": "high"})
    # a DataFrame of conditions works as the dict does
    frame = pd.DataFrame({"cell_type": ["type_0", "type_1"], "batch": ["batch_0", "batch_1"], "dose": [0.1, 0.9]})
    assert bf.tl.generate(model, frame, n_per_condition=2).obs["cell_type"].tolist() == ["type_0"] * 2 + ["type_1"] * 2


def test_unseen_category_combinations_need_permission():
    scvi.settings.seed = 0
    adata = bf.datasets.synthetic(n_obs=120, n_vars=20)
    # type_0 only in batch_0
    adata = adata[~((adata.obs["cell_type"] == "type_0") & (adata.obs["batch"] == "batch_1"))].copy()
    bf.CellDiffusion.setup_anndata(adata, categorical_covariate_keys=["cell_type", "batch"])
    model = bf.CellDiffusion(adata, n_tokens=2, token_dim=4, n_hidden=8, n_layers=1, n_heads=2, n_encoder_hidden=16)
    model.train(max_epochs=1, autoencoder_epochs=1, batch_size=40, **QUIET)
    with pytest.raises(ValueError, match=r"No training cell had cell_type='type_0', batch='batch_1'"):
        bf.tl.generate(model, {"cell_type": "type_0", "batch": "batch_1"}, n_per_condition=2)
    assert (
        bf.tl.generate(model, {"cell_type": "type_0", "batch": "batch_1"}, n_per_condition=2, allow_unseen=True).n_obs
        == 2
    )
    # one condition left out: type_0 was seen (in batch_0)
    assert bf.tl.generate(model, {"cell_type": "type_0", "batch": None}, n_per_condition=2).n_obs == 2


def test_without_condition_dropout_nothing_can_be_left_out():
    scvi.settings.seed = 0
    adata = bf.datasets.synthetic(n_obs=80, n_vars=20)
    bf.CellDiffusion.setup_anndata(adata, categorical_covariate_keys=["cell_type"])
    model = bf.CellDiffusion(
        adata, n_tokens=2, token_dim=4, n_hidden=8, n_layers=1, n_heads=2, n_encoder_hidden=16, condition_dropout=0.0
    )
    model.train(max_epochs=1, autoencoder_epochs=1, batch_size=40, **QUIET)
    with pytest.raises(ValueError, match="condition_dropout=0"):
        bf.tl.generate(model, {"cell_type": None}, n_per_condition=2)
    with pytest.raises(ValueError, match="Classifier-free guidance needs the unconditional model"):
        bf.tl.generate(model, {"cell_type": "type_0"}, n_per_condition=2, guidance=2.0)
    assert bf.tl.generate(model, {"cell_type": "type_0"}, n_per_condition=2).n_obs == 2


def test_joint_schedule_trains_one_stage():
    scvi.settings.seed = 0
    adata = bf.datasets.synthetic(n_obs=80, n_vars=20)
    bf.CellDiffusion.setup_anndata(adata)
    model = bf.CellDiffusion(adata, n_tokens=2, token_dim=4, n_hidden=8, n_layers=1, n_heads=2, n_encoder_hidden=16)
    model.train(max_epochs=2, schedule="joint", batch_size=40, **QUIET)
    assert model.training_stages_ == {"joint": 2}
    history = model.history_
    assert (history["reconstruction_train"].iloc[:, 0] > 0).all() and (history["diffusion_train"].iloc[:, 0] > 0).all()
    cells = bf.tl.generate(model, n_per_condition=4)
    assert cells.shape == (4, 20) and len(cells.obs.columns) == 0
    with pytest.raises(ValueError, match="trained without conditions"):
        bf.tl.generate(model, "type_0")
    with pytest.raises(ValueError, match="schedule"):
        model.train(max_epochs=1, schedule="both")


@pytest.mark.parametrize(
    ("change", "kwargs", "error", "match"),
    [
        (lambda a: a.X.__setitem__((0, 0), 0.5), {}, ValueError, "non-integer"),
        (
            lambda a: a.obs.__setitem__(
                "cell_type", a.obs["cell_type"].astype(object).where(a.obs.index != a.obs.index[0])
            ),
            {"categorical_covariate_keys": ["cell_type"]},
            ValueError,
            "missing value",
        ),
        (
            lambda a: None,
            {"categorical_covariate_keys": "cell_type"},
            TypeError,
            r"list of `obs` columns: pass `\['cell_type'\]`",
        ),
        (lambda a: None, {"categorical_covariate_keys": ["celltype"]}, KeyError, "Did you mean 'cell_type'"),
        (lambda a: None, {"continuous_covariate_keys": ["cell_type"]}, ValueError, "finite numbers"),
        (
            lambda a: None,
            {"categorical_covariate_keys": ["batch"], "continuous_covariate_keys": ["batch"]},
            ValueError,
            "more than one condition",
        ),
        (lambda a: None, {"perturbation_key": "batch"}, ValueError, "control label 'control'"),
    ],
)
def test_setup_refuses_bad_input_before_writing(change, kwargs, error, match):
    adata = bf.datasets.synthetic(n_obs=40, n_vars=10)
    change(adata)
    snapshot = adata.copy()
    with pytest.raises(error, match=match):
        bf.CellDiffusion.setup_anndata(adata, **kwargs)
    assert set(adata.uns) == set(snapshot.uns) and list(adata.obs.columns) == list(snapshot.obs.columns)


def test_model_sizes_are_checked():
    adata = bf.datasets.synthetic(n_obs=40, n_vars=10)
    bf.CellDiffusion.setup_anndata(adata)
    with pytest.raises(ValueError, match="n_tokens"):
        bf.CellDiffusion(adata, n_tokens=0)
    with pytest.raises(ValueError, match="divisible"):
        bf.CellDiffusion(adata, n_hidden=10, n_heads=4)
    with pytest.raises(ValueError, match="condition_dropout"):
        bf.CellDiffusion(adata, condition_dropout=1.0)
