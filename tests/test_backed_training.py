"""``bf.tl.pretrain`` of a backed AnnData: cells read from disk in shuffled chunks, binned on the fly."""

import anndata as ad
import numpy as np
import pytest
import scvi
from scipy import sparse

import bioformers as bf
from bioformers.data import StreamedCells, StreamingDataModule, epoch_order, shard

SIZES = {"n_hidden": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 24}
TRAIN = {"batch_size": 32, "enable_progress_bar": False, "accelerator": "cpu", "seed": 0}


@pytest.fixture
def path(tmp_path):
    adata = bf.datasets.synthetic(n_obs=300, n_vars=40)
    adata.var["gene_ids"] = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    adata.write_h5ad(tmp_path / "cells.h5ad")
    return tmp_path / "cells.h5ad"


# --- the order of an epoch -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_obs", "chunk_size", "buffer_chunks"), [(1024, 64, 4), (100, 10, 1), (97, 10, 2), (5, 8, 8)]
)
def test_an_epoch_reads_every_cell_once_in_chunks(n_obs, chunk_size, buffer_chunks):
    order = epoch_order(n_obs, chunk_size=chunk_size, buffer_chunks=buffer_chunks, seed=3)
    assert sorted(order.tolist()) == list(range(n_obs))
    # each buffer holds whole chunks: its cells come from buffer_chunks contiguous ranges
    buffer = chunk_size * buffer_chunks
    for start in range(0, n_obs if n_obs % chunk_size == 0 else 0, buffer):  # (a short chunk shifts the rest)
        chunks = np.unique(order[start : start + buffer] // chunk_size)
        assert chunks.size <= buffer_chunks
    assert not np.array_equal(order, epoch_order(n_obs, chunk_size=chunk_size, buffer_chunks=buffer_chunks, seed=4))


@pytest.mark.parametrize(("n_obs", "world_size"), [(300, 2), (301, 2), (10, 3), (7, 8)])
def test_shards_cover_every_cell_with_equal_sizes(n_obs, world_size):
    order = epoch_order(n_obs, chunk_size=16, buffer_chunks=2, seed=0)
    shares = [shard(order, rank=rank, world_size=world_size) for rank in range(world_size)]
    size = -(-n_obs // world_size)
    assert all(share.size == size for share in shares)
    seen = np.concatenate(shares)
    assert set(seen.tolist()) == set(range(n_obs))
    # only the padding repeats cells: size * world_size - n_obs of them
    assert seen.size - np.unique(seen).size == size * world_size - n_obs


# --- what it reads --------------------------------------------------------------------------------
def test_streamed_minibatches_hold_the_bins_of_binning_in_memory(path):
    memory = ad.read_h5ad(path)
    bf.pp.bin(memory)
    record = memory.uns["bioformers_binned"]["params"]
    cells = StreamedCells(ad.read_h5ad(path, backed="r"), binning=record, batch_size=32, chunk_size=50, seed=1)
    batches = list(cells)
    assert len(batches) == len(cells) == -(-300 // 32)
    ids = np.concatenate([b[scvi.REGISTRY_KEYS.INDICES_KEY].numpy().ravel() for b in batches])
    assert sorted(ids.tolist()) == list(range(300)) and not np.array_equal(ids, np.arange(300))
    bins = np.concatenate([b["X"].numpy() for b in batches])
    counts = np.concatenate([b["counts"].numpy() for b in batches])
    np.testing.assert_array_equal(bins, memory.layers["bioformers_binned"][ids].toarray())
    np.testing.assert_array_equal(counts, memory.X[ids].toarray())


def test_backed_file_and_memory_train_alike_through_the_same_loader(path):
    """Reading from disk changes nothing: the same cells in the same order give the same losses, bit for bit."""
    losses = []
    for backed in ("r", None):
        adata = ad.read_h5ad(path, backed=backed)
        memory = ad.read_h5ad(path)
        bf.pp.bin(memory)
        bf.BioFormer.setup_anndata(memory, counts=True)
        registry = bf.BioFormer._get_most_recent_anndata_manager(memory, required=True).registry
        scvi.settings.seed = 0
        model = bf.BioFormer(registry=registry, n_bins=int(memory.layers["bioformers_binned"].max()) + 1, **SIZES)
        model.binning_ = memory.uns["bioformers_binned"]["params"]
        cells = StreamedCells(adata, binning=model.binning_, batch_size=32, chunk_size=64, seed=0)
        train = {k: v for k, v in TRAIN.items() if k != "seed"}
        model.train(max_epochs=2, datamodule=StreamingDataModule(cells), **train)
        losses.append(model.loss_history()["train_loss"])
    assert losses[0] == losses[1]


def test_pretrain_from_disk_matches_pretrain_in_memory(path):
    backed = ad.read_h5ad(path, backed="r")
    streamed = bf.tl.pretrain(backed, **SIZES, max_epochs=2, chunk_size=64, **TRAIN)
    memory = ad.read_h5ad(path)
    in_memory = bf.tl.pretrain(memory, **SIZES, max_epochs=2, train_size=1.0, **TRAIN)
    # the same binning scale and vocabulary, found in one pass over the file
    assert streamed.binning_["target_sum"] == pytest.approx(memory.uns["bioformers_binned"]["params"]["target_sum"])
    assert streamed.module.n_bins == in_memory.module.n_bins
    # the same model trained on the same cells, in another order: close losses
    np.testing.assert_allclose(streamed.loss_history()["train_loss"], in_memory.loss_history()["train_loss"], rtol=0.02)
    # results written into the backed AnnData (in memory until adata.write()); the file is not touched
    assert backed.obsm["X_bioformers"].shape == (300, SIZES["n_hidden"])
    assert backed.uns["bioformers"]["params"]["chunk_size"] == 64
    assert "bioformers_binned" not in backed.layers
    assert "X_bioformers" not in ad.read_h5ad(path).obsm
    # the model holds no data; saved and loaded alone it embeds like the one that wrote the embedding
    assert streamed.adata is None
    assert streamed.gene_table_["gene_ids"].iloc[0] == "ENSG00000000000"


def test_pretrain_from_disk_with_batches_knows_every_batch(path):
    backed = ad.read_h5ad(path, backed="r")
    model = bf.tl.pretrain(backed, batch_key="batch", **SIZES, max_epochs=1, **TRAIN)
    assert model.condition_categories("batch") == sorted(backed.obs["batch"].unique())
    assert model.module.n_batch == 2


# --- bad input, refused before training -----------------------------------------------------------
def _write(tmp_path, change):
    adata = bf.datasets.synthetic(n_obs=100, n_vars=20)
    change(adata)
    adata.write_h5ad(tmp_path / "bad.h5ad")
    return ad.read_h5ad(tmp_path / "bad.h5ad", backed="r")


BAD = [
    pytest.param(lambda a: setattr(a, "X", sparse.csc_matrix(a.X)), {}, "stored on disk as CSC", id="csc"),
    pytest.param(lambda a: setattr(a, "X", a.X * 0.5), {}, "non-integer values", id="not counts"),
    pytest.param(lambda a: a.X.data.__setitem__(slice(0, 3), -1), {}, "negative values", id="negative"),
    pytest.param(lambda a: a.X.__setitem__((5, slice(None)), 0), {}, r"1 cell\(s\) with no counts", id="empty cell"),
    pytest.param(lambda a: None, {"binning": "rank"}, "rank tokens need every gene's median", id="rank"),
    pytest.param(lambda a: None, {"layer": "counts"}, "keeps only `X` on disk", id="layer"),
    pytest.param(lambda a: None, {"train_size": 0.9}, r"\['train_size'\] cannot apply", id="validation split"),
    pytest.param(lambda a: None, {"chunk_size": 0}, "`chunk_size` is a positive number", id="chunk size"),
]


@pytest.mark.parametrize(("change", "kwargs", "match"), BAD)
def test_bad_backed_input_is_refused_before_training(tmp_path, change, kwargs, match):
    backed = _write(tmp_path, change)
    before = (sorted(backed.obsm), sorted(backed.uns), sorted(backed.layers))
    with pytest.raises(ValueError, match=match):
        bf.tl.pretrain(backed, **SIZES, max_epochs=1, **(TRAIN | kwargs))
    assert (sorted(backed.obsm), sorted(backed.uns), sorted(backed.layers)) == before


# --- several files with different genes -----------------------------------------------------------
@pytest.fixture
def two_files(tmp_path):
    """Two files sharing 20 of their 30 genes (40 in all), the second with its own batches and gene IDs."""
    first = bf.datasets.synthetic(n_obs=200, n_vars=40, seed=1)[:, :30].copy()
    second = bf.datasets.synthetic(n_obs=150, n_vars=40, seed=2)[:, 10:].copy()
    second.obs["batch"] = second.obs["batch"].astype(str).str.replace("batch", "run")
    second.var["gene_ids"] = [f"ENSG{i:011d}" for i in range(10, 40)]
    paths = []
    for name, adata in (("first", first), ("second", second)):
        adata.write_h5ad(tmp_path / f"{name}.h5ad")
        paths.append(tmp_path / f"{name}.h5ad")
    return paths


def test_an_epoch_of_several_files_reads_every_cell_once_in_chunks_of_one_file():
    order = epoch_order([70, 45], chunk_size=20, buffer_chunks=1, seed=0)
    assert sorted(order.tolist()) == list(range(115))
    # chunks: 0-19, 20-39, 40-59, 60-69 of the first file, 70-89, 90-109, 110-114 of the second
    chunk = np.where(order < 70, order // 20, 10 + (order - 70) // 20)
    assert (np.diff(chunk) != 0).sum() == 7 - 1, "each chunk read in one piece, none spanning two files"


def test_files_with_different_genes_train_together(two_files):
    first, second = (ad.read_h5ad(path, backed="r") for path in two_files)
    with pytest.warns(UserWarning, match=r"30 of the model's 40 genes"):
        model = bf.tl.pretrain([first, second], batch_key="batch", **SIZES, max_epochs=1, chunk_size=32, **TRAIN)
    # the union of their genes, in order of first appearance; every batch of both files
    np.testing.assert_array_equal(model.genes_, [f"gene_{i}" for i in range(40)])
    assert model.condition_categories("batch") == ["batch_0", "batch_1", "run_0", "run_1"]
    # each file got its own embedding and record
    for adata, n_obs in ((first, 200), (second, 150)):
        assert adata.obsm["X_bioformers"].shape == (n_obs, SIZES["n_hidden"])
        assert adata.uns["bioformers"]["params"]["n_anndata"] == 2
    # gene IDs known from the second file only, kept for its genes
    assert model.gene_table_.loc["gene_39", "gene_ids"] == "ENSG00000000039"
    assert model.gene_table_["gene_ids"].isna().sum() == 10
    # the embedding written is the model's embedding of each file's cells, its genes matched by name
    query = ad.read_h5ad(two_files[1])
    bf.tl.embed(query, model)
    np.testing.assert_array_equal(query.obsm["X_bioformers"], second.obsm["X_bioformers"])


def test_chosen_genes_and_too_little_overlap(two_files, tmp_path):
    first, second = (ad.read_h5ad(path, backed="r") for path in two_files)
    chosen = [f"gene_{i}" for i in range(10, 30)]  # in both files
    model = bf.tl.pretrain([first, second], genes=chosen, **SIZES, max_epochs=1, **TRAIN)
    np.testing.assert_array_equal(model.genes_, chosen)
    # a single backed file can be trained on a chosen subset of its genes too
    model = bf.tl.pretrain(first, genes=chosen[:15], **SIZES, max_epochs=1, **TRAIN)
    assert model.genes_.size == 15
    # a file that holds too few of the chosen genes is refused before training, nothing written
    fresh = [ad.read_h5ad(path, backed="r") for path in two_files]
    with pytest.raises(ValueError, match=r"Only 30 of the model's 40 genes \(75\.0%\).*min_gene_coverage=0\.8"):
        bf.tl.pretrain(fresh, min_gene_coverage=0.8, **SIZES, **TRAIN)
    with pytest.raises(ValueError, match=r"Only 0 of the model's 10 genes"):
        bf.tl.pretrain(fresh, genes=[f"gene_{i}" for i in range(10)], **SIZES, **TRAIN)
    assert all("X_bioformers" not in adata.obsm for adata in fresh)


def test_bad_lists_are_refused(two_files, counts):
    first = ad.read_h5ad(two_files[0], backed="r")
    with pytest.raises(TypeError, match=r"non-empty list of AnnData"):
        bf.tl.pretrain([], **SIZES, **TRAIN)
    with pytest.raises(TypeError, match=r"non-empty list of AnnData"):
        bf.tl.pretrain([first, "second.h5ad"], **SIZES, **TRAIN)
    with pytest.raises(ValueError, match=r"several AnnData get their results in place"):
        bf.tl.pretrain([first], copy=True, **SIZES, **TRAIN)
    with pytest.raises(ValueError, match=r"subset it: `adata\[:, genes\]\.copy\(\)`"):
        bf.tl.pretrain(counts, genes=["gene_1"], **SIZES, **TRAIN)


# --- checkpoints in the middle of an epoch --------------------------------------------------------
def test_resuming_mid_epoch_from_disk_continues_exactly(path, tmp_path):
    """A run resumed from a checkpoint written mid-epoch ends bit-identical to the run never interrupted."""
    run = {**SIZES, "max_epochs": 2, "chunk_size": 64, **TRAIN}  # 300 cells: 10 steps of 32 per epoch
    full = ad.read_h5ad(path, backed="r")
    bf.tl.pretrain(full, save_checkpoints=tmp_path / "ckpt", checkpoint_every_steps=4, **run)
    written = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert written == [
        "epoch_0001",
        "epoch_0002",
        "step_000000004",
        "step_000000008",
        "step_000000012",
        "step_000000016",
        "step_000000020",
    ]
    resumed = ad.read_h5ad(path, backed="r")
    model = bf.tl.pretrain(resumed, resume_from=tmp_path / "ckpt" / "step_000000012", **run)  # epoch 2, step 2 of 10
    np.testing.assert_array_equal(resumed.obsm["X_bioformers"], full.obsm["X_bioformers"])
    # the history of finished epochs comes from the checkpoint; the resumed epoch's mean loss averages
    # the steps after resuming only (Lightning keeps no running sums in checkpoints), so it is close, not equal
    history, uninterrupted = model.loss_history()["train_loss"], full.uns["bioformers"]["history"]["train_loss"]
    assert history[0] == uninterrupted[0]
    assert history[1] == pytest.approx(uninterrupted[1], rel=0.01)
    # the latest checkpoint of a directory is the one with the most steps (the epoch's, at a tie)
    from bioformers.train._checkpoint import find_checkpoint

    assert find_checkpoint(tmp_path / "ckpt").endswith("epoch_0002")


def test_step_checkpoints_need_data_from_disk(counts, tmp_path):
    with pytest.raises(ValueError, match=r"`checkpoint_every_steps` writes checkpoints in the middle of epochs"):
        bf.tl.pretrain(counts, save_checkpoints=tmp_path, checkpoint_every_steps=5, **SIZES, **TRAIN)
