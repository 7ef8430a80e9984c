import numpy as np
import pytest
import torch

from dmgrd_edge.data.synthesis import (
    AnomalySynthesizer,
    fourier_amplitude_mix,
    perlin_mask,
    perlin_noise,
    procedural_texture,
)
from dmgrd_edge.errors import DataError
from dmgrd_edge.train.losses import (
    compactness_loss,
    contrast_loss,
    dmgrd_loss,
    kd_loss,
    sinkhorn_distance,
    triplet_loss,
)
from dmgrd_edge.model.dmgrd import TrainingFeatures


def _levels(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 4, 8, 8, generator=g), torch.randn(b, 6, 4, 4, generator=g)]


def test_kd_loss_zero_for_identical_and_positive_otherwise():
    t = _levels()
    assert float(kd_loss(t, [x.clone() for x in t])) == pytest.approx(0, abs=1e-6)
    assert float(kd_loss(t, _levels(seed=1))) > 0.5
    assert float(kd_loss(t, [2 * x for x in t])) == pytest.approx(0, abs=1e-6)  # scale-free


def test_contrast_loss_margin():
    a = _levels()
    assert float(contrast_loss(a, [x.clone() for x in a])) == pytest.approx(2 * 0.5, abs=1e-5)
    assert float(contrast_loss(a, [-x for x in a])) == 0.0


def test_sinkhorn_is_not_trivial():
    x = torch.randn(4, 32)
    assert float(sinkhorn_distance(x, x)) < 0.05
    assert float(sinkhorn_distance(x, torch.randn(4, 32))) > 0.5
    assert float(compactness_loss(_levels(4))) > 0.1  # different images -> non-zero
    assert float(compactness_loss(_levels(1))) == 0.0


def test_triplet_and_total_have_gradients():
    normal = [x.requires_grad_() for x in _levels(4)]
    anomalous = _levels(2, seed=3)
    loss = triplet_loss(normal, anomalous)
    loss.backward()
    assert normal[0].grad is not None and normal[0].grad.abs().sum() > 0
    fused_n, fused_a = _levels(4, 5), _levels(4, 6)
    feats = TrainingFeatures(
        _levels(4, 7), [x.requires_grad_() for x in _levels(4, 8)], fused_n, fused_a
    )
    terms = dmgrd_loss(feats, _levels(4, 7), torch.tensor([False, False, True, True]))
    expected = terms.kd + 0.2 * (terms.ot + 0.1 * terms.con) + 0.1 * terms.triplet
    assert terms.total.item() == pytest.approx(expected.item())
    plain = dmgrd_loss(
        TrainingFeatures(_levels(4), _levels(4, 1), None, None),
        _levels(4),
        torch.zeros(4, dtype=bool),
    )
    assert float(plain.total) == float(plain.kd) and float(plain.ot) == 0


def test_perlin_and_masks():
    rng = np.random.default_rng(0)
    noise = perlin_noise(64, 64, 4, 8, rng)
    assert noise.shape == (64, 64) and np.abs(noise).max() < 1.0 and noise.std() > 0.05
    for _ in range(10):
        assert perlin_mask(64, 64, rng).any()


def test_fourier_mix_identity_and_effect():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3)).astype(np.float32)
    source = procedural_texture(32, 32, rng)
    np.testing.assert_allclose(fourier_amplitude_mix(image, source, 0.0), image, atol=1e-3)
    assert np.abs(fourier_amplitude_mix(image, source, 1.0) - image).mean() > 1.0


def test_synthesizer_is_deterministic_and_local():
    synth = AnomalySynthesizer(64, 64)
    image = np.full((64, 64, 3), 128, np.uint8)
    out1, mask1 = synth(image, np.random.default_rng(5))
    out2, mask2 = synth(image, np.random.default_rng(5))
    np.testing.assert_array_equal(out1, out2)
    assert mask1.any() and (out1[~mask1] == 128).all()


def test_texture_folder(tmp_path):
    with pytest.raises(DataError, match="no texture images"):
        AnomalySynthesizer(64, 64, tmp_path)
    import cv2

    cv2.imwrite(str(tmp_path / "t.png"), np.zeros((20, 30, 3), np.uint8))
    synth = AnomalySynthesizer(64, 64, tmp_path)
    assert synth.source_kind == "texture folder" and synth.textures[0].shape == (64, 64, 3)
