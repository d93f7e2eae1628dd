"""Synthetic outliers made from ID images: ID-only evidence for choosing what to fuse.

No OOD test set may steer a choice (that would be tuning on test data), so the fused scores are chosen
on images that are OOD by construction yet keep the ID data's low-level statistics: each kind destroys one
thing a real OOD image lacks (a near-OOD image has ID-like texture but foreign objects or layouts):

- ``patch_shuffle``: a 4 x 4 grid of patches in a random order (local texture kept, layout destroyed);
- ``rotate``: a rotation by 90, 180 or 270 degrees (objects in poses the ID data never shows);
- ``pixel_permute``: the pixels in a random order (colour histogram kept, every structure destroyed);
- ``blur``: a heavy Gaussian blur (shapes kept, texture destroyed);
- ``class_mix``: the average of two images of different classes (two half-objects, no class).

Inputs and outputs are (N, H, W, 3) uint8, as decoded pixels travel through the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

KINDS = ("patch_shuffle", "rotate", "pixel_permute", "blur", "class_mix")
PATCH_GRID = 4
BLUR_SIGMA_FRACTION = 0.1  # sigma = 10% of the side: 3.2 px at 32 px


def patch_shuffle(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, h, w, c = images.shape
    ph, pw = h // PATCH_GRID, w // PATCH_GRID
    out = images.copy()
    grid = images[:, : ph * PATCH_GRID, : pw * PATCH_GRID].reshape(n, PATCH_GRID, ph, PATCH_GRID, pw, c)
    patches = grid.transpose(0, 1, 3, 2, 4, 5).reshape(n, PATCH_GRID**2, ph, pw, c)
    order = np.argsort(rng.random((n, PATCH_GRID**2)), axis=1)
    shuffled = np.take_along_axis(patches, order[:, :, None, None, None], axis=1)
    out[:, : ph * PATCH_GRID, : pw * PATCH_GRID] = (
        shuffled.reshape(n, PATCH_GRID, PATCH_GRID, ph, pw, c)
        .transpose(0, 1, 3, 2, 4, 5)
        .reshape(n, ph * PATCH_GRID, pw * PATCH_GRID, c)
    )
    return out


def rotate(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    turns = rng.integers(1, 4, len(images))
    return np.stack([np.rot90(image, k, axes=(0, 1)) for image, k in zip(images, turns)])


def pixel_permute(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, h, w, c = images.shape
    flat = images.reshape(n, h * w, c)
    order = np.argsort(rng.random((n, h * w)), axis=1)
    return np.take_along_axis(flat, order[:, :, None], axis=1).reshape(n, h, w, c)


def blur(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = BLUR_SIGMA_FRACTION * images.shape[1]
    kernel = 2 * int(3 * sigma) + 1
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    blurred = TF.gaussian_blur(tensor, [kernel, kernel], [sigma, sigma])
    return blurred.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def class_mix(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image averaged with one of another class (with itself when only one class is present)."""
    partners = rng.permutation(len(images))
    for _ in range(10):  # re-draw the partners that share the class
        same = labels[partners] == labels
        if not same.any():
            break
        partners[same] = rng.permutation(len(images))[: same.sum()]
    return ((images.astype(np.uint16) + images[partners]) // 2).astype(np.uint8)


UNLABELLED = {"patch_shuffle": patch_shuffle, "rotate": rotate, "pixel_permute": pixel_permute, "blur": blur}


def evidence_kinds(rotation_trained: bool, labelled: bool = True) -> tuple[str, ...]:
    """The kinds that are evidence about a backbone: one trained to predict rotations
    (``train.backbone.objective: rotation``) recognises ``rotate`` by construction, so that kind says nothing;
    unlabelled ID data has no classes to mix."""
    return tuple(
        kind
        for kind in KINDS
        if not (rotation_trained and kind == "rotate") and not (not labelled and kind == "class_mix")
    )


def synthetic_outliers(
    images: np.ndarray, labels: np.ndarray, per_kind: int, seed: int, kinds_made: Sequence[str] = KINDS
) -> tuple[np.ndarray, list[str]]:
    """``per_kind`` outliers of every kind in ``kinds_made`` (fewer when fewer images), each from a random ID image."""
    rng = np.random.default_rng(seed)
    made, kinds = [], []
    for kind in kinds_made:
        chosen = rng.choice(len(images), size=min(per_kind, len(images)), replace=False)
        if kind == "class_mix":
            made.append(class_mix(images[chosen], labels[chosen], rng))
        else:
            made.append(UNLABELLED[kind](images[chosen], rng))
        kinds += [kind] * len(chosen)
    return np.concatenate(made), kinds
