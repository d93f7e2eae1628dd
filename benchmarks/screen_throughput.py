"""Screening throughput: the whole Ray Data pipeline vs a tight in-process loop of the same models.

    python benchmarks/screen_throughput.py [--config configs/demo.yaml] [--repeat 10] [--gpu]
        [--corpus PARQUET --bundle URI]

Replicates a corpus ``--repeat`` times (new ids, same images; default: the demo corpus, with the config's
bundle fitted if missing), screens it with ``jobs/screen.py``'s pipeline and then scores the same,
pre-decoded pixels of one copy in one process. Prints both rates and their ratio (measured in one run),
and Ray Data's per-operator stats of the screening run (where the time went).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from corpora import replicate

from rayood.bundle import MANIFEST
from rayood.bundle_models import load_bundle
from rayood.config import load_config, with_overrides
from rayood.data.decode import decode_images
from rayood.data.demo import build_demo
from rayood.scoring.scorer import Scorer, pick_device
from rayood.screen.pipeline import screen
from rayood.storage import resolve
from rayood.train.fit import fit


def tight_loop(bundle_uri: str, corpus: Path, device: str, batch_size: int) -> float:
    """Images/s of the scorer alone on pixels decoded beforehand (the pipeline's upper bound)."""
    table = pq.read_table(corpus)
    bundle = load_bundle(bundle_uri, device="cpu")
    size = bundle.settings.preprocess.native_size
    pixels = decode_images(table.column("image").to_pylist(), size)
    ids = table.column("id").to_pylist()
    scorer = Scorer(bundle, pick_device(device))
    scorer.score(pixels[:batch_size], ids[:batch_size])  # warm-up
    if scorer.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, len(ids), batch_size):
        scorer.score(pixels[start : start + batch_size], ids[start : start + batch_size])
    if scorer.device.type == "cuda":
        torch.cuda.synchronize()
    return len(ids) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--gpu", action="store_true", help="fit with use_gpu and score in 1-GPU actors")
    parser.add_argument("--workdir", default="rayood-bench")
    parser.add_argument("--corpus", help="a Parquet corpus to replicate instead of the demo's")
    parser.add_argument("--bundle", help="an existing bundle (default: the config's, fitted if missing)")
    args = parser.parse_args()
    config = load_config(args.config)
    workdir = Path(args.workdir)
    if args.gpu:
        config = with_overrides(config, "train", use_gpu=True, bundle=str(workdir / "bundle-gpu"))
        config = with_overrides(config, "screen", device="cuda", num_gpus_per_actor=1)
    if args.gpu:
        config = config.model_copy(update={"ray": config.ray.model_copy(update={"num_cpus": None})})
    if args.corpus:
        corpus = Path(args.corpus)
    else:
        corpus = build_demo(config.demo.root if config.demo else workdir / "demo")[1] / "corpus.parquet"
    bundle = args.bundle or config.train.bundle
    if not resolve(bundle).join(MANIFEST).exists():
        started = time.perf_counter()
        fit(config)
        print(f"fit: {time.perf_counter() - started:.1f} s")
    replicated = replicate(corpus, args.repeat, workdir / f"corpus-x{args.repeat}")
    config = with_overrides(
        config, "screen", inputs=(str(replicated),), output=str(workdir / "report"), bundle=bundle, overwrite=True
    )
    summary, _ = screen(config)
    pipeline_rate = summary["timings"]["rows_per_s"]
    loop_rate = tight_loop(bundle, corpus, config.screen.device, config.screen.batch_size)
    result = {
        "rows": summary["rows"],
        "pipeline_images_per_s": pipeline_rate,
        "tight_loop_images_per_s": round(loop_rate, 1),
        "ratio": round(pipeline_rate / loop_rate, 3),
        "device": str(pick_device(config.screen.device)),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
