import pytest
import torch

from bioformers.data import cell_uniforms, mask_positions, n_masked, select_genes

N_GENES = 40


@pytest.fixture
def bins():
    """Binned cells with 2 to 38 expressed genes of 40: fewer and more than a length of 23."""
    generator = torch.Generator().manual_seed(0)
    n_cells = 64
    n_expressed = torch.linspace(2, 38, n_cells).round().long()
    ranks = torch.rand(n_cells, N_GENES, generator=generator).argsort(dim=1).argsort(dim=1)
    values = torch.randint(1, 16, (n_cells, N_GENES), generator=generator)
    return torch.where(ranks < n_expressed[:, None], values, 0)


# --- select_genes -------------------------------------------------------------------------------
@pytest.mark.parametrize("random", [False, True])
@pytest.mark.parametrize("length", [N_GENES, N_GENES + 10])
def test_select_keeps_all_genes_when_they_fit(bins, random, length):
    genes, values = select_genes(bins, length, random=random)
    assert genes.shape == values.shape == bins.shape
    assert (genes == torch.arange(N_GENES)).all()
    assert torch.equal(values, bins)


@pytest.mark.parametrize("random", [False, True])
def test_select_keeps_expressed_genes_and_samples_the_rest(bins, random):
    length = 23
    genes, values = select_genes(bins, length, random=random)
    assert genes.shape == values.shape == (bins.shape[0], length)
    assert (genes.diff(dim=1) > 0).all()  # ascending, hence unique
    assert ((genes >= 0) & (genes < N_GENES)).all()
    assert torch.equal(values, bins.gather(1, genes))
    for cell, chosen in zip(bins, genes, strict=True):
        expressed = set(cell.nonzero().flatten().tolist())
        chosen = set(chosen.tolist())
        if len(expressed) <= length:
            assert expressed <= chosen
        else:
            assert chosen <= expressed


def test_select_fixed_per_cell_whatever_the_batch(bins):
    cell = bins[10]
    batch_a = torch.stack([cell, bins[0], bins[1]])
    batch_b = torch.cat([bins[30:40], cell[None], bins[50:]])
    genes_a, values_a = select_genes(batch_a, 23, random=False)
    genes_b, values_b = select_genes(batch_b, 23, random=False)
    assert torch.equal(genes_a[0], genes_b[10])
    assert torch.equal(values_a[0], values_b[10])
    assert torch.equal(select_genes(cell[None], 23, random=False)[0][0], genes_a[0])


def test_select_random_varies_between_calls(bins):
    torch.manual_seed(0)
    first, _ = select_genes(bins, 23, random=True)
    second, _ = select_genes(bins, 23, random=True)
    assert not torch.equal(first, second)
    fixed_first, _ = select_genes(bins, 23, random=False)
    assert torch.equal(fixed_first, select_genes(bins, 23, random=False)[0])


# --- mask_positions -----------------------------------------------------------------------------
def _values(n_expressed: list[int], length: int = 20) -> torch.Tensor:
    """One cell per entry, with that many expressed positions (scattered) among ``length``."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for n in n_expressed:
        row = torch.zeros(length, dtype=torch.long)
        row[torch.randperm(length, generator=generator)[:n]] = torch.randint(1, 9, (n,), generator=generator)
        rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize("random", [False, True])
@pytest.mark.parametrize(
    ("mask_ratio", "nonzero_ratio", "expected_masked", "n_nonzero"),
    [
        (0.25, 0.6, 5, 3),  # round(0.25 * 20) = 5 masked, round(0.6 * 5) = 3 of them expressed
        (0.1, 0.5, 2, 1),
        (0.01, 0.5, 1, 0),  # at least one position (round(0.5 * 1) = 0 expressed)
        (0.01, 1.0, 1, 1),
        (0.4, 0.0, 8, 0),  # every cell has at least 8 unexpressed positions
    ],
)
def test_mask_counts_per_cell(random, mask_ratio, nonzero_ratio, expected_masked, n_nonzero):
    values = _values([10, 10, 12, 8])
    mask = mask_positions(values, mask_ratio, nonzero_ratio, random=random)
    assert mask.shape == values.shape
    assert mask.dtype == torch.bool
    assert n_masked(values.shape[1], mask_ratio) == expected_masked
    assert (mask.sum(1) == expected_masked).all()
    assert ((mask & (values > 0)).sum(1) == n_nonzero).all()


@pytest.mark.parametrize("random", [False, True])
def test_mask_falls_back_to_the_other_group(random):
    # 20 positions, 5 masked of which 3 wanted expressed
    values = _values([0, 1, 2, 17, 19, 20])
    mask = mask_positions(values, 0.25, 0.6, random=random)
    assert (mask.sum(1) == 5).all()
    masked_expressed = (mask & (values > 0)).sum(1)
    assert masked_expressed.tolist() == [0, 1, 2, 3, 4, 5]


def test_mask_fixed_per_cell_whatever_the_batch():
    values = _values([3, 8, 12, 15, 6, 10])
    mask = mask_positions(values, 0.25, 0.5, random=False)
    assert torch.equal(mask, mask_positions(values, 0.25, 0.5, random=False))
    assert torch.equal(mask_positions(values[[4, 2, 0]], 0.25, 0.5, random=False), mask[[4, 2, 0]])
    twins = mask_positions(values[[1, 1]], 0.25, 0.5, random=False)
    assert torch.equal(twins, mask[[1, 1]])


def test_mask_random_varies_between_calls():
    values = _values([8] * 16)
    torch.manual_seed(0)
    first = mask_positions(values, 0.25, 0.5, random=True)
    assert not torch.equal(first, mask_positions(values, 0.25, 0.5, random=True))


# --- cell_uniforms ------------------------------------------------------------------------------
def test_cell_uniforms_in_unit_interval(bins):
    u = cell_uniforms(bins, salt=1)
    assert u.shape == bins.shape
    assert u.dtype == torch.float32
    assert ((u >= 0) & (u < 1)).all()
    # spread out, not constant
    assert 0.4 < u.mean() < 0.6
    assert u.unique().numel() > 0.99 * u.numel()


def test_cell_uniforms_depend_on_salt_and_cell_alone(bins):
    u1, u2 = cell_uniforms(bins, salt=1), cell_uniforms(bins, salt=2)
    assert (u1 != u2).float().mean() > 0.99
    torch.testing.assert_close(cell_uniforms(bins[[5, 3]], salt=1), u1[[5, 3]], rtol=0, atol=0)
    # a different cell gets different numbers
    other = bins[5].clone()
    other[other.nonzero()[0]] += 1
    assert (cell_uniforms(other[None], salt=1)[0] != u1[5]).float().mean() > 0.9


def test_cell_uniforms_never_reach_one():
    # a cell found by search whose hash is within 2**-25 of 1
    row = [1, 3, 13, 0, 8, 1, 10, 7, 0, 12, 9, 9, 1, 15, 14, 5, 2, 13, 9, 8]
    row += [12, 4, 0, 4, 2, 1, 3, 8, 15, 14, 6, 12, 11, 8, 12, 0, 8, 3, 15, 0]
    u = cell_uniforms(torch.tensor([row]), salt=1)
    assert (u < 1).all()
