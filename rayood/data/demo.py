"""The embedded demo corpus, built from data that scikit-learn ships (no download).

- ID: handwritten digits 0-4 (8x8, 17 grey levels) upsampled to 32x32 RGB; 75% for fitting, 25% held out.
- Near-OOD: digits 5-9 (same style, unseen classes).
- Far-OOD: 32x32 crops of scikit-learn's two sample photographs.

Written as Parquet in the layout of the benchmark data (``image`` PNG bytes, ``label``, ``id``) plus a
``group`` ground-truth column (``id``, ``near_ood``, ``far_ood``) in the corpus to screen.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

SIZE = 32
ID_CLASSES = (0, 1, 2, 3, 4)
HELD_OUT_FRACTION = 0.25
CROPS_PER_PHOTO = 100
FIT_FILE = "id_fit.parquet"
CORPUS_DIR = "corpus"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_image(digit: np.ndarray) -> bytes:
    """An 8x8 digit (0..16) -> 32x32 RGB PNG, bilinear."""
    grey = Image.fromarray(np.round(digit * (255 / 16)).astype(np.uint8), mode="L")
    return _png(np.asarray(grey.resize((SIZE, SIZE), Image.Resampling.BILINEAR).convert("RGB")))


def photo_crops(count_per_photo: int, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    crops = []
    for name, photo in zip(("china", "flower"), load_sample_images().images):
        height, width, _ = photo.shape
        for index in range(count_per_photo):
            top, left = rng.integers(0, height - SIZE), rng.integers(0, width - SIZE)
            crops.append((f"photo/{name}/{index:03d}", _png(photo[top : top + SIZE, left : left + SIZE])))
    return crops


def _table(ids: list[str], images: list[bytes], labels: list[int | None], groups: list[str] | None = None) -> pa.Table:
    columns = {
        "id": pa.array(ids, pa.string()),
        "image": pa.array(images, pa.binary()),
        "label": pa.array(labels, pa.int32()),
    }
    if groups is not None:
        columns["group"] = pa.array(groups, pa.string())
    return pa.table(columns)


def build_demo(root: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the fitting set and the corpus under ``root`` (if missing); returns their paths."""
    root = Path(root)
    fit_path, corpus_dir = root / FIT_FILE, root / CORPUS_DIR
    if fit_path.exists() and (corpus_dir / "corpus.parquet").exists():
        return fit_path, corpus_dir
    rng = np.random.default_rng(seed)
    digits = load_digits()
    order = rng.permutation(len(digits.target))
    fit_rows, held_out, near = [], [], []
    id_seen = 0
    id_total = int(np.isin(digits.target, ID_CLASSES).sum())
    for index in order:
        label = int(digits.target[index])
        row = (f"digits/{index:04d}", digit_image(digits.images[index]), label)
        if label not in ID_CLASSES:
            near.append(row)
        elif id_seen < round(id_total * (1 - HELD_OUT_FRACTION)):
            fit_rows.append(row)
            id_seen += 1
        else:
            held_out.append(row)
    far = photo_crops(CROPS_PER_PHOTO, rng)
    root.mkdir(parents=True, exist_ok=True)
    corpus_dir.mkdir(exist_ok=True)
    pq.write_table(_table(*map(list, zip(*fit_rows))), fit_path)
    corpus_ids = [r[0] for r in held_out + near] + [c[0] for c in far]
    corpus_images = [r[1] for r in held_out + near] + [c[1] for c in far]
    corpus_labels = [r[2] for r in held_out + near] + [None] * len(far)
    groups = ["id"] * len(held_out) + ["near_ood"] * len(near) + ["far_ood"] * len(far)
    pq.write_table(_table(corpus_ids, corpus_images, corpus_labels, groups), corpus_dir / "corpus.parquet")
    return fit_path, corpus_dir
