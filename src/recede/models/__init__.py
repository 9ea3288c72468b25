"""Model registry: ``build(name, **options) -> BlockNet``.

Each entry is a function that returns a :class:`~recede.core.blocks.BlockNet` whose blocks are the
units the horizon counts.  Register a new one with :func:`register`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

from recede.core.blocks import BlockNet
from recede.data import Task
from recede.keywords import check_keywords

_REGISTRY: dict[str, Callable[..., BlockNet]] = {}


def register(name: str) -> Callable[[Callable[..., BlockNet]], Callable[..., BlockNet]]:
    """Decorator adding a builder to the registry under ``name``."""

    def add(builder: Callable[..., BlockNet]) -> Callable[..., BlockNet]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return add


def available() -> list[str]:
    """Names of the registered models."""
    return sorted(_REGISTRY)


def _builder(name: str) -> Callable[..., BlockNet]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def check_options(name: str, options: Mapping[str, object]) -> None:
    """``ValueError`` naming the problem unless ``name`` is registered and ``options`` fit its
    builder's parameters and annotations (:func:`recede.keywords.check_keywords`), without
    building it."""
    check_keywords(_builder(name), dict(options), f"model {name!r}")


def build(name: str, task: Task | None = None, **options: object) -> BlockNet:
    """Build the registered model ``name``.

    With a ``task``, the input and output sizes the builder accepts (``in_dim``, ``out_dim``,
    ``in_channels``, ``num_classes``; for a language-model task ``vocab_size`` and the context
    ``n_positions``) default to the task's, and a builder with a ``loss`` option trains a
    classification task with cross-entropy; explicit ``options`` win.  Options are checked
    against the builder's parameters and annotations first (:func:`recede.keywords.check_keywords`):
    an unknown name or a value of the wrong type is a ``ValueError`` naming it.
    """
    builder = _builder(name)
    accepted = inspect.signature(builder).parameters
    if task is not None:
        sizes: dict[str, object] = {
            "in_dim": task.input_shape[0],
            "in_channels": task.input_shape[0],
            "out_dim": task.output_dim,
            "num_classes": task.output_dim,
        }
        if task.kind == "language-model":
            sizes |= {"vocab_size": task.output_dim, "n_positions": task.input_shape[0]}
        if task.kind == "classification":
            sizes["loss"] = "cross-entropy"
        options = {**{k: v for k, v in sizes.items() if k in accepted}, **options}
    check_keywords(builder, options, f"model {name!r}")
    return builder(**options)


from recede.models import language, mlp, resnet, sequential, timm_models  # noqa: E402,F401  (registration side effect)
