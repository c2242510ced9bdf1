"""Batch augmentation: each op does what it claims, vectorised over the batch, driven by torch's
global RNG (so torch.manual_seed makes it repeatable)."""

import pytest
import torch

from dlx.data import BatchAugment, create_augmentation, list_augmentations


def constant_samples(n: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample i is filled with the value i + 1, and its label is i: mixing partners can be read off."""
    x = (torch.arange(n, dtype=torch.float32) + 1).view(n, *([1] * len(shape))).expand(n, *shape).clone()
    return x, torch.arange(n)


def test_names_and_all_off():
    assert sorted(list_augmentations()) == ["crop", "cutmix", "cutout", "flip", "mixup", "noise"]
    assert create_augmentation() is None
    assert isinstance(create_augmentation(noise_std=0.1), BatchAugment)


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 40)])
def test_all_ops_keep_shape_dtype_and_input(shape):
    augment = create_augmentation(flip=True, crop_padding=2, cutout_size=3, mixup_alpha=0.4,
                                  cutmix_alpha=1.0, noise_std=0.1)
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    x_before = x.clone()
    for _ in range(4):
        out, y_a, y_b, lam = augment(x, y)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert torch.equal(y_a, y) and y_b.shape == y.shape and isinstance(lam, float) and 0.0 <= lam <= 1.0
    assert torch.equal(x, x_before), "augmentation must not modify its input"


def test_flip_mirrors_about_half_of_the_samples():
    torch.manual_seed(0)
    x = torch.arange(5.0).expand(2000, 1, 3, 5).clone()
    out, y_a, y_b, lam = create_augmentation(flip=True)(x, torch.zeros(2000, dtype=torch.long))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert torch.all(flipped ^ kept)
    assert 0.45 < flipped.float().mean() < 0.55
    assert y_b is y_a and lam == 1.0
    seq = torch.arange(7.0).expand(200, 2, 7)
    out_seq, *_ = create_augmentation(flip=True)(seq, torch.zeros(200, dtype=torch.long))
    assert torch.all((out_seq == seq).flatten(1).all(1) ^ (out_seq == seq.flip(-1)).flatten(1).all(1))


def test_crop_is_a_shifted_window_of_the_padded_input():
    torch.manual_seed(1)
    n, pad = 64, 2
    x = torch.arange(1.0, 1 + n * 2 * 6 * 6).view(n, 2, 6, 6)
    out, *_ = create_augmentation(crop_padding=pad)(x, torch.zeros(n, dtype=torch.long))
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    offsets = set()
    for i in range(n):
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 6])]
        assert len(matches) == 1, f"sample {i} is not a window of its padded input"
        offsets.add(matches[0])
    assert len(offsets) > 10, "offsets should vary from sample to sample"

    seq = torch.arange(1.0, 1 + n * 10).view(n, 1, 10)
    out_seq, *_ = create_augmentation(crop_padding=3)(seq, torch.zeros(n, dtype=torch.long))
    padded_seq = torch.nn.functional.pad(seq, (3, 3))
    for i in range(n):
        assert any(torch.equal(out_seq[i], padded_seq[i, :, d:d + 10]) for d in range(7))


def test_cutout_zeroes_a_square_of_the_given_side():
    torch.manual_seed(2)
    n, side = 256, 4
    out, *_ = create_augmentation(cutout_size=side)(torch.ones(n, 3, 16, 16), torch.zeros(n, dtype=torch.long))
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero)), "the same box in every channel"
    unclipped = 0
    for mask in zero[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert int(mask.sum()) == height * width, "the zeroed area is one rectangle"
        if rows[0] > 0 and cols[0] > 0 and rows[-1] < 15 and cols[-1] < 15:
            assert (height, width) == (side, side)
            unclipped += 1
        else:
            assert height <= side and width <= side
    assert unclipped > n // 4

    seq_out, *_ = create_augmentation(cutout_size=5)(torch.ones(n, 1, 50), torch.zeros(n, dtype=torch.long))
    inner = seq_out[:, 0, 0].ne(0) & seq_out[:, 0, -1].ne(0)
    assert torch.all((seq_out[inner] == 0).sum(dim=(1, 2)) == 5)


def test_mixup_is_a_convex_combination_with_a_permutation():
    torch.manual_seed(3)
    x, y = constant_samples(32, (1, 4, 4))
    out, y_a, y_b, lam = create_augmentation(mixup_alpha=0.4)(x, y)
    assert 0.0 < lam < 1.0 and torch.equal(y_a, y)
    assert sorted(y_b.tolist()) == list(range(32)), "partners form a permutation"
    assert torch.allclose(out, lam * x + (1 - lam) * x[y_b])
    # Tabular data mixes too.
    tab, labels = torch.randn(32, 5), torch.arange(32)
    out_tab, _, partner, lam_tab = create_augmentation(mixup_alpha=1.0)(tab, labels)
    assert torch.allclose(out_tab, lam_tab * tab + (1 - lam_tab) * tab[partner])


@pytest.mark.parametrize("shape", [(2, 12, 12), (1, 30)])
def test_cutmix_lam_matches_the_pasted_area(shape):
    x, y = constant_samples(24, shape)
    area = x[0].numel() // shape[0]
    lams = []
    for seed in range(8):
        torch.manual_seed(seed)
        out, _, y_b, lam = create_augmentation(cutmix_alpha=1.0)(x, y)
        pasted = out != x
        moved = y_b != y
        expected = x[y_b].expand_as(out)
        assert torch.equal(out[pasted], expected[pasted]), "pasted values come from the partner"
        fraction = pasted[moved].flatten(1).sum(1).float() / (area * shape[0])
        assert torch.allclose(fraction, torch.full_like(fraction, 1.0 - lam), atol=1e-6)
        lams.append(lam)
    assert len(set(lams)) > 4


def test_mixup_and_cutmix_alternate_when_both_are_on():
    x, y = constant_samples(16, (1, 8, 8))
    augment = create_augmentation(mixup_alpha=1.0, cutmix_alpha=1.0)
    kinds = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out, *_ = augment(x, y)
        # CutMix only moves existing values; MixUp creates new ones.
        kinds.add("cutmix" if torch.all(out == out.round()) else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_noise_has_the_requested_std():
    torch.manual_seed(4)
    out, *_ = create_augmentation(noise_std=0.3)(torch.zeros(512, 1, 8, 8), torch.zeros(512, dtype=torch.long))
    assert abs(float(out.std()) - 0.3) < 0.01 and abs(float(out.mean())) < 0.01


def test_check_input_names_op_and_shape():
    augment = create_augmentation(cutout_size=2)
    with pytest.raises(ValueError) as caught:
        augment.check_input((2,))
    assert str(caught.value) == ("augmentation 'cutout' needs image (C,H,W) or sequence (C,L) inputs; "
                                 "this dataset gives samples of shape (2,)")
    with pytest.raises(ValueError, match="'flip', 'crop'.*shape \\(5,\\)"):
        create_augmentation(flip=True, crop_padding=1, noise_std=0.1).check_input((5,))
    with pytest.raises(ValueError, match="'cutmix'"):
        create_augmentation(cutmix_alpha=1.0)(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    create_augmentation(mixup_alpha=0.2, noise_std=0.1).check_input((2,))
    augment.check_input((3, 32, 32))
    augment.check_input((1, 40))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="'crop_padding' must be an integer >= 0"):
        create_augmentation(crop_padding=-1)
    with pytest.raises(ValueError, match="'mixup_alpha'"):
        create_augmentation(mixup_alpha=-0.5)
    with pytest.raises(ValueError, match="'flip'"):
        create_augmentation(flip="yes")


def test_repeatable_under_manual_seed():
    augment = create_augmentation(flip=True, crop_padding=2, cutout_size=3, mixup_alpha=0.4,
                                  cutmix_alpha=1.0, noise_std=0.1)
    x, y = torch.randn(16, 3, 8, 8), torch.arange(16)
    results = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        results.append(augment(x, y))
    (a, _, a_b, a_lam), (b, _, b_b, b_lam), (c, *_) = results
    assert torch.equal(a, b) and torch.equal(a_b, b_b) and a_lam == b_lam
    assert not torch.equal(a, c)
