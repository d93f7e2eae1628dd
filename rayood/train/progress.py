"""A Ray Train stage's progress on the driver's console: a line per finished epoch, at most one every
``LINE_EVERY_S`` seconds (plus the first and the last), with an ETA.

Workers' output reaches the console only with ``--verbose`` (``runtime.py``), so without this a 40-minute
backbone stage is silent from start to end. Rank 0 puts each epoch's metrics on a Ray queue (an actor that takes
no CPU slot); a driver thread takes them off and logs ``backbone: epoch 3 of 12, loss 1.37, train accuracy
73.9%, 316 s per epoch, about 47 min left``. The seconds per epoch are measured on the driver between lines
(the first from when the workers start training), so a resumed stage's estimate counts only its new epochs. A
stage of short epochs (the demo's denoiser runs 150 in 40 s) gets a line every few seconds, not one per epoch.
Progress is best effort: a full or lost queue never fails the fit.
"""

from __future__ import annotations

import logging
import threading
import time
from queue import Empty

import ray
from ray.util.queue import Queue

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
POLL_S = 1.0
LINE_EVERY_S = 10.0


def report_epoch(queue: Queue | None, stage: str, metrics: dict) -> None:
    """Worker side (rank 0): hand one epoch's metrics to the driver, without ever blocking or raising."""
    if queue is None:
        return
    try:
        queue.put_nowait((stage, metrics))
    except Exception as error:  # noqa: BLE001 - progress must not stop training
        log.debug("progress not reported: %s", error)


def describe(stage: str, epochs: int, metrics: dict, seconds_per_epoch: float | None) -> str:
    """The console line for one finished epoch."""
    done = int(metrics["epoch"])
    parts = [f"{stage}: epoch {done} of {epochs}"]
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4g}")
    if "train_accuracy" in metrics:
        parts.append(f"train accuracy {100 * metrics['train_accuracy']:.1f}%")
    if seconds_per_epoch is not None:
        parts.append(
            f"{seconds_per_epoch:.2g} s per epoch" if seconds_per_epoch < 10 else f"{seconds_per_epoch:.0f} s per epoch"
        )
        if done < epochs:
            parts.append(f"about {_duration((epochs - done) * seconds_per_epoch)} left")
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class StageProgress:
    """Context manager around one stage's ``trainer.fit()``; ``queue`` goes into the loop's config."""

    def __init__(self, stage: str, epochs: int) -> None:
        self.stage, self.epochs = stage, epochs
        self.queue: Queue | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rayood-{stage}-progress", daemon=True)
        self._last: tuple[int, float] | None = None  # (epoch, driver time) of the last line, or of the start
        self._line_at: float | None = None  # driver time of the last line

    def __enter__(self) -> StageProgress:
        self.queue = Queue(maxsize=QUEUE_SIZE, actor_options={"num_cpus": 0})
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.queue is not None:
            ray.kill(self.queue.actor)

    def _run(self) -> None:
        while not self._stop.is_set() or not self.queue.empty():
            try:
                stage, metrics = self.queue.get(timeout=POLL_S)
            except Empty:
                continue
            except Exception as error:  # noqa: BLE001 - the queue's actor is gone: stop reporting, not the fit
                log.debug("progress stopped: %s", error)
                return
            self.log(metrics, time.monotonic())

    def log(self, metrics: dict, now: float) -> None:
        """Log one epoch's line unless the previous line is under ``LINE_EVERY_S`` old (the first and the last
        epoch always have one); the pace is the mean over the epochs since the previous line, or since the
        workers started training (``{"start_epoch": n}``, sent once the data is cached and any checkpoint loaded)."""
        if "start_epoch" in metrics:
            self._last = (int(metrics["start_epoch"]), now)
            return
        if "epoch" not in metrics:
            return
        done = int(metrics["epoch"])
        if self._line_at is not None and now - self._line_at < LINE_EVERY_S and done < self.epochs:
            return
        pace = None
        if self._last is not None and done > self._last[0]:
            pace = (now - self._last[1]) / (done - self._last[0])
        log.info(describe(self.stage, self.epochs, metrics, pace))
        self._last, self._line_at = (done, now), now
