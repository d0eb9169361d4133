"""The learned bottleneck's pieces: gains, entropy model → integer tables, codec."""

from pathlib import Path

import numpy as np
import pytest
import torch

from codec.entropy_tables import PRECISION, EntropyTables
from codec.feature_codec import GainedFeatureCodec
from model.bottleneck import BottleneckConfig, FeatureBottleneck, round_ste
from model.learned_export import integer_tables


def tiny(patch: int = 2, nonlinear: bool = False) -> FeatureBottleneck:
    torch.manual_seed(0)
    cfg = BottleneckConfig(feature_channels=8, latent_channels=4, patch=patch, hidden_channels=8,
                           synthesis_channels=8, num_levels=4, nonlinear=nonlinear)  # fmt: skip
    return FeatureBottleneck(cfg).eval()


def test_interpolated_gain_is_the_geometric_mean_of_its_anchors() -> None:
    model = tiny()
    with torch.no_grad():
        g, ig = model.gains_at(torch.tensor([1.0, 1.5, 2.0]))
    np.testing.assert_allclose(g[1], torch.sqrt(g[0] * g[2]), rtol=1e-5)
    np.testing.assert_allclose(ig[1], torch.sqrt(ig[0] * ig[2]), rtol=1e-5)
    gains, _ = model.level_gains(sublevels=2)
    assert gains.shape == (7, 4)
    assert np.all(np.diff(gains.mean(axis=1)) > 0), "finer levels have larger gains"


def test_tables_are_the_density_at_each_gain() -> None:
    model = tiny()
    gains, _ = model.level_gains(sublevels=1)
    probs = model.density.bin_probabilities(gains, radius=15)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-9)
    # The same bin from the training-time likelihood (torch) and the export (numpy).
    z = torch.tensor([-2.0, 0.0, 3.0]).view(1, 1, 1, 3).repeat(1, 4, 1, 1)
    g = torch.from_numpy(gains[2]).view(1, 4, 1, 1)
    lik = model.density.likelihood(z, g)[0, :, 0].detach().numpy()
    np.testing.assert_allclose(lik, probs[2][:, [13, 15, 18]], rtol=1e-5)
    tables = integer_tables(model, gains, radius=15)
    assert tables.freqs.sum(axis=-1).tolist() == [[1 << PRECISION] * 4] * 4


def test_round_ste_rounds_forward_and_passes_gradients() -> None:
    x = torch.tensor([0.4, 1.6, -2.5], requires_grad=True)
    y = round_ste(x)
    y.sum().backward()
    assert y.tolist() == [0.0, 2.0, -2.0]
    assert x.grad is not None and x.grad.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(("patch", "nonlinear"), [(2, False), (2, True), (4, True)])
def test_training_forward_returns_features_and_bits(patch: int, nonlinear: bool) -> None:
    model = tiny(patch, nonlinear).train()
    assert (model.analysis.net is None) == (model.synthesis.net is None) == (not nonlinear)
    out = model(torch.randn(2, 8, 16, 16), torch.tensor([0.0, 2.5]))
    assert model.analysis(torch.randn(1, 8, 16, 16)).shape == (1, 4, 16 // patch, 16 // patch)
    assert out.features.shape == (2, 8, 16, 16)
    assert out.bits.shape == (2,) and bool(torch.all(out.bits > 0))


@pytest.mark.parametrize("patch", [1, 3])
def test_patch_must_be_a_power_of_two_of_at_least_two(patch: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        tiny(patch)


def test_gained_codec_round_trip_and_shape_checks() -> None:
    model = tiny()
    gains, inverse = model.level_gains(sublevels=2)
    codec = GainedFeatureCodec(gains, inverse, integer_tables(model, gains, radius=15))
    y = np.random.default_rng(0).normal(0, 2, size=(4, 5, 6)).astype(np.float32)
    for level in range(codec.num_levels):
        encoded = codec.compress(y, level)
        np.testing.assert_array_equal(
            codec.decompress(encoded), codec.dequantize(codec.quantize(y, level), level)
        )
    with pytest.raises(ValueError, match="must all be"):
        GainedFeatureCodec(gains[:3], inverse, codec.tables)
    with pytest.raises(ValueError, match="positive"):
        GainedFeatureCodec(-gains, inverse, codec.tables)
    assert isinstance(codec.tables, EntropyTables)


def test_pca_start_whitens_the_latent_and_reconstructs_linearly() -> None:
    model = tiny()
    torch.manual_seed(1)
    # Correlated channels, constant over 4x4 blocks: a rank-2 signal per 2x2 patch,
    # which the 4-channel latent can carry.
    basis = torch.randn(8, 2)
    coarse = torch.einsum("ck,bkhw->bchw", basis, torch.randn(6, 2, 4, 4)) * 3 + 1
    features = torch.nn.functional.interpolate(coarse, scale_factor=4, mode="nearest")
    model.set_feature_stats(features)
    with torch.no_grad():
        y = model.analysis(features)
        rebuilt = model.synthesis(y)
    variance = y.var(dim=(0, 2, 3))
    assert torch.allclose(variance[:2], torch.ones(2), atol=0.1), variance
    nmse = float(((rebuilt - features) ** 2).mean() / features.var())
    assert nmse < 0.05, nmse


def test_pca_start_gives_stronger_components_finer_steps() -> None:
    """Reverse water-filling: gain ∝ the component's std, so every component is
    quantized on the same grid before training moves the gains."""
    model = tiny()
    torch.manual_seed(2)
    basis = torch.randn(8, 2)
    coarse = torch.einsum(
        "ck,bkhw->bchw",
        basis,
        torch.randn(6, 2, 4, 4) * torch.tensor([4.0, 1.0])[None, :, None, None],
    )
    features = torch.nn.functional.interpolate(coarse, scale_factor=4, mode="nearest")
    features = features + 0.01 * torch.randn_like(features)
    model.set_feature_stats(features)
    gains, inverse = model.level_gains(sublevels=1)
    assert np.all(gains[:, 0] > gains[:, 1]), "the strongest component gets the finest step"
    np.testing.assert_allclose(gains * inverse, 1.0, rtol=1e-5)
    assert np.all(np.diff(gains[:, 0]) > 0)


@pytest.mark.parametrize(
    ("learn_gains", "nonlinear"), [(False, False), (True, False), (True, True)]
)
def test_training_learns_only_what_it_is_asked_to(
    learn_gains: bool, nonlinear: bool, tmp_path: Path
) -> None:
    from model.train import TrainConfig, _param_groups

    model = tiny(nonlinear=nonlinear)
    cfg = TrainConfig(
        weights=Path("unused.pt"), out=tmp_path / "x.pt", learn_gains=learn_gains,
        nonlinear=nonlinear,
    )  # fmt: skip
    groups = _param_groups(model, cfg)
    trained = {id(p) for g in groups for p in g["params"]}
    assert all(id(p) in trained for p in model.density.parameters())
    for param, wanted in (
        (model.log_gains, learn_gains),
        (model.log_inverse_gains, learn_gains),
        (model.analysis.project.weight, nonlinear),
        (model.synthesis.unproject.weight, nonlinear),
    ):
        assert (id(param) in trained) == wanted == param.requires_grad
    if nonlinear:
        assert groups[1]["lr"] == cfg.lr * cfg.transform_lr_scale


@pytest.mark.parametrize(
    ("feature_channels", "asked", "wanted"), [(128, None, 256), (8, None, 32), (128, 96, 96)]
)
def test_latent_width_defaults_to_256_capped_at_a_patch(
    feature_channels: int, asked: int | None, wanted: int, tmp_path: Path
) -> None:
    from model.train import TrainConfig, latent_channels

    cfg = TrainConfig(weights=Path("unused.pt"), out=tmp_path / "x.pt", latent_channels=asked)
    assert latent_channels(cfg, feature_channels) == wanted
