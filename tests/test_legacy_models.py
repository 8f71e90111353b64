"""Model directories saved by bioformers 0.1.0, before the model layer was split by network, still load
and give the numbers they gave when saved (``tests/data/make_legacy_models.py`` wrote them)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import bioformers as bf

HERE = os.path.join(os.path.dirname(__file__), "data", "legacy_models")


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(HERE, "expected.npz")) as saved:
        return dict(saved)


def test_encoder_loads_and_embeds_identically(expected):
    model = bf.BioFormer.load(os.path.join(HERE, "encoder"))
    assert type(model) is bf.BioFormer
    np.testing.assert_array_equal(model.get_latent_representation(), expected["encoder_embedding"])
    np.testing.assert_array_equal(model.get_predicted_bins()[0], expected["encoder_predicted"])
    np.testing.assert_array_equal(model.get_attention(), expected["encoder_attention"])


def test_decoder_loads_as_the_decoder_class(expected):
    model = bf.BioFormer.load(os.path.join(HERE, "decoder"))
    assert model.architecture == "decoder"
    assert not isinstance(model, bf.BioFormer), "the decoder is its own model class"
    np.testing.assert_array_equal(model.get_latent_representation(), expected["decoder_embedding"])
    generated = model.generate(4, labels=["type_0", "type_1", None, None], seed=1).toarray()
    np.testing.assert_array_equal(generated, expected["decoder_generated"])


def test_perturbation_model_predicts_identically(expected):
    model = bf.BioFormer.load(os.path.join(HERE, "perturbation"))
    np.testing.assert_array_equal(model.get_latent_representation(), expected["perturbation_embedding"])
    bins = model.adata_manager.get_from_registry("X")[:8]
    targets = model.target_indices(model.registered_targets()[:1] * 8)
    np.testing.assert_array_equal(model.get_perturbation_response(bins, targets), expected["perturbation_response"])


def test_diffusion_loads_and_generates_identically(expected):
    model = bf.CellDiffusion.load(os.path.join(HERE, "diffusion"))
    np.testing.assert_array_equal(model.get_latent_representation(), expected["diffusion_latent"])
    table = model.check_conditions({"cell_type": ["type_0", "type_0", "type_1"]})
    np.testing.assert_array_equal(model.generate(table, n_steps=5, seed=2).toarray(), expected["diffusion_generated"])
