"""The fit's console progress: one line per epoch with its pace and what is left (the Ray side runs in
tests/test_mode_fit.py, where a real fit must print these lines without --verbose)."""

import logging

from rayood.train.progress import StageProgress, describe


def test_lines_carry_the_epoch_the_metrics_and_an_eta_from_the_pace_since_training_started(caplog):
    progress = StageProgress("backbone", 12)
    with caplog.at_level(logging.INFO, logger="rayood.train.progress"):
        progress.log({"start_epoch": 9}, now=100.0)  # resumed after epoch 9: only new epochs set the pace
        progress.log({"epoch": 10, "loss": 1.37412, "train_accuracy": 0.7394}, now=400.0)
        progress.log({"device": "cpu"}, now=410.0)  # not an epoch: no line
        progress.log({"epoch": 12, "loss": 1.2}, now=900.0)
    assert caplog.messages == [
        "backbone: epoch 10 of 12, loss 1.374, train accuracy 73.9%, 300 s per epoch, about 10 min left",
        "backbone: epoch 12 of 12, loss 1.2, 250 s per epoch",
    ]


def test_short_epochs_get_a_line_every_few_seconds_with_the_first_and_the_last(caplog):
    progress = StageProgress("layerwise", 150)
    with caplog.at_level(logging.INFO, logger="rayood.train.progress"):
        progress.log({"start_epoch": 0}, now=0.0)
        for epoch in range(1, 151):
            progress.log({"epoch": epoch, "loss": 0.02}, now=0.25 * epoch)
    assert len(caplog.messages) == 5  # epochs 1, 41, 81, 121 (10 s apart) and 150
    assert caplog.messages[0] == "layerwise: epoch 1 of 150, loss 0.02, 0.25 s per epoch, about 37 s left"
    assert caplog.messages[1].startswith("layerwise: epoch 41 of 150, loss 0.02, 0.25 s per epoch")
    assert caplog.messages[-1] == "layerwise: epoch 150 of 150, loss 0.02, 0.25 s per epoch"


def test_a_first_line_without_a_start_has_no_pace_and_short_waits_are_in_seconds():
    assert describe("ddpm", 3, {"epoch": 1, "loss": 0.5}, None) == "ddpm: epoch 1 of 3, loss 0.5"
    assert describe("ddpm", 3, {"epoch": 2}, 40.0) == "ddpm: epoch 2 of 3, 40 s per epoch, about 40 s left"
