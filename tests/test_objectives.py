"""The count and two-view objectives of the encoder: what each loss computes, and what trains through it."""

import math

import numpy as np
import pytest
import scanpy as sc
import torch
from scipy import sparse

import bioformers as bf
from bioformers._keys import COUNTS_KEY
from bioformers.data._views import thin, value_bins
from bioformers.module import BioFormerModule, redundancy_reduction
from bioformers.pp._binning import bin_counts

N_GENES = 30
BINNING = {"target_sum": 50.0, "cutoff": 8.0, "bins_per_octave": 3}


@pytest.fixture
def counts():
    generator = torch.Generator().manual_seed(0)
    rates = torch.rand(8, N_GENES, generator=generator) * 6
    counts = torch.poisson(rates, generator=generator)
    counts[:, 0] += 1  # no empty cell
    return counts


def _bins(counts: torch.Tensor) -> torch.Tensor:
    binned, _ = bin_counts(sparse.csr_matrix(counts.numpy()), target_sum=BINNING["target_sum"])
    return torch.from_numpy(binned.toarray()).long()


def _module(**kwargs):
    torch.manual_seed(0)
    return BioFormerModule(N_GENES, 20, n_hidden=16, n_layers=1, n_heads=2, max_seq_len=16, **kwargs)


def _step(module, counts):
    module.train().zero_grad()
    tensors = {"X": _bins(counts), COUNTS_KEY: counts}
    inference = module.inference(**module._get_inference_input(tensors))
    generative = module.generative(**module._get_generative_input(tensors, inference))
    return inference, module.loss(tensors, inference, generative)


def test_count_loss_is_the_negative_binomial_likelihood_by_hand(counts):
    module = _module(count_weight=1.0)
    with torch.no_grad():
        module.log_dispersion.fill_(math.log(2.0))
    logits = torch.randn(len(counts), N_GENES)
    got = module.count_nll(logits, counts)
    share = logits.softmax(dim=-1)
    theta = 2.0
    expected = []
    for cell in range(len(counts)):
        total, terms = counts[cell].sum().item(), []
        for gene in range(N_GENES):
            x, mu = counts[cell, gene].item(), total * share[cell, gene].item()
            log_p = (
                math.lgamma(x + theta)
                - math.lgamma(theta)
                - math.lgamma(x + 1)
                + theta * math.log(theta / (theta + mu))
                + x * math.log(mu / (theta + mu))
            )
            terms.append(-log_p)
        expected.append(np.mean(terms))
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-4)


def test_count_loss_enters_the_total_with_its_weight(counts):
    module = _module(count_weight=3.0, expression_weight=0.0)
    _, loss = _step(module, counts)
    total = loss.extra_metrics["mlm_loss"] + 3.0 * loss.extra_metrics["count_loss"]
    torch.testing.assert_close(loss.loss, total, rtol=1e-5, atol=1e-6)


def test_views_differ_from_the_cell_only_by_thinning(counts):
    generator = torch.Generator().manual_seed(1)
    keep = torch.full((len(counts),), 0.5)
    thinned = thin(counts, keep, generator)
    assert (thinned <= counts).all() and (thinned >= 0).all() and torch.equal(thinned, thinned.round())
    assert not torch.equal(thinned, counts)
    # keeping every molecule changes nothing; keeping half keeps about half
    assert torch.equal(thin(counts, torch.ones(len(counts)), generator), counts)
    many = thin(counts.repeat(200, 1), torch.full((200 * len(counts),), 0.5), generator)
    np.testing.assert_allclose(many.sum().item() / (200 * counts.sum().item()), 0.5, atol=0.01)
    # a view is binned exactly as bf.pp.bin bins counts
    torch.testing.assert_close(value_bins(counts, max_bin=10_000, **BINNING), _bins(counts))
    np.testing.assert_array_equal(
        value_bins(thinned, max_bin=10_000, **BINNING).numpy(),
        bin_counts(sparse.csr_matrix(thinned.numpy()), target_sum=BINNING["target_sum"])[0].toarray(),
    )


def test_redundancy_reduction_by_hand():
    z1 = torch.tensor([[1.0, 2.0], [3.0, 1.0], [2.0, 0.0]])
    z2 = torch.tensor([[1.0, 1.0], [2.0, 3.0], [3.0, 2.0]])
    standard = [(z - z.mean(0)) / z.std(0, correction=0) for z in (z1, z2)]
    c = standard[0].T @ standard[1] / 3
    expected = ((1 - c[0, 0]) ** 2 + (1 - c[1, 1]) ** 2 + 0.5 * (c[0, 1] ** 2 + c[1, 0] ** 2)) / 2
    torch.testing.assert_close(redundancy_reduction(z1, z2), expected)
    # identical views of independent features cost nothing on the diagonal
    same = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    assert redundancy_reduction(same, same, off_diagonal=0.0) < 1e-6


def test_view_loss_reaches_cls_through_both_views(counts):
    module = _module(view_weight=1.0, view_binning=BINNING, expression_weight=0.0)
    inference, loss = _step(module, counts)
    assert inference["cls_view"].shape == inference["cls"].shape
    view_loss = redundancy_reduction(
        module.view_projector(inference["cls"]), module.view_projector(inference["cls_view"])
    )
    torch.testing.assert_close(loss.extra_metrics["view_loss"], view_loss.detach())
    grads = torch.autograd.grad(view_loss, [inference["cls"], inference["cls_view"]], retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)


def test_count_loss_gradient_reaches_cls(counts):
    module = _module(count_weight=1.0, expression_weight=0.0)
    inference, loss = _step(module, counts)
    count_loss = module.count_nll(module.decode_counts(inference["cls"]), counts).mean()
    torch.testing.assert_close(loss.extra_metrics["count_loss"], count_loss.detach())
    (grad,) = torch.autograd.grad(count_loss, [inference["cls"]])
    assert grad.abs().sum() > 0


def test_views_are_drawn_in_training_only(counts):
    module = _module(view_weight=1.0, view_binning=BINNING).eval()
    tensors = {"X": _bins(counts), COUNTS_KEY: counts}
    assert "cls_view" not in module.inference(**module._get_inference_input(tensors))


def test_pretrain_registers_counts_and_predicts_from_the_count_decoder():
    adata = bf.datasets.synthetic(n_obs=120, n_vars=30)
    model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, max_epochs=1, batch_size=32, enable_progress_bar=False)
    assert model.has_counts and model.module.count_head is not None
    bf.tl.predict(adata, model)
    decoded = model.get_normalized_expression()
    target_sum = adata.uns["bioformers_binned"]["params"]["target_sum"]
    np.testing.assert_allclose(decoded.sum(axis=1), target_sum, rtol=1e-4)
    np.testing.assert_allclose(adata.layers["bioformers_predicted"], decoded, rtol=1e-5)
    assert adata.uns["bioformers_predicted"]["params"]["scale"] == "normalized counts"


def test_normalized_expression_needs_the_count_decoder():
    adata = bf.datasets.synthetic(n_obs=120, n_vars=30)
    model = bf.tl.pretrain(
        adata, n_layers=1, n_hidden=16, max_epochs=1, batch_size=32, count_weight=0, enable_progress_bar=False
    )
    with pytest.raises(ValueError, match="count decoder, which this model lacks"):
        model.get_normalized_expression()


def test_count_objective_says_where_the_counts_went(snapshot, assert_unchanged):
    # binned from X, then X log-normalised in place: the recorded source no longer holds counts
    adata = bf.datasets.synthetic(n_obs=60, n_vars=20)
    bf.pp.bin(adata)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    before = snapshot(adata)
    with pytest.raises(ValueError, match=r"binned from adata\.X.*bf\.pp\.bin\(adata, layer='counts'\)"):
        bf.tl.pretrain(adata, max_epochs=1, batch_size=16, enable_progress_bar=False)
    assert_unchanged(before, adata)


def test_count_objective_reads_the_layer_the_bins_were_made_from():
    # the tutorial's order: counts kept in a layer, binned from it, X log-normalised afterwards
    adata = bf.datasets.synthetic(n_obs=60, n_vars=20)
    adata.layers["counts"] = adata.X.copy()
    bf.pp.bin(adata, layer="counts")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, max_epochs=1, batch_size=16, enable_progress_bar=False)
    decoded = model.get_normalized_expression()  # the count decoder was trained and fitted
    assert np.isfinite(decoded).all()
    np.testing.assert_allclose(decoded.sum(axis=1), adata.uns["bioformers_binned"]["params"]["target_sum"], rtol=1e-4)
