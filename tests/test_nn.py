import pytest
import torch

from bioformers.nn import SelfAttention, TransformerEncoder, ValueEncoder, _attention

BATCH, LENGTH, HIDDEN, HEADS = 3, 7, 16, 2
# True at padded positions: right padding of different lengths, one cell without padding
PADDING = torch.tensor([[False] * 7, [False] * 5 + [True] * 2, [False] * 3 + [True] * 4])


@pytest.fixture
def attention():
    torch.manual_seed(0)
    return SelfAttention(HIDDEN, HEADS).eval()


@pytest.fixture
def x():
    return torch.randn(BATCH, LENGTH, HIDDEN, generator=torch.Generator().manual_seed(1))


@pytest.fixture(params=["sdpa", "explicit", "explicit in slices"])
def fast_path(request, monkeypatch):
    """Force one of the paths taken without ``need_weights`` (all would be "explicit" at this length)."""
    if request.param == "sdpa":
        monkeypatch.setattr(SelfAttention, "EXPLICIT_MAX_LENGTH", 0)
    if request.param == "explicit in slices":
        monkeypatch.setattr(_attention, "_SCORE_BUDGET", 1)  # one cell per slice
    return request.param


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("padded", [False, True], ids=["no padding", "padding"])
def test_fast_paths_equal_weight_path(attention, x, padded, causal, fast_path):
    padding_mask = PADDING if padded else None
    fast, no_weights = attention(x, padding_mask, causal=causal)
    explicit, weights = attention(x, padding_mask, causal=causal, need_weights=True)
    assert no_weights is None
    assert weights.shape == (BATCH, HEADS, LENGTH, LENGTH)
    torch.testing.assert_close(fast, explicit, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_fast_paths_have_the_weight_paths_gradients(attention, x, causal, fast_path):
    def grads(need_weights):
        attention.zero_grad()
        inputs = x.clone().requires_grad_()
        out, _ = attention(inputs, PADDING, causal=causal, need_weights=need_weights)
        out.square().sum().backward()
        return inputs.grad, attention.qkv.weight.grad.clone()

    for fast, reference in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("padded", [False, True], ids=["no padding", "padding"])
def test_attention_weights_are_distributions_over_allowed_keys(attention, x, padded, causal):
    padding_mask = PADDING if padded else None
    _, weights = attention(x, padding_mask, causal=causal, need_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(BATCH, HEADS, LENGTH))
    assert (weights >= 0).all()
    padded_keys = (PADDING if padded else torch.zeros_like(PADDING))[:, None, None, :].expand_as(weights)
    assert (weights[padded_keys] == 0).all()
    upper = torch.ones(LENGTH, LENGTH, dtype=torch.bool).triu(1).expand_as(weights)
    if causal:
        assert (weights[upper] == 0).all()
    # every other key gets some attention
    assert (weights[~padded_keys & ~(upper & causal)] > 0).all()


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("need_weights", [False, True], ids=["fast", "explicit"])
def test_padded_inputs_do_not_change_real_outputs(attention, x, need_weights, causal, fast_path):
    changed = x.clone()
    changed[PADDING] = torch.randn(int(PADDING.sum()), HIDDEN) * 10
    out, _ = attention(x, PADDING, causal=causal, need_weights=need_weights)
    out_changed, _ = attention(changed, PADDING, causal=causal, need_weights=need_weights)
    real = ~PADDING
    torch.testing.assert_close(out_changed[real], out[real], rtol=1e-5, atol=1e-6)
    if not causal:  # without the mask the same change does reach the real positions
        leaky, _ = attention(changed, need_weights=need_weights)
        rows_with_padding = PADDING.any(1)[:, None] & real
        assert not torch.allclose(leaky[rows_with_padding], out[rows_with_padding], atol=1e-4)


@pytest.mark.parametrize("need_weights", [False, True], ids=["fast", "explicit"])
def test_causal_positions_ignore_later_positions(attention, x, need_weights, fast_path):
    changed = x.clone()
    changed[:, 4:] = torch.randn(BATCH, LENGTH - 4, HIDDEN)
    out, _ = attention(x, causal=True, need_weights=need_weights)
    out_changed, _ = attention(changed, causal=True, need_weights=need_weights)
    torch.testing.assert_close(out_changed[:, :4], out[:, :4], rtol=1e-5, atol=1e-6)


def test_heads_must_divide_hidden():
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention(15, 2)


@pytest.mark.parametrize("kind", ["linear", "embedding"])
def test_value_encoder_masks_every_bin_to_the_same_vector(kind):
    torch.manual_seed(0)
    n_bins = 10
    encoder = ValueEncoder(n_bins, HIDDEN, kind)
    torch.nn.init.normal_(encoder.mask_value)
    bins = torch.arange(n_bins).repeat(2, 1)
    masked = torch.zeros_like(bins, dtype=torch.bool)
    masked[0] = True
    out = encoder(bins, masked)
    assert out.shape == (2, n_bins, HIDDEN)
    torch.testing.assert_close(out[0], out[0, :1].expand(n_bins, -1), rtol=0, atol=0)
    # unmasked positions carry their bin, and differ from the MASK vector
    assert torch.cdist(out[1], out[1]).fill_diagonal_(1).min() > 1e-3
    assert (torch.linalg.vector_norm(out[1] - out[0, 0], dim=-1) > 1e-3).all()
    torch.testing.assert_close(encoder(bins), out[[1, 1]])


def test_value_encoder_rejects_unknown_kind():
    with pytest.raises(ValueError, match="linear"):
        ValueEncoder(10, HIDDEN, "fourier")


@pytest.mark.parametrize("padded", [False, True], ids=["no padding", "padding"])
def test_encoder_returns_attention_of_the_asked_layer(x, padded):
    torch.manual_seed(0)
    encoder = TransformerEncoder(HIDDEN, n_layers=2, n_heads=HEADS, dropout=0.0).eval()
    padding_mask = PADDING if padded else None
    hidden, none = encoder(x, padding_mask)
    assert none is None
    assert hidden.shape == (BATCH, LENGTH, HIDDEN)
    hidden_0, weights_0 = encoder(x, padding_mask, attention_layer=0)
    hidden_1, weights_1 = encoder(x, padding_mask, attention_layer=1)
    _, weights_last = encoder(x, padding_mask, attention_layer=-1)
    assert weights_0.shape == weights_1.shape == (BATCH, HEADS, LENGTH, LENGTH)
    torch.testing.assert_close(weights_0.sum(-1), torch.ones(BATCH, HEADS, LENGTH))
    torch.testing.assert_close(weights_last, weights_1)
    assert not torch.allclose(weights_0, weights_1)
    torch.testing.assert_close(hidden_0, hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden_1, hidden, rtol=1e-5, atol=1e-5)
