"""Training batches mix classes even when the ID corpus is sorted by class (as CIFAR-10 files often are),
and a worker's cached shard holds every training row once."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from rayood.data.decode import pixels_to_column
from rayood.data.sources import plan_sources
from rayood.train.cache import CachedShard, CacheTooLarge
from rayood.train.fit import _read_id_corpus
from tests.conftest import NO_LAYERWISE, tiny_config

CLASSES, PER_CLASS, BATCH = 10, 300, 64


def _png(value: int) -> bytes:
    sink = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(sink, format="PNG")
    return sink.getvalue()


def test_batches_from_a_class_sorted_corpus_hold_many_classes(ray_cluster, tmp_path):
    labels = [c for c in range(CLASSES) for _ in range(PER_CLASS)]
    path = tmp_path / "sorted.parquet"
    pq.write_table(
        pa.table(
            {
                "image": [_png(20 * c + i % 7) for i, c in enumerate(labels)],
                "label": pa.array(labels, pa.int32()),
                "id": [f"c{c}/{i:05d}" for i, c in enumerate(labels)],
            }
        ),
        path,
    )
    config = tiny_config(train={"data": [str(path)], "calibration_fraction": 0.1})
    corpus = _read_id_corpus(config, plan_sources(config.train.data, config.corpus, extra_columns=("label",)))
    # what a training worker sees: Ray Train's streaming split, read once into the cache
    shard = corpus.training_dataset().streaming_split(1, equal=True)[0]
    names = [str(c) for c in range(CLASSES)]
    data = CachedShard.load(shard, config.model.preprocess.native_size, "label", names, max_bytes=10**9)
    assert len(data) == corpus.rows(False).num_rows and data.pixels.dtype == torch.uint8
    # each cached row keeps its own label: the pixel value was written from the class
    assert torch.equal(((data.pixels[:, 0, 0, 0].long() - data.pixels[:, 0, 0, 0].long() % 20) // 20), data.labels)
    steps = len(data) // BATCH
    batches = list(data.epoch_batches(BATCH, steps, torch.Generator().manual_seed(0)))
    distinct = [len(set(data.labels[index].tolist())) for index in batches]
    assert np.mean(distinct) >= 9, distinct  # 64 draws from 10 equal classes: 9.99 expected
    seen = torch.cat(batches)
    assert len(set(seen.tolist())) == len(seen)  # an epoch draws each row at most once


def test_cache_refuses_a_shard_over_its_limit(ray_cluster):
    import ray.data

    pixels = pixels_to_column(np.zeros((10, 8, 8, 3), np.uint8))
    rows = ray.data.from_arrow(pa.table({"pixels": pixels, "label": ["a"] * 10, "id": [str(i) for i in range(10)]}))
    try:
        CachedShard.load(rows, 8, "label", ["a"], max_bytes=5 * 8 * 8 * 3)
    except CacheTooLarge as error:
        assert "train.cache_max_bytes" in str(error)
    else:
        raise AssertionError("a shard of 10 images passed a limit of 5")


def test_the_cache_is_in_id_order_whatever_order_the_blocks_arrive_in(ray_cluster):
    """Ray Data hands blocks over in the order its tasks finish; two fits of one config must see the same rows
    in the same order, or their permutations (and so their models) differ."""
    import ray.data

    count = 200
    values = np.arange(count, dtype=np.uint8)
    pixels = pixels_to_column(np.broadcast_to(values[:, None, None, None], (count, 8, 8, 3)).copy())
    table = pa.table({"pixels": pixels, "label": ["a"] * count, "id": [f"{v:03d}" for v in values]})
    caches = []
    for seed in (1, 2):
        shuffled = ray.data.from_arrow(table).repartition(8).random_shuffle(seed=seed)
        caches.append(CachedShard.load(shuffled, 8, "label", ["a"], max_bytes=10**9))
    assert torch.equal(caches[0].pixels[:, 0, 0, 0], torch.from_numpy(values))
    assert torch.equal(caches[0].pixels, caches[1].pixels)


def test_a_second_fit_of_one_config_gives_the_same_backbone_and_a_bank_fraction_keeps_a_stable_half(
    ray_cluster, tiny_bundle, demo_data, tmp_path
):
    """A fresh fit (its own checkpoints) of the shared tiny bundle's settings, with half the bank and no denoiser
    (the backbone does not read it): the backbone equals the tiny bundle's, and its bank holds about half of the
    tiny bundle's bank rows, nothing else."""
    from rayood.train.fit import fit

    bundle = tmp_path / "again"
    fit(
        tiny_config(
            model={"multiscale": {"bank_fraction": 0.5}, **NO_LAYERWISE},
            train={"data": [str(demo_data[0])], "bundle": str(bundle)},
        )
    )
    first, second = (torch.load(Path(b) / "backbone.pt", weights_only=True) for b in (tiny_bundle, bundle))
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    # the bank's row order is Ray Data's arrival order, which no score depends on: each half-bank row must be a
    # row of the full bank. Up to float rounding: the rows come from batches Ray Data assembles as blocks arrive,
    # and a CPU convolution's last bits can depend on the batch it runs in.
    full, half = (np.load(Path(b) / "multiscale_bank.npy") for b in (tiny_bundle, bundle))
    full, half = full.reshape(len(full), -1), half.reshape(len(half), -1)
    train_rows = json.loads((bundle / "manifest.json").read_text())["data"]["train_rows"]
    assert len(full) == train_rows and 0.4 * train_rows < len(half) < 0.6 * train_rows
    nearest = np.abs(half[:, None, :] - full[None, :, :]).max(axis=2).min(axis=1)
    assert nearest.max() < 1e-5 * max(1.0, float(np.abs(full).max())), nearest.max()


def test_an_id_sample_is_stable_nested_and_independent_of_the_calibration_split():
    from rayood.data.id_sample import in_sample

    ids = [f"image-{n:05d}" for n in range(20_000)]
    half = {i for i in ids if in_sample(i, 0.5, seed=0, salt="bank")}
    tenth = {i for i in ids if in_sample(i, 0.1, seed=0, salt="bank")}
    assert abs(len(half) / len(ids) - 0.5) < 0.02 and abs(len(tenth) / len(ids) - 0.1) < 0.01
    assert tenth <= half, "a smaller sample lies inside a larger one"
    assert half == {i for i in ids if in_sample(i, 0.5, seed=0, salt="bank")}
    calibration = {i for i in ids if in_sample(i, 0.5, seed=0, salt="")}
    assert abs(len(half & calibration) / len(ids) - 0.25) < 0.02, "the bank's sample ignores the split"
