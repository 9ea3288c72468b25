"""Data registry: ``load(name, **options) -> Task``.

A :class:`Task` is a train and a test ``TensorDataset``/``Dataset`` plus what a model needs to
know about them.  Everything registered here runs offline: the synthetic sets of Paper A
App. D (M1, M2), scikit-learn's bundled digits, text for language models (the Python standard
library's sources by default), and loaders for folders the user supplies.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from recede.keywords import check_keywords


@dataclass
class Task:
    """A dataset split with its shape facts."""

    name: str
    train: Dataset
    test: Dataset
    kind: str  # "regression", "classification" or "language-model"
    input_shape: tuple[int, ...]
    output_dim: int  # regression targets, number of classes, or vocabulary size
    info: dict[str, Any] = field(default_factory=dict)  # provenance written with results

    def __post_init__(self) -> None:
        if len(self.train) == 0:  # type: ignore[arg-type]  # torch's Dataset type has no __len__; ours all do
            raise ValueError(f"dataset {self.name!r} has an empty training split")

    def metrics(self, loss: float) -> dict[str, float]:
        """What a mean test loss means for this task: for a language model (loss in nats per
        token), bits per byte ``loss / ln 2 / bytes_per_token`` and perplexity ``e^loss``."""
        if self.kind != "language-model":
            return {}
        return {
            "bits/byte": loss / math.log(2) / self.info["bytes_per_token"],
            "perplexity": math.exp(min(loss, 700.0)),
        }


_REGISTRY: dict[str, Callable[..., Task]] = {}


def register(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator adding a dataset loader to the registry under ``name``."""

    def add(loader: Callable[..., Task]) -> Callable[..., Task]:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is registered twice")
        _REGISTRY[name] = loader
        return loader

    return add


def available() -> list[str]:
    """Names of the registered datasets."""
    return sorted(_REGISTRY)


def _loader(name: str) -> Callable[..., Task]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def loader_options(name: str) -> list[str]:
    """The options the loader ``name`` takes; ``ValueError`` if no such dataset is registered."""
    return list(inspect.signature(_loader(name)).parameters)


def check_options(name: str, options: Mapping[str, object]) -> None:
    """``ValueError`` naming the problem unless ``name`` is registered and ``options`` fit its
    loader's parameters and annotations (:func:`recede.keywords.check_keywords`)."""
    check_keywords(_loader(name), dict(options), f"dataset {name!r}")


def load(name: str, **options: object) -> Task:
    """Load the registered dataset ``name``, its ``options`` checked first (:func:`check_options`)."""
    check_options(name, options)
    return _REGISTRY[name](**options)


from recede.data import images, synthetic, text  # noqa: E402,F401  (registration side effect)
