import pytest
import torch

from rayood.config import BackboneSettings, PreprocessSettings
from rayood.models.backbones import build_backbone, uint8_to_unit
from rayood.models.diffusion import (
    FeatureDenoiser,
    NoiseSchedule,
    ddim_reconstruct_x0,
    ddim_timesteps,
    noise_for_ids,
    timestep_embedding,
)


@pytest.mark.parametrize(
    "settings, dims",
    [
        (BackboneSettings(arch="cifar_resnet", widths=(8, 16, 32), blocks=(1, 2, 1)), [8, 8, 16, 32]),
        (BackboneSettings(arch="resnet18", cifar_stem=True), [64, 64, 128, 256, 512]),
        (BackboneSettings(arch="cifar_fast", widths=(8, 16, 16)), [24, 8, 16, 16]),
    ],
)
def test_backbone_taps_every_stage_in_one_pass(settings, dims):
    model = build_backbone(settings, PreprocessSettings(native_size=16, input_size=32), num_classes=7).eval()
    assert model.stage_dims() == dims
    features = model.features(torch.rand(2, 3, 16, 16))
    assert features.logits.shape == (2, 7)
    assert [m.shape[1] for m in features.stage_maps] == dims
    assert features.stage_maps[0].shape[-1] in (31, 32), "inputs are upsampled from native to input size"
    assert features.penultimate.shape == (2, dims[-1])


def test_fast_backbone_whitens_id_patches_and_keeps_the_whitening_in_its_state():
    settings = BackboneSettings(arch="cifar_fast", widths=(8, 16, 16))
    model = build_backbone(settings, PreprocessSettings(), num_classes=3)
    generator = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(400, 3, 34, 34, generator=generator), 3, 1)  # correlated pixels
    images = (smooth * 0.5 + torch.rand(400, 3, 1, 1, generator=generator) * 0.5).clamp(0, 1)
    model.fit_whitening(images)
    whitening = model.whitening
    assert not whitening.weight.requires_grad and whitening.bias.requires_grad
    with torch.no_grad():
        out = torch.nn.functional.conv2d(model.prepare(images), whitening.weight[:12])  # the 12 eigen-filters
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = torch.cov(flat.T)
    off_diagonal = covariance - torch.diag(covariance.diagonal())
    assert off_diagonal.abs().max() < 0.01, "whitened patch dimensions are uncorrelated"
    # unit variance, shrunk only where an eigenvalue is comparable to the eps that keeps small ones finite
    assert covariance.diagonal().min() > 0.8 and covariance.diagonal().max() < 1.001, covariance.diagonal()
    assert torch.equal(whitening.weight[12:], -whitening.weight[:12])
    restored = build_backbone(settings, PreprocessSettings(), num_classes=3)
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.whitening.weight, whitening.weight)


def test_uint8_to_unit_is_nchw_in_unit_range():
    pixels = torch.full((1, 4, 5, 3), 255, dtype=torch.uint8)
    out = uint8_to_unit(pixels)
    assert out.shape == (1, 3, 4, 5) and out.max() == 1.0


def test_dlsr_schedule_matches_the_paper():
    schedule = NoiseSchedule.sqrt_linear(0.0015, 0.0195, 100)
    assert schedule.betas[0].item() == pytest.approx(0.0015)
    assert schedule.betas[-1].item() == pytest.approx(0.0195)
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(0.41, abs=0.02)  # never pure noise


def test_denoiser_shapes_and_zero_initialised_output():
    model = FeatureDenoiser(dim=10, hidden=20, num_blocks=3, time_dim=16)
    out = model(torch.randn(4, 10), torch.tensor([0, 1, 2, 99]))
    assert out.shape == (4, 10)
    assert torch.count_nonzero(out) == 0
    assert timestep_embedding(torch.tensor([0, 5]), 7).shape == (2, 7)


def test_ddim_timesteps():
    assert ddim_timesteps(3, 4) == [3, 2, 1, 0]
    assert ddim_timesteps(3, 2) == [3, 0]
    assert ddim_timesteps(10, 1) == [10]


class _Oracle(torch.nn.Module):
    """Knows z0: the ideal x0-predictor."""

    def __init__(self, z0):
        super().__init__()
        self.z0 = z0

    def forward(self, z_t, t):
        return self.z0


def test_ddim_with_a_perfect_denoiser_recovers_z0():
    schedule = NoiseSchedule.sqrt_linear(0.0015, 0.0195, 100)
    z0 = torch.randn(5, 8)
    z_t = schedule.q_sample(z0, torch.full((5,), 10), torch.randn(5, 8))
    torch.testing.assert_close(ddim_reconstruct_x0(_Oracle(z0), z_t, 10, 4, schedule), z0)


def test_noise_is_seeded_per_id_not_per_batch():
    first = noise_for_ids(["a", "b", "c"], (6,), "salt")
    second = noise_for_ids(["c", "a"], (6,), "salt")
    torch.testing.assert_close(first[0], second[1])
    torch.testing.assert_close(first[2], second[0])
    assert not torch.equal(first[0], noise_for_ids(["a"], (6,), "other")[0])


def test_torchvision_weights_by_name_load_through_torchvisions_cache(tmp_path, monkeypatch):
    """The online path is torchvision's: a weights name resolves to its URL's file in torch's hub cache. This
    machine cannot download, so the test puts a file where a download would have put it."""
    from torchvision.models import ResNet18_Weights, resnet18

    from rayood.models.backbones import load_matching, torchvision_state

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    imagenet = resnet18(num_classes=1000)
    cached = tmp_path / "hub" / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), cached)
    state = torchvision_state("ResNet18_Weights.IMAGENET1K_V1")
    model = build_backbone(BackboneSettings(arch="resnet18", cifar_stem=False), PreprocessSettings(), num_classes=10)
    left = load_matching(model, state)
    assert left == ["fc.bias", "fc.weight"], "everything but the 1,000-class head is loaded"
    assert torch.equal(model.stages[3][1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert torch.equal(model.stem[0].weight, imagenet.conv1.weight)
    with pytest.raises(ValueError, match="not a torchvision weights name"):
        torchvision_state("ResNet18_Weights.NO_SUCH_WEIGHTS")
