"""The reproductions' configurations: found by name, checked before any training.

A *preset* is a YAML file of ``experiments/paper_a`` or ``experiments/paper_b`` (``cpu``,
``full``, ``full-vit-lora``, ...) or a path to one.  Each names one or more *entries*: a model
and its data (``model``, ``model_options``, ``data``, ``data_options``).  Before the first step:

* :func:`check_entry`: every model and data name is registered and takes the options given;
* :func:`apply_sources`: ``--data-root DIR`` becomes the ``root`` of every entry whose data is
  read from a folder, and ``--weights [MODEL=]FILE`` the ``weights`` option of every entry of
  that model; an entry whose ``model_options.weights`` is ``required`` (the paper starts from
  pretrained weights) and gets no file stops the run with one line saying what to give;
* :func:`apply_init`: ``--init [MODEL=]FILE`` and ``--init-skip PATTERN`` become the ``init``
  and ``init_skip`` keys of the entries that take them (a preset may give them too);
  ``init: pretrained:NAME`` is the ``recede pretrain --preset NAME`` checkpoint, written to
  (or reused from) ``results/pretrained`` (:func:`resolve_init`);
* :func:`check_sources`: every data folder is read and every model built once (its weights
  file or ``init`` state dict loaded), so a missing folder or a weights file that does not fit
  stops the run with one line before hours of training, not after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from recede import data, models
from recede.config import load_yaml

EXPERIMENTS = Path(__file__).resolve().parents[3] / "experiments"
REQUIRED = "required"  # model_options.weights placeholder: the paper's pretrained start


def preset_folder(paper: str) -> Path:
    """``experiments/paper_a`` for ``paper-a`` (and so on)."""
    return EXPERIMENTS / paper.replace("-", "_")


def presets(paper: str) -> list[str]:
    """The preset names of ``paper`` (its YAML files without the suffix)."""
    return sorted(p.stem for p in preset_folder(paper).glob("*.yaml"))


def read_config(paper: str, preset: str) -> dict:
    """The preset ``preset`` of ``paper`` (a name from :func:`presets` or a path to a YAML file)."""
    path = Path(preset).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = preset_folder(paper) / f"{preset}.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"{paper} has no preset {preset!r}; available: "
                f"{', '.join(presets(paper)) or 'none (run from a source checkout of recede)'}"
            )
    elif not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"preset {path} cannot be read ({err.strerror or err})") from None
    config = load_yaml(raw, f"preset {path}")
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a mapping of settings")
    return config


def parse_weights(values: Sequence[str] | None, flag: str = "--weights") -> dict[str | None, str]:
    """``--weights`` (or ``flag``) values: ``MODEL=FILE`` (MODEL a registered model) or a bare ``FILE`` (key None)."""
    out: dict[str | None, str] = {}
    for value in values or []:
        name, sep, file = value.partition("=")
        key, file = (name, file) if sep and name in models.available() else (None, value)
        if not file:
            raise ValueError(f"{flag} {value!r}: give FILE or MODEL=FILE")
        if key in out:
            raise ValueError(f"{flag} given twice for {key or 'every model'}")
        out[key] = file
    return out


def check_entry(label: str, entry: Mapping) -> None:
    """``ValueError`` naming ``label`` unless its model and data exist and take their options."""
    for key in ("model", "data"):
        if key not in entry:
            raise ValueError(f"{label}: no {key!r} given")
    try:
        models.check_options(entry["model"], entry.get("model_options") or {})
        data.check_options(entry["data"], entry.get("data_options") or {})
    except ValueError as err:
        raise ValueError(f"{label}: {err}") from None


def apply_sources(
    entries: Mapping[str, dict], data_root: str | None, weights: Mapping[str | None, str], who: str
) -> None:
    """Put ``data_root`` and the ``--weights`` files into ``entries`` (in place); refuse what cannot fit.

    Raises:
        ValueError: ``data_root`` given but no entry reads a folder; a named weights file for a
            model no entry uses; a bare file for entries of different models; an entry that
            needs pretrained weights and got none.
    """
    if data_root is not None:
        readers = [e for e in entries.values() if "root" in data.loader_options(e["data"])]
        if not readers:
            raise ValueError(
                f"{who}: --data-root is for data read from a folder; this configuration "
                f"uses {sorted({e['data'] for e in entries.values()})} only"
            )
        for entry in readers:
            entry["data_options"] = {**(entry.get("data_options") or {}), "root": data_root}
    for model, file in weights.items():
        if model is None:
            takers = [e for e in entries.values() if (e.get("model_options") or {}).get("weights")]
            names = sorted({e["model"] for e in takers})
            if len(names) > 1:
                raise ValueError(
                    f"{who}: {', '.join(names)} start from different weights; give "
                    + " ".join(f"--weights {n}=FILE" for n in names)
                )
        else:
            takers = [e for e in entries.values() if e["model"] == model]
        if not takers:
            raise ValueError(
                f"{who}: --weights {model or file}: no model of this configuration "
                + (f"is {model!r}" if model else "starts from pretrained weights")
            )
        for entry in takers:
            entry["model_options"] = {**(entry.get("model_options") or {}), "weights": file}
    for label, entry in entries.items():
        if (entry.get("model_options") or {}).get("weights") == REQUIRED:
            raise ValueError(
                f"{who}: {label} starts from pretrained weights: give --weights "
                f"{entry['model']}=FILE (a local timm state dict; nothing is downloaded)"
            )


PRETRAINED = "pretrained:"  # init: pretrained:NAME, a recede pretrain --preset NAME checkpoint


def apply_init(
    entries: Mapping[str, dict], init: Mapping[str | None, str], skip: Sequence[str] | None, who: str
) -> None:
    """Put ``--init`` files (:func:`parse_weights`'s form: ``MODEL=FILE`` or a bare ``FILE``) and
    ``--init-skip`` patterns into ``entries`` (in place, the entries that take an ``init``);
    they replace the preset's ``init``/``init_skip``.

    Raises:
        ValueError: ``--init-skip`` without ``--init``; a file for a model no entry uses; a bare
            file for entries of different models.
    """
    if skip and not init:
        raise ValueError(f"{who}: --init-skip needs --init FILE")
    for model, file in init.items():
        takers = [e for e in entries.values() if model is None or e["model"] == model]
        names = sorted({e["model"] for e in takers})
        if model is None and len(names) > 1:
            raise ValueError(
                f"{who}: --init {file}: the entries are {', '.join(names)}, which cannot "
                "share one state dict; give " + " ".join(f"--init {n}=FILE" for n in names)
            )
        if not takers:
            raise ValueError(
                f"{who}: --init {model}={file}: no entry of this configuration is {model!r}"
                if model
                else f"{who}: --init {file}: no entry of this configuration takes --init"
            )
        for entry in takers:
            entry["init"] = file
            if skip is not None:
                entry["init_skip"] = list(skip)


def resolve_init(entries: Mapping[str, dict], who: str, folder: str | Path = "results/pretrained") -> None:
    """Replace every ``init: pretrained:NAME`` by the path of ``recede pretrain --preset NAME``'s
    checkpoint in ``folder``, training it (with BP, deterministically, a minute or less) unless
    it is cached there (:func:`recede.runs.pretrain.pretrain`)."""
    from recede.cli import build_parser
    from recede.runs import pretrain

    for label, entry in entries.items():
        init = entry.get("init")
        if not (isinstance(init, str) and init.startswith(PRETRAINED)):
            continue
        name = init[len(PRETRAINED) :]
        if name not in pretrain.PRESETS:
            raise ValueError(
                f"{who}: {label}: init {init!r}: no pretrain preset {name!r} "
                f"(one of {', '.join(sorted(pretrain.PRESETS))})"
            )
        values = pretrain.settings(build_parser().parse_args(["pretrain", "--preset", name]))
        entry["init"] = str(pretrain.pretrain(values, Path(folder))[0])


def check_sources(entries: Mapping[str, dict], who: str) -> None:
    """Read every entry's data and build every model once, its weights file loaded
    (:func:`recede.runs.preflight.load_data`, :func:`recede.runs.preflight.build_model`).

    Raises ``FileNotFoundError``/``ValueError`` prefixed with ``who`` and the entry's label.
    """
    from recede.runs import preflight

    tasks: dict[str, data.Task] = {}
    for label, entry in entries.items():
        options = entry.get("data_options") or {}
        key = repr((entry["data"], sorted(options.items())))
        try:
            if key not in tasks:
                tasks[key] = preflight.load_data(entry["data"], options)
            net = preflight.build_model(
                entry["model"], tasks[key], entry.get("model_options") or {}, torch.device("cpu")
            )
            if entry.get("init"):
                from recede.runs.pretrain import load_init

                load_init(net, entry["init"], entry.get("init_skip") or ())
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{who}: {label}: {err}") from None
        except ValueError as err:
            raise ValueError(f"{who}: {label}: {err}") from None
