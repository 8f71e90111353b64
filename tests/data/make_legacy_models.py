"""Write the committed fixture models of tests/test_legacy_models.py (run once, with bioformers 0.x before the
model-layer split): a tiny encoder, a decoder, a perturbation model and a CellDiffusion, each saved with its
training AnnData, plus the outputs they gave when saved (``expected.npz``).

Kept so that the test proves that directories saved by that release still load and give the same numbers;
re-running it with a later release would only test that release against itself.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import scvi

import bioformers as bf

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "legacy_models")
TINY = {"n_hidden": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 24, "max_epochs": 1, "batch_size": 32}
TRAIN = {"enable_progress_bar": False, "accelerator": "cpu"}


def main() -> None:
    shutil.rmtree(HERE, ignore_errors=True)
    os.makedirs(HERE)
    expected = {}
    adata = bf.datasets.synthetic(n_obs=96, n_vars=30, seed=3)

    encoder_data = adata.copy()
    encoder = bf.tl.pretrain(encoder_data, batch_key="batch", **TINY, **TRAIN)
    encoder.save(os.path.join(HERE, "encoder"), save_anndata=True)
    expected["encoder_embedding"] = encoder.get_latent_representation()
    expected["encoder_predicted"] = encoder.get_predicted_bins()[0]
    expected["encoder_attention"] = encoder.get_attention()

    decoder_data = adata.copy()
    decoder = bf.tl.pretrain(decoder_data, architecture="decoder", labels_key="cell_type", **TINY, **TRAIN)
    decoder.save(os.path.join(HERE, "decoder"), save_anndata=True)
    expected["decoder_embedding"] = decoder.get_latent_representation()
    expected["decoder_generated"] = decoder.generate(4, labels=["type_0", "type_1", None, None], seed=1).toarray()

    screen = bf.datasets.synthetic_perturbation(n_obs=120, n_vars=30, seed=4)
    scvi.settings.seed = 0
    perturbation = bf.tl.train_perturbation(
        screen,
        perturbation_key="perturbation",
        n_hidden=16,
        n_layers=1,
        n_heads=2,
        max_epochs=1,
        batch_size=32,
        **TRAIN,
    )
    perturbation.save(os.path.join(HERE, "perturbation"), save_anndata=True)
    expected["perturbation_embedding"] = perturbation.get_latent_representation()
    bins = perturbation.adata_manager.get_from_registry("X")[:8]
    targets = perturbation.target_indices(perturbation.registered_targets()[:1] * 8)
    expected["perturbation_response"] = perturbation.get_perturbation_response(bins, targets)

    diffusion_data = adata.copy()
    scvi.settings.seed = 0
    bf.CellDiffusion.setup_anndata(diffusion_data, categorical_covariate_keys=["cell_type"])
    diffusion = bf.CellDiffusion(diffusion_data, n_tokens=4, token_dim=8, n_hidden=16, n_layers=1, n_encoder_hidden=32)
    diffusion.train(max_epochs=1, autoencoder_epochs=1, batch_size=32, **TRAIN)
    diffusion.save(os.path.join(HERE, "diffusion"), save_anndata=True)
    expected["diffusion_latent"] = diffusion.get_latent_representation()
    table = diffusion.check_conditions({"cell_type": ["type_0", "type_0", "type_1"]})
    expected["diffusion_generated"] = diffusion.generate(table, n_steps=5, seed=2).toarray()

    np.savez_compressed(os.path.join(HERE, "expected.npz"), **expected)
    print(f"written with bioformers {bf.__version__} into {HERE}", file=sys.stderr)


if __name__ == "__main__":
    main()
