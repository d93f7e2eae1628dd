import pytest
import torch

from rayood.config import BackboneSettings, ConfigError, DDPSettings, ModelSettings, PreprocessSettings, parse_config
from rayood.detectors.ddp import DDPDetector, guided_ddim
from rayood.detectors.registry import ddp_score_names
from rayood.models.backbones import build_backbone
from rayood.models.diffusion import noise_schedule
from rayood.models.unet import ConditionalUNet, build_unet

SMALL = dict(image_size=16, num_classes=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, dropout=0.0)


@pytest.mark.parametrize("attention", [(), (8,), (16, 8)])
def test_unet_shapes_and_null_label(attention):
    unet = ConditionalUNet(**SMALL, attention_resolutions=attention)
    x = torch.randn(4, 3, 16, 16)
    out = unet(x, torch.tensor([0, 10, 500, 999]), torch.tensor([0, 1, 2, unet.null_label]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0, "zero-initialised output layer"


def test_paper_unet_builds_at_cifar_size():
    settings = ModelSettings.model_validate(
        {
            "ddp": {
                "base_channels": 128,
                "channel_mults": [1, 2, 2, 2],
                "num_res_blocks": 2,
                "attention_resolutions": [16],
            }
        }
    )
    unet = build_unet(settings, 10)
    params = sum(p.numel() for p in unet.parameters())
    assert 30e6 < params < 40e6  # the DDPM CIFAR-10 U-Net has about 35.7M parameters


def test_linear_schedule():
    schedule = noise_schedule(DDPSettings())
    assert schedule.betas[0].item() == pytest.approx(1e-4) and schedule.betas[-1].item() == pytest.approx(0.02)
    assert schedule.timesteps == 1000


class _Oracle(torch.nn.Module):
    """Predicts the true noise of known clean images, whatever the label: DDIM must then recover them."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.schedule = noise_schedule(DDPSettings())
        self.null_label = 99

    def forward(self, x_t, t, labels):
        x0 = self.x0.repeat(x_t.shape[0] // self.x0.shape[0], 1, 1, 1)
        ab = self.schedule.alpha_bar(t, x_t)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def test_guided_ddim_recovers_clean_images_with_a_perfect_model():
    x0 = torch.rand(3, 3, 4, 4) * 2 - 1
    oracle = _Oracle(x0)
    levels = torch.tensor([60, 60, 60])
    recon = guided_ddim(
        oracle,
        x0,
        levels,
        torch.randn_like(x0),
        torch.zeros(3, dtype=torch.long),
        oracle.schedule,
        stride=20,
        guidance=2.0,
    )
    torch.testing.assert_close(recon, x0, atol=1e-4, rtol=0)


def test_mixed_levels_in_one_batch_equal_separate_runs():
    unet = ConditionalUNet(**SMALL, attention_resolutions=()).eval()
    torch.nn.init.normal_(unet.out[-1].weight, std=0.1)
    schedule = noise_schedule(DDPSettings())
    x0, noise = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0])
    together = guided_ddim(unet, x0, torch.tensor([40, 80, 80, 40]), noise, labels, schedule, 20, 2.0)
    for rows, level in (([0, 3], 40), ([1, 2], 80)):
        alone = guided_ddim(unet, x0[rows], torch.tensor([level, level]), noise[rows], labels[rows], schedule, 20, 2.0)
        torch.testing.assert_close(together[rows], alone, atol=1e-5, rtol=1e-4)


def test_guidance_combines_conditional_and_null_predictions():
    calls = []

    class Recorder(torch.nn.Module):
        null_label = 5

        def forward(self, x, t, labels):
            calls.append(labels.clone())
            return torch.where(labels[:, None, None, None] == 5, torch.zeros_like(x), torch.ones_like(x))

    x0 = torch.zeros(2, 3, 2, 2)
    schedule = noise_schedule(DDPSettings())
    guided_ddim(Recorder(), x0, torch.tensor([0, 0]), torch.zeros_like(x0), torch.tensor([1, 2]), schedule, 20, 2.0)
    assert calls[0].tolist() == [1, 2, 5, 5], "one batch holds the conditional and the null halves"


def test_levels_must_share_the_ddim_grid():
    with pytest.raises(ConfigError, match="multiple of stride"):
        parse_config({"model": {"ddp": {"levels": [120, 250], "stride": 20}}})
    assert ddp_score_names(DDPSettings(levels=(120, 240, 360))) == ["ddp", "ddp_t120", "ddp_t240", "ddp_t360"]


def test_ddp_scores_are_per_id_deterministic_and_batched():
    settings = DDPSettings(base_channels=8, channel_mults=(1, 2), levels=(40, 80), stride=40, draws=3, chunk_rows=4)
    model = ModelSettings(preprocess=PreprocessSettings(native_size=8, input_size=8), ddp=settings)
    backbone = build_backbone(BackboneSettings(widths=(4, 8), blocks=(1, 1)), model.preprocess, 3).eval()
    unet = build_unet(model, 3)
    torch.nn.init.normal_(unet.out[-1].weight, std=0.1)  # a non-trivial noise predictor
    detector = DDPDetector(unet, settings)
    images = torch.rand(5, 3, 8, 8)
    features = backbone.features(images)
    scores = detector.score_images(images, features, ["a", "b", "c", "d", "e"], backbone)
    assert set(scores) == {"ddp", "ddp_t40", "ddp_t80"}
    assert (scores["ddp"] >= 0).all() and (scores["ddp"] <= 2).all()
    torch.testing.assert_close(scores["ddp"], (scores["ddp_t40"] + scores["ddp_t80"]) / 2)
    alone = detector.score_images(images[2:3], backbone.features(images[2:3]), ["c"], backbone)
    torch.testing.assert_close(alone["ddp"], scores["ddp"][2:3], atol=1e-5, rtol=1e-4)
