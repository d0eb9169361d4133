"""The detector-sensitivity metric and the transform it starts the bottleneck at."""

from pathlib import Path

import torch

from model.bottleneck import BottleneckConfig, FeatureBottleneck
from model.sensitivity import _probe, patch_sensitivity


def _bottleneck(latent: int) -> FeatureBottleneck:
    cfg = BottleneckConfig(feature_channels=2, latent_channels=latent, patch=2, num_levels=4)
    return FeatureBottleneck(cfg).eval()


def _features() -> torch.Tensor:
    """(B, 2, 8, 8) with two loud patch directions and one quiet one."""
    torch.manual_seed(0)
    x = torch.randn(64, 8, 4, 4) * torch.tensor([5.0, 4.0, 0.5, 0, 0, 0, 0, 0])[None, :, None, None]
    return torch.nn.functional.pixel_shuffle(x, 2)  # 8 patch dims = 2 channels x 2x2


def test_probe_gradients_sample_the_loss_hessian() -> None:
    """g = ∂(u·logits)/∂logits is u, and E[u uᵀ] must be the distillation loss's
    Gauss–Newton weight: p(1−p)·w per class logit, (diag q − q qᵀ)·w per DFL side."""
    torch.manual_seed(1)
    reg_max, anchors = 4, 3
    scores = torch.randn(1, 2, anchors)
    boxes = torch.randn(1, 4 * reg_max, anchors)
    n = 40000
    us, ub = [], []
    for _ in range(n // 1000):
        s = scores.repeat(1000, 1, 1).requires_grad_(True)
        b = boxes.repeat(1000, 1, 1).requires_grad_(True)
        gs, gb = torch.autograd.grad(_probe(s, b, reg_max), (s, b))
        us.append(gs)
        ub.append(gb)
    u_s, u_b = torch.cat(us), torch.cat(ub)
    p = torch.sigmoid(scores)[0]
    conf = p.amax(0)
    norm = conf.sum().clamp_min(1.0)
    want = (0.05 + conf) / norm * p * (1 - p)
    torch.testing.assert_close(u_s.pow(2).mean(0), want, rtol=0.05, atol=1e-4)
    # One DFL side of anchor 0: covariance of its reg_max logits.
    side = u_b.view(-1, 4, reg_max, anchors)[:, 1, :, 0]
    q = torch.softmax(boxes.view(4, reg_max, anchors)[1, :, 0], 0)
    want_cov = (torch.diag(q) - q[:, None] * q[None]) * conf[0] / norm
    torch.testing.assert_close(side.T @ side / len(side), want_cov, rtol=0.08, atol=2e-3)


def test_with_no_sensitivity_the_transform_is_the_pca() -> None:
    f = _features()
    pca, metric = _bottleneck(3), _bottleneck(3)
    pca.set_feature_stats(f)
    metric.set_feature_stats(f)
    x = metric.analysis.stats.normalize(f)
    metric.init_transform(x, torch.eye(8) * 3.0, mix=0.3)  # S ∝ I: same metric
    for a, b in ((pca.analysis.project.weight, metric.analysis.project.weight),
                 (pca.synthesis.unproject.weight, metric.synthesis.unproject.weight)):  # fmt: skip
        # Eigenvectors are defined up to sign.
        signs = torch.sign((a * b).flatten(1).sum(1))[:, None, None, None]
        torch.testing.assert_close(a, b * signs, rtol=1e-4, atol=1e-5)


def test_the_metric_keeps_the_quiet_direction_the_task_needs() -> None:
    """One latent channel: the PCA keeps the loudest direction; a sensitivity that
    sees only the quiet one makes the transform keep that one instead."""
    f = _features()
    pca, metric = _bottleneck(1), _bottleneck(1)
    pca.set_feature_stats(f)
    metric.set_feature_stats(f)
    x = metric.analysis.stats.normalize(f)
    patches = torch.nn.functional.unfold(x, 2, stride=2).transpose(1, 2).reshape(-1, 8)
    # The quiet direction, as the normalized patch space holds it.
    cov = patches.T @ patches / len(patches)
    quiet = torch.linalg.eigh(cov).eigenvectors[:, -3]
    sensitivity = torch.outer(quiet, quiet) + 1e-3 * torch.eye(8)
    metric.init_transform(x, sensitivity, mix=0.01)

    def task_error(model: FeatureBottleneck) -> float:
        with torch.no_grad():
            rebuilt = model.synthesis(model.analysis(f))
        err = model.analysis.stats.normalize(rebuilt) - x
        e = torch.nn.functional.unfold(err, 2, stride=2).transpose(1, 2).reshape(-1, 8)
        return float((e @ quiet).pow(2).mean())

    assert task_error(metric) < 0.05 * task_error(pca)
    with torch.no_grad():  # still a whitened latent
        assert abs(float(metric.analysis(f).var()) - 1.0) < 0.1


def test_sensitivity_of_a_real_tiny_detector(tiny_checkpoint: Path) -> None:
    from model.detector_split import EncoderHalf, load_detector
    from model.distillation import TrainableTail

    detector = load_detector(tiny_checkpoint)
    encoder, tail = EncoderHalf(detector, 4).eval(), TrainableTail(detector, 4)
    torch.manual_seed(0)
    with torch.no_grad():
        f = encoder(torch.rand(3, 3, 64, 64))
    model = FeatureBottleneck(BottleneckConfig(f.shape[1], 8, num_levels=4))
    model.set_feature_stats(f)
    s = patch_sensitivity(tail, f, model.analysis.stats, 2, int(tail.head.reg_max), batch=2)
    d = f.shape[1] * 4
    assert s.shape == (d, d) and s.dtype == torch.float64
    torch.testing.assert_close(s, s.T)
    assert float(torch.linalg.eigvalsh(s).min()) > -1e-9 * float(s.trace()), "PSD"
    assert float(s.trace()) > 0
    model.init_transform(model.analysis.stats.normalize(f), s, mix=0.1)
    with torch.no_grad():
        y = model.analysis(f)
    assert y.shape[1] == 8 and bool(torch.isfinite(y).all())
