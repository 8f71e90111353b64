"""Safe model files: ``BioFormer.save`` / ``BioFormer.load`` never unpickle, check versions, genes and shapes."""

import json
import pickle
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

import bioformers as bf


@pytest.fixture
def model_dir(saved, tmp_path):
    """A fresh copy of the saved model directory, to change."""
    return shutil.copytree(saved, tmp_path / "model")


@pytest.fixture(scope="module")
def latent(trained):
    model, _ = trained
    return model.get_latent_representation()


def _load(path, adata, **kwargs):
    return bf.BioFormer.load(str(path), adata=adata.copy(), **kwargs)


def _edit_json(path, change):
    with open(path / "model.json") as f:
        attributes = json.load(f)
    change(attributes)
    with open(path / "model.json", "w") as f:
        json.dump(attributes, f)


class _Marker:
    """Unpickling this creates the file ``path``: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# --- what is stored --------------------------------------------------------------------------------
def test_model_json_records_version_genes_and_bins(trained, saved):
    model, _ = trained
    with open(saved / "model.json") as f:
        attributes = json.load(f)
    assert attributes["version"] == bf.__version__
    assert attributes["genes"]["__ndarray__"] == model.genes_.tolist()
    assert attributes["n_bins"] == model.module.n_bins
    assert not any(name.endswith(".partial") for name in map(str, saved.iterdir()))


# --- never unpickle --------------------------------------------------------------------------------
def test_planted_pickles_next_to_a_valid_model_are_never_executed(trained, latent, model_dir, tmp_path):
    _, adata = trained
    marker = tmp_path / "executed"
    bomb = pickle.dumps(_Marker(marker))
    # the bomb works: unpickling it elsewhere creates its file
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Marker(probe)))
    assert probe.exists()
    (model_dir / "attr.pkl").write_bytes(bomb)  # scvi-tools' attribute file name
    torch.save({"model_state_dict": _Marker(marker)}, model_dir / "model.pt")  # scvi-tools' torch pickle
    (model_dir / "model.pkl").write_bytes(bomb)
    loaded = _load(model_dir, adata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent)
    assert not marker.exists()


def test_directory_with_only_a_pickle_is_refused_unopened(trained, tmp_path):
    _, adata = trained
    marker = tmp_path / "executed"
    scvi_dir = tmp_path / "scvi_model"
    scvi_dir.mkdir()
    torch.save({"model_state_dict": _Marker(marker)}, scvi_dir / "model.pt")
    with pytest.raises(FileNotFoundError, match=r"not a bioformers model directory.*\['model\.pt'\].*never unpickles"):
        _load(scvi_dir, adata)
    assert not marker.exists()


def test_missing_directory_raises(trained, tmp_path):
    _, adata = trained
    with pytest.raises(FileNotFoundError, match=r"is not a directory\. Pass the directory `BioFormer\.save` wrote"):
        _load(tmp_path / "nowhere", adata)


# --- damaged files -----------------------------------------------------------------------------------
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("name", "damage", "match"),
    [
        pytest.param(
            "model.safetensors", _truncate, r"model\.safetensors is damaged \(truncated", id="truncated weights"
        ),
        pytest.param(
            "model.safetensors", lambda p: p.write_bytes(b"\x00" * 64), r"safetensors is damaged", id="garbage weights"
        ),
        pytest.param("model.json", _truncate, r"model\.json is damaged \(truncated", id="truncated json"),
        pytest.param(
            "model.json", lambda p: p.write_bytes(b"\xff\xfe\x00"), r"model\.json is damaged", id="binary json"
        ),
        pytest.param(
            "model.json", lambda p: p.write_text("[1, 2]"), r"model\.json lacks \['init_params'", id="json list"
        ),
    ],
)
def test_damaged_files_raise_clearly(trained, model_dir, name, damage, match):
    _, adata = trained
    damage(model_dir / name)
    with pytest.raises(ValueError, match=match):
        _load(model_dir, adata)


def test_json_without_genes_raises(trained, model_dir):
    _, adata = trained
    _edit_json(model_dir, lambda attributes: attributes.pop("genes"))
    with pytest.raises(ValueError, match=r"model\.json lacks \['genes'\]: it was not written by `BioFormer\.save`"):
        _load(model_dir, adata)


def test_weights_changed_after_saving_fail_the_checksum(trained, model_dir):
    """A valid safetensors file that is not the one saved (edited, or from another model) is refused."""
    _, adata = trained
    weights = load_file(model_dir / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1
    save_file(weights, model_dir / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors is not the file that was saved with model\.json"):
        _load(model_dir, adata)
    with pytest.raises(ValueError, match=r"SHA-256 checksum differs"):
        bf.BioFormer.load(str(model_dir))


# --- strict shapes -------------------------------------------------------------------------------------
def test_weights_that_do_not_fit_name_every_mismatch(trained, model_dir):
    _, adata = trained
    weights = load_file(model_dir / "model.safetensors")
    gene_rows = weights["gene_embedding.weight"]
    weights["gene_embedding.weight"] = gene_rows[:-1].clone()
    dropped = sorted(k for k in weights if k != "gene_embedding.weight")[-1]
    del weights[dropped]
    weights["extra_head.weight"] = torch.zeros(2, 2)
    save_file(weights, model_dir / "model.safetensors")
    _edit_json(model_dir, lambda attributes: attributes.pop("checksums"))  # as saved before checksums
    with pytest.raises(ValueError) as error:
        _load(model_dir, adata)
    message = str(error.value)
    assert f"missing parameters ['{dropped}']" in message
    assert "unexpected parameters ['extra_head.weight']" in message
    rows, width = gene_rows.shape
    assert f"gene_embedding.weight: expected ({rows}, {width}), found ({rows - 1}, {width})" in message
    assert "do not fit the model that model.json describes" in message


# --- versions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "match"),
    [
        pytest.param("9.3.0", rf"saved by bioformers 9\.3\.0; this is bioformers {bf.__version__}", id="other minor"),
        pytest.param(None, r"does not record the bioformers version", id="no version"),
    ],
)
def test_other_version_warns_naming_both(trained, latent, model_dir, version, match):
    _, adata = trained

    def set_version(attributes):
        attributes.pop("version")
        if version is not None:
            attributes["version"] = version

    _edit_json(model_dir, set_version)
    with pytest.warns(UserWarning, match=match):
        loaded = _load(model_dir, adata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent)


def test_same_minor_version_loads_silently(trained, model_dir):
    _, adata = trained
    major, minor = bf.__version__.split(".")[:2]
    _edit_json(model_dir, lambda attributes: attributes.update(version=f"{major}.{minor}.99"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _load(model_dir, adata)


# --- genes of the AnnData given to load --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("genes", "match"),
    [
        pytest.param(lambda a: a[:, ::-1], r"another order \(at position 0: 'gene_39', model: 'gene_0'\)", id="order"),
        pytest.param(lambda a: a[:, 1:], r"lacks 1 of them \(e\.g\. \['gene_0'\]\)", id="missing"),
    ],
)
def test_load_needs_the_training_genes_in_order(trained, saved, genes, match):
    _, adata = trained
    with pytest.raises(ValueError, match=r"registers `adata` as the model's training data.*" + match):
        _load(saved, genes(adata).copy())


def test_load_without_anndata_reads_the_saved_one(trained, latent, tmp_path):
    model, _ = trained
    model.save(str(tmp_path / "with_data"), save_anndata=True)
    loaded = bf.BioFormer.load(str(tmp_path / "with_data"))
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent)


def test_load_without_any_anndata_is_self_contained(trained, latent, saved):
    """Genes, binning and registry come from the directory: the loaded model embeds any query alone."""
    model, adata = trained
    loaded = bf.BioFormer.load(str(saved))
    assert loaded.adata is None
    np.testing.assert_array_equal(loaded.genes_, model.genes_)
    assert loaded.binning_ == model.binning_
    # the query's genes in another order and without the binned layer: matched by name, binned alike
    query = adata[:, ::-1].copy()
    del query.layers["bioformers_binned"]
    bf.tl.embed(query, loaded)
    np.testing.assert_allclose(query.obsm["X_bioformers"], latent, atol=1e-6)
    assert loaded.adata is None  # the query was not adopted as the model's data


def test_model_loaded_without_data_says_what_it_cannot_do(saved, tmp_path):
    loaded = bf.BioFormer.load(str(saved))
    for call in (
        loaded.get_latent_representation,
        lambda: loaded.train(max_epochs=1),
        lambda: loaded.save(str(tmp_path / "again"), save_anndata=True),
    ):
        with pytest.raises(ValueError, match=r"loaded without its training data.*bf\.tl\.embed\(adata, model\)"):
            call()
    assert not (tmp_path / "again").exists()


def test_gene_annotations_travel_with_the_model(counts, pretrain_kwargs, tmp_path):
    """Text columns of the training genes' ``var`` (e.g. Ensembl IDs) are saved and loaded with the model."""
    counts.var["gene_ids"] = [f"ENSG{i:011d}" for i in range(counts.n_vars)]
    counts.var["highly_variable"] = True  # not text: not kept
    model = bf.tl.pretrain(counts, **pretrain_kwargs | {"max_epochs": 1})
    assert model.gene_table_.columns.tolist() == ["gene_ids"]
    model.save(str(tmp_path / "model"))
    loaded = bf.BioFormer.load(str(tmp_path / "model"))
    pd.testing.assert_frame_equal(loaded.gene_table_, model.gene_table_)
    assert loaded.gene_table_.loc["gene_3", "gene_ids"] == "ENSG00000000003"


def test_load_without_data_of_a_class_that_needs_it_raises(tmp_path):
    adata = bf.datasets.synthetic(n_obs=60, n_vars=12)
    bf.CellDiffusion.setup_anndata(adata)
    model = bf.CellDiffusion(adata)
    model.save(str(tmp_path / "diffusion"))
    with pytest.raises(FileNotFoundError, match=r"No `adata` given.*needs its training data.*save_anndata=True"):
        bf.CellDiffusion.load(str(tmp_path / "diffusion"))


def test_load_with_a_subset_of_cells_keeps_the_bin_vocabulary(trained, latent, saved):
    """The bin vocabulary comes from the file, not from the largest bin of the AnnData given."""
    model, adata = trained
    few = adata[:3].copy()
    assert few.layers["bioformers_binned"].max() + 1 < model.module.n_bins
    loaded = _load(saved, few)
    assert loaded.module.n_bins == model.module.n_bins
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent[:3])


# --- interrupted save ----------------------------------------------------------------------------------------
def test_failed_save_leaves_the_previous_model_intact(trained, latent, model_dir, monkeypatch):
    model, adata = trained
    before = {name: (model_dir / name).read_bytes() for name in ("model.json", "model.safetensors")}

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", fail)
    with pytest.raises(KeyboardInterrupt):
        model.save(str(model_dir), overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.json", "model.safetensors"]
    assert {name: (model_dir / name).read_bytes() for name in before} == before
    np.testing.assert_array_equal(_load(model_dir, adata).get_latent_representation(), latent)
