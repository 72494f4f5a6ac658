"""TII head structure, class statistics and TAP sampling, schedules and lr scaling."""

import math

import pytest
import torch
from torch import nn

from norga.engine.optim import lr_factor, scaled_lr
from norga.methods.hide_prompt import contrastive_loss
from norga.methods.statistics import ClassStatistics
from norga.models.tii import ResidualMLP, TIIHead


def layer_types(mlp: ResidualMLP) -> list[list[type]]:
    return [[type(m) for m in layer] for layer in mlp.net]


def test_mlp_structure_2():
    mlp = ResidualMLP(8, [2])
    assert layer_types(mlp) == [[nn.Linear, nn.GELU, nn.Dropout], [nn.Linear, nn.Dropout]]
    assert mlp.net[0][0].out_features == 16 and mlp.net[1][0].out_features == 8


def test_mlp_structure_4_4_has_normalised_middle_layer():
    mlp = ResidualMLP(8, [4, 4])
    assert layer_types(mlp) == [[nn.Linear, nn.GELU, nn.Dropout], [nn.Linear, nn.Dropout, nn.LayerNorm],
                                [nn.Linear, nn.Dropout]]
    assert mlp.net[1][2].normalized_shape == (32,)


def test_mlp_is_residual_then_layernorm():
    mlp = ResidualMLP(8, [2])
    nn.init.zeros_(mlp.net[-1][0].weight)
    nn.init.zeros_(mlp.net[-1][0].bias)
    x = torch.randn(5, 8)
    assert torch.allclose(mlp(x), nn.functional.layer_norm(x, (8,)), atol=1e-6)


def test_tii_head_outputs_all_classes():
    assert TIIHead(8, 13, [2])(torch.randn(4, 8)).shape == (4, 13)


def gaussian_features(n=4000, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    cov = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
    a = torch.randn(n, d, generator=g) @ torch.linalg.cholesky(cov).T + torch.tensor([1.0, -2.0, 3.0])
    b = torch.randn(n, d, generator=g) * 0.1 - 5
    return torch.cat([a, b]), torch.tensor([7] * n + [2] * n), cov


def test_covariance_statistics_store_mean_and_regularised_covariance():
    x, y, _ = gaussian_features()
    stats = ClassStatistics("covariance")
    stats.fit(x, y)
    xa = x[y == 7].double()
    chol = stats.spread[7][0].double()
    assert torch.allclose(stats.means[7][0].double(), xa.mean(0), atol=1e-5)
    assert torch.allclose(chol @ chol.T, torch.cov(xa.T) + 1e-4 * torch.eye(3, dtype=torch.float64), atol=1e-5)
    assert list(stats.means) == [2, 7]


def test_covariance_samples_follow_the_gaussian():
    x, y, cov = gaussian_features()
    stats = ClassStatistics("covariance")
    stats.fit(x, y)
    torch.manual_seed(0)
    s, labels = stats.sample([7, 2], 20000)
    assert labels.tolist() == [7] * 20000 + [2] * 20000
    assert torch.allclose(s[:20000].mean(0), torch.tensor([1.0, -2.0, 3.0]), atol=0.05)
    assert torch.allclose(torch.cov(s[:20000].T), cov, atol=0.1)


def test_variance_statistics_are_diagonal():
    x, y, _ = gaussian_features()
    stats = ClassStatistics("variance")
    stats.fit(x, y)
    xa = x[y == 7].double()
    assert torch.allclose(stats.spread[7][0].double() ** 2, xa.var(0) + 1e-4, atol=1e-4)
    torch.manual_seed(0)
    s, _ = stats.sample([7], 20000)
    assert abs(torch.corrcoef(s.T)[0, 1].item()) < 0.03  # no correlation is modelled


def test_multi_centroid_statistics_split_samples_over_centroids():
    x, y, _ = gaussian_features(n=200)
    stats = ClassStatistics("multi_centroid", n_centroids=4, seed=0)
    stats.fit(x, y)
    assert stats.means[7].shape == (4, 3)
    s, labels = stats.sample([7], 40)
    assert len(s) == 40 and torch.all(labels == 7)
    assert stats.mean_matrix().shape == (8, 3)


def test_statistics_state_round_trip():
    x, y, _ = gaussian_features(n=50)
    a = ClassStatistics("covariance")
    a.fit(x, y)
    b = ClassStatistics("covariance")
    b.load_state_dict(a.state_dict())
    torch.manual_seed(3)
    sa = a.sample([2, 7], 5)[0]
    torch.manual_seed(3)
    assert torch.equal(sa, b.sample([2, 7], 5)[0])
    with pytest.raises(ValueError, match="variance"):
        ClassStatistics("variance").load_state_dict(a.state_dict())


def test_contrastive_loss_is_identity_cross_entropy_over_means_and_features():
    torch.manual_seed(0)
    feats, means = torch.randn(4, 6), torch.randn(3, 6)
    m = torch.cat([means, feats])
    sim = m @ m.T / 0.8
    expected = -torch.log_softmax(sim, dim=1).diagonal().mean()
    assert torch.allclose(contrastive_loss(feats, means, 0.8), expected, atol=1e-6)
    sim0 = feats @ feats.T / 0.8
    assert torch.allclose(contrastive_loss(feats, None, 0.8), -torch.log_softmax(sim0, 1).diagonal().mean())


def test_schedules():
    step = {"name": "step", "step_epochs": 30, "gamma": 0.1}
    assert [lr_factor(step, e, 50) for e in (0, 29, 30, 49)] == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1)]
    cos = {"name": "cosine"}
    assert lr_factor(cos, 0, 10) == 1.0
    assert lr_factor(cos, 5, 10) == pytest.approx(0.5)
    assert lr_factor({"name": "constant"}, 7, 10) == 1.0
    with pytest.raises(ValueError, match="constant, step, multistep, cosine"):
        lr_factor({"name": "linear"}, 0, 1)


def test_lr_scales_with_the_global_batch():
    assert scaled_lr(0.03, 128) == pytest.approx(0.015)
    assert math.isclose(scaled_lr(0.0005, 256), 0.0005)
