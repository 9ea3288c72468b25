"""Paper A's Figs. 3-4 and Algorithm 1 in the fine-tuning regime (issue 23, item 4): the preset
``experiments/paper_a/finetune-cpu.yaml`` run by ``recede reproduce paper-a``.

The pretrained reduced ResNet-62 (all weights) and ViT (LoRA r = 1, α = 4) of
``recede pretrain --preset resnet|vit`` (digits 0-4; written or reused in results/pretrained)
are fine-tuned on digits 5-9 with every horizon h = 1..T, 3 seeds: test accuracy and the real
memory of a step per h (Fig. 3), training-loss snapshots (Fig. 4), and Algorithm 1's ĥ at the
start against every fixed h.  The report, figures and results.json go to ``--out``.

    PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/finetune/paper_a.py           # ~10 min on 2 shared cores
    PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/finetune/paper_a.py --smoke   # seconds

``--smoke``: one seed, one epoch on 20 images, each model started from a fresh model of the
preset's shape written as a checkpoint (no pretraining), to check that everything runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from recede.cli import main


def smoke(out: str) -> Path:
    from recede import data, models
    from recede.reproduce import configs, paper_a
    from recede.runs import pretrain

    config = configs.read_config("paper-a", "finetune-cpu")
    config["seeds"] = [0]
    files: dict[str | None, str] = {}
    with tempfile.TemporaryDirectory() as folder:
        for entry in config["sweeps"].values():
            entry.update(epochs=1, snapshot_epochs=[1])
            entry["data_options"]["train_size"] = 20
            if entry["model"] not in files:
                options = {k: v for k, v in entry["model_options"].items() if not k.startswith("adapter")}
                net = models.build(entry["model"], data.load(entry["data"], **entry["data_options"]), **options)
                path = Path(folder) / f"{entry['model']}.safetensors"
                save_file(pretrain.tensors_to_save(net), str(path))
                files[entry["model"]] = str(path)
        return paper_a.run(Path(out), progress=False, config=config, init=files, init_skip=["heads.*"])


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one seed, one epoch, fresh checkpoints: seconds")
    parser.add_argument("--out", default="results/finetune-paper-a")
    args = parser.parse_args(argv)
    if args.smoke:
        print(f"report written to {smoke(args.out)}")
        return
    status = main(["reproduce", "paper-a", "--preset", "finetune-cpu", "--out", args.out, "--no-progress"])
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main_()
