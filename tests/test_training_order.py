"""Training batches mix classes even when the ID corpus is sorted by class (as CIFAR-10 files often are)."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from rayood.data.sources import plan_sources
from rayood.train.fit import _read_id_corpus
from tests.conftest import tiny_config

CLASSES, PER_CLASS, BATCH = 10, 300, 64


def _png(value: int) -> bytes:
    sink = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(sink, format="PNG")
    return sink.getvalue()


def test_batches_from_a_class_sorted_corpus_hold_many_classes(ray_cluster, tmp_path):
    labels = [c for c in range(CLASSES) for _ in range(PER_CLASS)]
    path = tmp_path / "sorted.parquet"
    pq.write_table(pa.table({
        "image": [_png(20 * c + i % 7) for i, c in enumerate(labels)],
        "label": pa.array(labels, pa.int32()),
        "id": [f"c{c}/{i:05d}" for i, c in enumerate(labels)],
    }), path)
    config = tiny_config(train={"data": [str(path)], "calibration_fraction": 0.1})
    corpus = _read_id_corpus(config, plan_sources(config.train.data, config.corpus, extra_columns=("label",)))
    # what a training worker sees: Ray Train's streaming split, the loops' local shuffle buffer of 8 batches
    shard = corpus.training_dataset(seed=0).streaming_split(1, equal=True)[0]
    batches = shard.iter_batches(
        batch_size=BATCH, batch_format="pyarrow", local_shuffle_buffer_size=BATCH * 8, local_shuffle_seed=0
    )
    distinct = [len(set(batch.column("label").to_pylist())) for batch in batches if batch.num_rows == BATCH]
    # in file order a 512-row buffer spans at most 3 classes of 300 rows
    assert len(distinct) > 30 and np.mean(distinct) >= 6, distinct
