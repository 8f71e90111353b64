"""Decoder-only BioFormer: sequence order, objective, generation, conditions, and what it refuses."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bioformers as bf
from bioformers.data import order_by_value
from bioformers.module import BioFormerDecoderModule

N_GENES, N_BINS = 30, 6


@pytest.fixture(scope="module")
def decoder_data():
    adata = bf.datasets.synthetic(n_obs=360, n_vars=40, n_cell_types=3, seed=3)
    model = bf.tl.pretrain(
        adata,
        architecture="decoder",
        labels_key="cell_type",
        n_layers=2,
        n_hidden=32,
        n_heads=2,
        max_seq_len=48,
        max_epochs=20,
        batch_size=16,
        lr=3e-3,
        enable_progress_bar=False,
    )
    return adata, model


def test_genes_are_ordered_by_descending_value_with_ties_fixed_by_the_cell():
    bins = torch.tensor([[0, 3, 1, 3, 0, 2, 1], [1, 0, 0, 0, 0, 0, 5]])
    genes, values, n_expressed = order_by_value(bins, 6, random=False)
    assert n_expressed.tolist() == [5, 2]
    assert values.tolist() == [[3, 3, 2, 1, 1, 0], [5, 1, 0, 0, 0, 0]]
    assert set(genes[0, :2].tolist()) == {1, 3} and genes[0, 2] == 5 and set(genes[0, 3:5].tolist()) == {2, 6}
    assert genes[1, :2].tolist() == [6, 0]
    # the tie order depends on the cell alone, not on its neighbours in the batch
    alone, _, _ = order_by_value(bins[:1], 6, random=False)
    assert torch.equal(alone[0], genes[0])
    # truncation keeps the highest genes
    _, short_values, _ = order_by_value(bins, 2, random=False)
    assert short_values.tolist() == [[3, 3], [5, 1]]


def test_loss_is_next_gene_and_next_bin_cross_entropy_without_repeats():
    torch.manual_seed(0)
    module = BioFormerDecoderModule(
        N_GENES, N_BINS, n_hidden=16, n_layers=1, n_heads=2, max_seq_len=9, expression_weight=0.0
    ).eval()
    bins = torch.zeros(2, N_GENES, dtype=torch.long)
    bins[0, [4, 7, 9]] = torch.tensor([5, 2, 3])  # 3 genes: fit, so the end is a target
    bins[1, :12] = 1  # 12 genes: cut to 8, no end target
    inference = module.inference(bins)
    generative = module.generative(**{k: inference[k] for k in ("hidden", "genes", "n_expressed", "bins")})
    logits = generative["gene_logits"].float()
    # step j cannot draw a gene of an earlier step
    for j in range(1, 4):
        assert torch.isinf(logits[0, j, inference["genes"][0, :j]]).all()
    # cell 0: targets are genes 4, 9, 7 then the end; bins 5, 3, 2
    gene_ce = F.cross_entropy(logits[0, :4], torch.tensor([4, 9, 7, module.end_token]))
    bin_ce = F.cross_entropy(generative["bin_logits"][0, :3].float(), torch.tensor([5, 3, 2]))
    loss = module.loss({}, inference, generative)
    torch.testing.assert_close(loss.reconstruction_loss["reconstruction_loss"][0], gene_ce + bin_ce)
    # cell 1: 8 gene targets and no end
    assert inference["n_expressed"][1] == 12
    gene_ce_1 = F.cross_entropy(logits[1, :8], inference["genes"][1, :8])
    bin_ce_1 = F.cross_entropy(generative["bin_logits"][1].float(), torch.ones(8, dtype=torch.long))
    torch.testing.assert_close(loss.reconstruction_loss["reconstruction_loss"][1], gene_ce_1 + bin_ce_1)


def test_generated_cells_follow_their_condition(decoder_data):
    adata, model = decoder_data
    types = adata.obs["cell_type"].cat.categories.tolist()
    generated = bf.tl.generate(model, types, n_per_condition=60, seed=0)
    assert generated.shape == (180, adata.n_vars)
    assert (generated.var_names == adata.var_names).all()
    assert generated.obs["cell_type"].value_counts().to_dict() == dict.fromkeys(types, 60)
    real = adata.layers["bioformers_binned"]
    fake = generated.layers["bioformers_binned"]
    corr = np.zeros((len(types), len(types)))
    for i, t in enumerate(types):
        real_mean = np.asarray(real[(adata.obs["cell_type"] == t).to_numpy()].mean(axis=0)).ravel()
        for j, u in enumerate(types):
            fake_mean = np.asarray(fake[(generated.obs["cell_type"] == u).to_numpy()].mean(axis=0)).ravel()
            corr[i, j] = np.corrcoef(real_mean, fake_mean)[0, 1]
    # each type's generated cells resemble that type more than any other type
    assert (np.argmax(corr, axis=1) == np.arange(len(types))).all(), corr
    assert np.diag(corr).min() > 0.85, corr
    # bins run downwards, each gene at most once, within the sequence length
    assert fake.getnnz(axis=1).max() <= model.module.n_slots
    assert fake.data.min() >= 1 and fake.data.max() < model.module.n_bins


def test_generation_is_seeded(decoder_data):
    _, model = decoder_data
    first = bf.tl.generate(model, "type_0", n_per_condition=20, seed=5).layers["bioformers_binned"]
    again = bf.tl.generate(model, "type_0", n_per_condition=20, seed=5).layers["bioformers_binned"]
    other = bf.tl.generate(model, "type_0", n_per_condition=20, seed=6).layers["bioformers_binned"]
    assert (first != again).nnz == 0
    assert (first != other).nnz > 0


def test_unconditional_generation_and_embedding(decoder_data):
    adata, model = decoder_data
    generated = bf.tl.generate(model, n_per_condition=30, seed=1)
    assert "cell_type" not in generated.obs
    assert generated.layers["bioformers_binned"].nnz > 0
    # the embedding is condition-free and separates the planted types
    scores = bf.metrics.avg_bio(adata, label_key="cell_type", use_rep="X_bioformers")
    assert scores["nmi"] > 0.5, scores
    # generated cells are embeddable as they are
    bf.tl.embed(generated, model)
    assert generated.obsm["X_bioformers"].shape == (30, 32)


def test_generated_anndata_survives_h5ad(decoder_data, tmp_path):
    import anndata as ad

    _, model = decoder_data
    generated = bf.tl.generate(model, ["type_1", "type_2"], n_per_condition=5, seed=0)
    generated.write_h5ad(tmp_path / "generated.h5ad")
    back = ad.read_h5ad(tmp_path / "generated.h5ad")
    assert (back.layers["bioformers_binned"] != generated.layers["bioformers_binned"]).nnz == 0
    assert back.uns["bioformers_generated"]["params"]["seed"] == 0
    assert back.obs["cell_type"].tolist() == generated.obs["cell_type"].tolist()


def test_saved_decoder_generates_the_same_cells(decoder_data, tmp_path):
    _, model = decoder_data
    model.save(str(tmp_path / "decoder"), save_anndata=True)
    loaded = bf.BioFormer.load(str(tmp_path / "decoder"))
    assert loaded.architecture == "decoder"
    before = bf.tl.generate(model, "type_2", n_per_condition=10, seed=3).layers["bioformers_binned"]
    after = bf.tl.generate(loaded, "type_2", n_per_condition=10, seed=3).layers["bioformers_binned"]
    assert (before != after).nnz == 0


def test_bad_requests_name_what_to_do(decoder_data):
    adata, model = decoder_data
    with pytest.raises(ValueError, match=r"Unknown labels_key value\(s\) \['type_9'\].*type_0"):
        bf.tl.generate(model, "type_9", n_per_condition=5)
    with pytest.raises(ValueError, match=r"\['batch'\] are not conditions of this model; it conditions on"):
        bf.tl.generate(model, {"batch": "batch_0"})
    with pytest.raises(ValueError, match=r"\['guidance'\] apply to a CellDiffusion only"):
        bf.tl.generate(model, "type_0", guidance=2.0)
    with pytest.raises(ValueError, match="positive integer"):
        bf.tl.generate(model, n_per_condition=0)
    with pytest.raises(ValueError, match="holds no condition"):
        bf.tl.generate(model, [])
    with pytest.raises(ValueError, match="temperature"):
        bf.tl.generate(model, n_per_condition=3, temperature=0)
    snapshot = adata.copy()
    with pytest.raises(ValueError, match="needs the encoder"):
        bf.tl.predict(adata, model)
    assert set(adata.layers) == set(snapshot.layers)


def test_encoder_refuses_to_generate():
    adata = bf.datasets.synthetic(n_obs=64, n_vars=20)
    model = bf.tl.pretrain(adata, n_layers=1, n_hidden=16, max_epochs=1, batch_size=32, enable_progress_bar=False)
    with pytest.raises(ValueError, match="needs the decoder"):
        bf.tl.generate(model)


def test_architecture_must_be_known():
    adata = bf.datasets.synthetic(n_obs=64, n_vars=20)
    with pytest.raises(ValueError, match="`architecture` must be 'encoder' or 'decoder'"):
        bf.tl.pretrain(adata, architecture="gpt")
    assert "bioformers_binned" not in adata.layers


def test_cached_generation_matches_the_full_sequence():
    """One token at a time with a key-value cache gives the hidden states of the whole sequence at once."""
    torch.manual_seed(0)
    module = BioFormerDecoderModule(N_GENES, N_BINS, n_hidden=16, n_layers=2, n_heads=2, max_seq_len=12, n_labels=2)
    module.eval()
    genes = torch.randint(0, N_GENES, (3, 6))
    values = torch.randint(1, N_BINS, (3, 6))
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        full = module.forward_sequence(genes, values, labels)
        cache = [{} for _ in module.encoder.blocks]
        prefix = module._prefix(labels, None, 3) + module._positions(0, module.n_prefix, "cpu")
        steps = [module.encoder(prefix, causal=True, cache=cache)[0]]
        for j in range(genes.shape[1]):
            token = module._gene_tokens(genes[:, j : j + 1], values[:, j : j + 1])
            steps.append(module.encoder(token + module._positions(module.n_prefix + j, 1, "cpu"), cache=cache)[0])
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)


def test_decoder_reads_rank_tokens():
    """Rank tokens (``bf.pp.rank``) work with the decoder: its order is then Geneformer's rank order."""
    adata = bf.datasets.synthetic(n_obs=96, n_vars=30, seed=2)
    model = bf.tl.pretrain(
        adata,
        architecture="decoder",
        binning="rank",
        n_layers=1,
        n_hidden=16,
        max_seq_len=24,
        max_epochs=1,
        batch_size=32,
        enable_progress_bar=False,
    )
    assert adata.uns["bioformers_binned"]["params"]["method"] == "rank"
    cells = bf.tl.generate(model, n_per_condition=8, seed=0)
    bins = cells.layers["bioformers_binned"]
    assert bins.shape == (8, 30) and bins.data.max() < model.module.n_bins
    assert (bins.getnnz(axis=1) >= 1).all() or bins.nnz > 0
    np.testing.assert_array_equal(cells.X.toarray(), bins.toarray())  # no bin centres for rank tokens
