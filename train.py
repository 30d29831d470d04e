#!/usr/bin/env python
"""Train one run: ``python train.py -c configs/segmentation/unet_r34.yaml --train.lr=3e-4 --data.fold=1``.

Also ``--list-models [--task T]``, ``--resume`` (continue ``<run_dir>/last.pt`` exactly), and under
``torchrun --nproc_per_node N train.py -c ...`` the same script trains with DDP.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine  # noqa: E402,F401  (offline environment first)
from engine.config import ConfigError, load_config, parse_overrides  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any other --section.key=value overrides the config (W&B agents pass these).")
    parser.add_argument("-c", "--config", help="experiment YAML (configs/<task>/<name>.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from <run_dir>/last.pt")
    parser.add_argument("--list-models", action="store_true", help="list registered model names and exit")
    parser.add_argument("--task", help="with --list-models: only models serving this task")
    return parser.parse_known_args(argv)


def list_models(task: str | None) -> None:
    import models

    for family, names in models.list_models(task).items():
        info = models.families()[family]
        print(f"{family}: {info.description}  [tasks: {', '.join(info.tasks)}]")
        for name in names:
            print(f"  {name}")


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    if args.list_models:
        list_models(args.task)
        return 0
    if not args.config and not rest:
        print("train.py: give -c CONFIG (or --list-models)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, parse_overrides(rest))
        import models

        family, _ = models.resolve(cfg.model.name, cfg.task)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if family.kind == "external":
        family.builder(cfg.model.name.partition(":")[2], task=cfg.task, num_outputs=0).fit(cfg, resume=args.resume)
        return 0
    from engine.trainer import train

    summary = train(cfg, resume=args.resume)
    val = summary.get("val") or {}
    print(f"{cfg.run_dir}: best val/{summary['metric']} = {val.get('score')} (epoch {summary['best_epoch']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
