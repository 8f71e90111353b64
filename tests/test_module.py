import pytest
import torch
import torch.nn.functional as F

from bioformers.module import BioFormerModule

N_GENES, N_BINS = 40, 8


@pytest.fixture
def bins():
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(1, N_BINS, (6, N_GENES), generator=generator)
    expressed = torch.rand(6, N_GENES, generator=generator) < 0.4
    return values * expressed


def _module(**kwargs):
    torch.manual_seed(0)
    return BioFormerModule(N_GENES, N_BINS, n_hidden=16, n_layers=2, n_heads=2, max_seq_len=24, **kwargs)


def _train_step(module, bins, seed=1):
    """Loss and gradients of one training step, with the step's randomness fixed by ``seed``."""
    module.train().zero_grad()
    torch.manual_seed(seed)
    inference = module.inference(bins)
    generative = module.generative(**{k: inference[k] for k in ("cls", "hidden", "mask", "bins")})
    loss = module.loss({}, inference, generative)
    loss.loss.backward()
    return inference, generative, loss, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_masked_loss_is_cross_entropy_over_each_cells_masked_genes(bins):
    module = _module()
    inference, generative, loss, _ = _train_step(module, bins)
    mask, values = inference["mask"], inference["values"]
    logits = module.bin_head(inference["hidden"])  # every position; keep the masked ones per cell
    expected = torch.stack([F.cross_entropy(logits[i][mask[i]], values[i][mask[i]]) for i in range(len(bins))])
    torch.testing.assert_close(loss.extra_metrics["mlm_loss"], expected.mean(), rtol=1e-5, atol=1e-6)
    assert generative["bin_logits"].shape == (len(bins), int(mask.sum(1)[0]), N_BINS)


def test_activation_checkpointing_gives_the_same_step(bins):
    module = _module(dropout=0.2)  # dropout must draw the same masks when the block is recomputed
    _, _, plain, plain_grads = _train_step(module, bins)
    module.encoder.activation_checkpointing = True
    calls = []
    module.encoder.blocks[0].register_forward_pre_hook(lambda *args: calls.append(1))
    _, _, checkpointed, checkpointed_grads = _train_step(module, bins)
    assert len(calls) == 2  # run once without storing activations, again in the backward pass
    torch.testing.assert_close(checkpointed.loss, plain.loss)
    assert checkpointed_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
