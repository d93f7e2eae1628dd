"""The backbone recipe's parts: the learning-rate schedule, lookahead, parameter groups and augmentations."""

import numpy as np
import pytest
import torch
from torch import nn

from rayood.config import BackboneOptimSettings
from rayood.train.augment import Augmenter, random_crop
from rayood.train.recipe import Lookahead, build_optimizer, lr_factor, set_learning_rates


def test_warmup_linear_rises_to_the_peak_then_falls_and_cosine_decays():
    optim = BackboneOptimSettings(schedule="warmup_linear", warmup_fraction=0.25)
    factors = [lr_factor(step, 100, optim) for step in range(101)]
    assert (
        factors[0] == pytest.approx(0.2) and factors[25] == pytest.approx(1.0) and factors[100] == pytest.approx(0.07)
    )
    assert max(factors) == factors[25] and np.all(np.diff(factors[:26]) > 0) and np.all(np.diff(factors[25:]) < 0)
    cosine = BackboneOptimSettings(schedule="cosine")
    assert lr_factor(0, 10, cosine) == pytest.approx(1.0) and lr_factor(10, 10, cosine) == pytest.approx(0.0)


def test_norm_parameters_get_the_scaled_rate_and_the_whitening_bias_stops_after_its_epochs():
    model = nn.Sequential(nn.Conv2d(3, 4, 2), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
    optim = BackboneOptimSettings(lr=0.5, weight_decay=0.01, norm_lr_scale=8, whitening_bias_epochs=2)
    optimizer = build_optimizer(model, optim, whitening_bias=model[0].bias)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert {id(p) for p in groups["norm"]["params"]} == {id(model[1].weight), id(model[1].bias)}
    assert groups["norm"]["lr"] == pytest.approx(4.0) and groups["norm"]["weight_decay"] == pytest.approx(0.01 / 8)
    assert [id(p) for p in groups["whitening"]["params"]] == [id(model[0].bias)]
    set_learning_rates(optimizer, 0.5, epoch=1, optim=optim)
    assert groups["whitening"]["lr"] == pytest.approx(0.25) and groups["other"]["lr"] == pytest.approx(0.25)
    set_learning_rates(optimizer, 0.5, epoch=2, optim=optim)
    assert groups["whitening"]["lr"] == 0.0 and groups["norm"]["lr"] == pytest.approx(2.0)


def test_lookahead_pulls_the_weights_to_their_average_and_ends_on_it():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    lookahead = Lookahead(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    lookahead.update(model, decay=0.75)  # average = 0.75 * 0 + 0.25 * 1
    assert torch.allclose(model.weight, torch.full_like(model.weight, 0.25))
    with torch.no_grad():
        model.weight.fill_(3.0)
    lookahead.step(model, step=7, total=7)  # the last step takes the average outright
    assert torch.allclose(model.weight, torch.full_like(model.weight, 0.25))
    saved = lookahead.state_dict()
    again = Lookahead(nn.Linear(2, 1, bias=False))
    again.load_state_dict(saved)
    assert torch.equal(again.average["weight"], saved["weight"])


def test_random_crop_takes_a_window_of_the_reflect_padded_image():
    images = torch.rand(16, 3, 8, 8)
    out = random_crop(images, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    offsets = set()
    for i in range(16):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(padded[i, :, dy : dy + 8, dx : dx + 8], out[i])
        ]
        assert matches, f"image {i} is not a window of its padded copy"
        offsets.add(matches[0])
    assert len(offsets) > 3, "offsets differ between images"


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    images = torch.rand(6, 3, 4, 4)
    index = torch.arange(6)
    augment = Augmenter(["alternating_flip"], rows=6, seed=3)
    generator = torch.Generator().manual_seed(0)
    even, odd, even_again = (augment(images, generator, index, epoch) for epoch in (0, 1, 2))
    assert torch.equal(even, even_again)
    for i in range(6):  # exactly one of the two epochs shows the mirror image
        flipped_even = torch.equal(even[i], images[i].flip(-1))
        flipped_odd = torch.equal(odd[i], images[i].flip(-1))
        assert flipped_even != flipped_odd and (torch.equal(even[i], images[i]) or flipped_even)


def test_whitening_is_fitted_on_a_sample_of_every_part_of_a_class_sorted_shard():
    """ID corpora are often stored class by class: the whitening must not see only the first classes."""
    from rayood.config import ModelSettings
    from rayood.train.cache import CachedShard
    from rayood.train.steps import WHITENING_SAMPLE, new_backbone_objective

    generator = torch.Generator().manual_seed(0)
    half = WHITENING_SAMPLE
    dark = torch.randint(0, 60, (half, 3, 8, 8), generator=generator, dtype=torch.uint8)
    bright = torch.randint(160, 256, (half, 3, 8, 8), generator=generator, dtype=torch.uint8)
    data = CachedShard(torch.cat([dark, bright]), torch.cat([torch.zeros(half), torch.ones(half)]).long())
    settings = ModelSettings.model_validate(
        {"preprocess": {"native_size": 8, "input_size": 8}, "backbone": {"arch": "cifar_fast", "widths": [8, 8, 8]}}
    )
    torch.manual_seed(0)
    objective, _ = new_backbone_objective(settings, BackboneOptimSettings(), 2, data, None)
    whitening = objective.backbone.whitening
    with torch.no_grad():
        out = torch.nn.functional.conv2d(
            objective.backbone.prepare(data.images(torch.arange(2 * half), torch.device("cpu"))), whitening.weight[:12]
        )
    variance = out.permute(0, 2, 3, 1).reshape(-1, 12).var(dim=0)
    # fitted on the dark half alone, the dark/bright contrast would blow the top components' variance up ~100x
    assert variance.max() < 2.0, variance


def _cifar_fast_settings(rotation_head: bool):
    from rayood.config import ModelSettings

    return ModelSettings.model_validate(
        {
            "preprocess": {"native_size": 8, "input_size": 8},
            "backbone": {"arch": "cifar_fast", "widths": [8, 8, 8], "rotation_head": rotation_head},
        }
    )


def _shard(rows: int = 64):
    from rayood.train.cache import CachedShard

    generator = torch.Generator().manual_seed(1)
    return CachedShard(
        torch.randint(0, 256, (rows, 3, 8, 8), generator=generator, dtype=torch.uint8), torch.zeros(rows).long()
    )


@pytest.mark.parametrize("objective", ["cross_entropy", "rotation"])
def test_a_fresh_backbone_is_whitened_whatever_its_objective(objective):
    """A rotation head the objective does not train once took the whitening fit's place (the filters stayed random)."""
    from rayood.models.backbones import build_backbone
    from rayood.train.steps import new_backbone_objective

    settings, data = _cifar_fast_settings(rotation_head=True), _shard()
    model, _ = new_backbone_objective(settings, BackboneOptimSettings(objective=objective), 2, data, None)
    fitted = build_backbone(settings.backbone, settings.preprocess, 2)
    fitted.fit_whitening(data.images(torch.arange(len(data)), torch.device("cpu")))
    torch.testing.assert_close(model.backbone.whitening.weight, fitted.whitening.weight)


@pytest.mark.parametrize("objective", ["cross_entropy", "alpa_finetune"])
def test_a_backbone_started_from_weights_keeps_their_whitening(objective):
    """Refitting the whitening under loaded weights could flip a filter's sign, and so swap the channels the
    loaded first convolution reads."""
    from rayood.models.backbones import build_backbone
    from rayood.train.steps import new_backbone_objective

    settings = _cifar_fast_settings(rotation_head=False)
    source = build_backbone(settings.backbone, settings.preprocess, 2)
    with torch.no_grad():
        source.whitening.weight.copy_(torch.randn_like(source.whitening.weight))
    model, _ = new_backbone_objective(
        settings, BackboneOptimSettings(objective=objective), 2, _shard(), source.state_dict()
    )
    torch.testing.assert_close(model.backbone.whitening.weight, source.whitening.weight)
