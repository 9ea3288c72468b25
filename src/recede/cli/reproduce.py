"""``recede reproduce PAPER``: its options and the front-end over the studies of
:mod:`recede.reproduce`."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from recede.reproduce import PAPERS


def add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="reproduce a paper's figures and tables")
    p.add_argument("paper", choices=sorted(PAPERS))
    p.add_argument(
        "--full",
        action="store_true",
        help="the paper's settings (the preset 'full') "
        "instead of CPU scale: needs the data folders, weights files and a GPU",
    )
    p.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="a configuration of experiments/PAPER/ by name (cpu, full, full-vit-lora, ...) or a path to a YAML file",
    )
    p.add_argument("--out", default=None, help="results folder (default results/PAPER)")
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="the folder holding cifar-10-batches-py, cifar-100-python or tiny-imagenet-200 "
        "for the entries that read one (default: the config's root); nothing is downloaded",
    )
    p.add_argument(
        "--weights",
        action="append",
        default=None,
        metavar="[MODEL=]FILE",
        help="a local pretrained state dict for the entries of MODEL (resnet50, vit-b16) or, "
        "without MODEL, for every entry that starts from pretrained weights; repeatable",
    )
    p.add_argument(
        "--init",
        action="append",
        default=None,
        metavar="[MODEL=]FILE",
        help="paper-a, paper-b: start the entries of MODEL (or, without MODEL, every entry; "
        "paper-a: its sweeps) from this state dict, a `recede pretrain` checkpoint or your own "
        "(docs/finetune.md); repeatable",
    )
    p.add_argument(
        "--init-skip",
        action="append",
        default=None,
        metavar="PATTERN",
        help="with --init: the model's keys matching this glob (e.g. 'heads.*') keep their "
        "fresh initialisation (repeatable)",
    )
    p.add_argument(
        "--only",
        default=None,
        metavar="SECTIONS",
        help="paper-a: run only these sections of the configuration, comma-separated "
        "(models: Figs. 2/5/E1/E2; sweeps: Figs. 3-4; rate: Theorem C.8)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    from recede.reproduce import configs
    from recede.runs import preflight

    if args.full and args.preset is not None:
        raise ValueError("--full is the preset 'full'; give --full or --preset, not both")
    if args.only is not None and args.paper != "paper-a":
        raise ValueError("--only picks sections of paper-a's configuration")
    module = importlib.import_module(PAPERS[args.paper])
    options: dict[str, Any] = {"weights": configs.parse_weights(args.weights)}
    if args.preset is not None:
        options["config"] = configs.read_config(args.paper, args.preset)
    if args.only is not None:
        options["only"] = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.init is not None or args.init_skip is not None:
        if args.paper not in ("paper-a", "paper-b"):
            raise ValueError(
                f"--init starts paper-a's and paper-b's runs; {args.paper} takes --weights for its pretrained models"
            )
        options["init"] = configs.parse_weights(args.init, "--init")
        options["init_skip"] = args.init_skip
    report = module.run(
        preflight.out_folder(args),
        full=args.full,
        progress=not args.no_progress,
        data_root=args.data_root,
        on_checked=lambda: preflight.start(args),
        **options,
    )
    print(f"report written to {report}")
    return 0
