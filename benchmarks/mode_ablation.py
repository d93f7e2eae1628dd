"""MODE on the demo: SupCon alone vs ALPA-train (SupCon + ALPA) vs ALPA-finetune (from the SupCon backbone).

    python benchmarks/mode_ablation.py [--config configs/demo.yaml] [--epochs 30] [--finetune-epochs 10]

Fits one bundle per objective (same data, split and seeds), screens the demo corpus with each, and prints
AUROC / FPR@95TPR of ``knn`` and ``multiscale`` (and the rest) as a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rayood.bundle import BACKBONE_FILE, MANIFEST
from rayood.config import RayoodConfig, load_config, with_overrides
from rayood.data.demo import build_demo
from rayood.screen.pipeline import screen
from rayood.storage import resolve
from rayood.train.fit import fit


def variant(config: RayoodConfig, workdir: Path, name: str, epochs: int, lr: float, **backbone_train) -> RayoodConfig:
    optim = {**config.train.backbone.model_dump(), "epochs": epochs, "lr": lr, **backbone_train}
    config = with_overrides(config, "train", backbone=optim, bundle=str(workdir / name), run_name=f"ablation-{name}")
    return with_overrides(
        config, "screen", bundle=str(workdir / name), output=str(workdir / f"report-{name}"), overwrite=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--workdir", default="rayood-bench/mode")
    args = parser.parse_args()
    base = load_config(args.config)
    base = with_overrides(base, "model", ddp={**base.model.ddp.model_dump(), "enabled": False})  # not compared here
    build_demo(base.demo.root)
    workdir = Path(args.workdir)
    supcon = variant(base, workdir, "supcon", args.epochs, 0.05, objective="supcon")
    from_supcon = with_overrides(
        base,
        "model",
        backbone={**base.model.backbone.model_dump(), "init_weights": str(workdir / "supcon" / BACKBONE_FILE)},
    )
    finetune = variant(from_supcon, workdir, "alpa_finetune", args.finetune_epochs, 0.01, objective="alpa_finetune")
    runs = {
        "cross_entropy": variant(base, workdir, "cross_entropy", base.train.backbone.epochs, base.train.backbone.lr),
        "supcon": supcon,
        "alpa_train": variant(base, workdir, "alpa_train", args.epochs, 0.05, objective="alpa_train"),
        "alpa_finetune": finetune,
    }
    results = {}
    for name, config in runs.items():
        if not resolve(config.train.bundle).join(MANIFEST).exists():
            fit(config)
        summary, _ = screen(config)
        results[name] = summary["evaluation"]["scores"]
    scores = list(next(iter(results.values())))
    print("| objective | " + " | ".join(scores) + " |")
    print("|---|" + "---|" * len(scores))
    for name, metrics in results.items():
        cells = [f"{metrics[s]['auroc']:.4f} / {metrics[s]['fpr_at_95_tpr']:.3f}" for s in scores]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
