"""Lightning with a receding horizon: :class:`RecedeModule`, a ``LightningModule`` that trains
its model with the horizon engine under manual optimisation.

>>> class Classifier(RecedeModule):
...     def configure_optimizers(self):
...         return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
>>> module = Classifier(model, horizon=2)            # recede.wrap(model) inside
>>> L.Trainer(max_epochs=3, precision="bf16-mixed").fit(module, train_loader, val_loader)

``training_step`` runs ``engine.backward(x, y)`` on each batch ``(x, y)`` (override
:meth:`RecedeModule.batch_to_xy` for other batches) and steps the optimizer itself, so Lightning's
own features work as follows:

* **precision plugins** — the step runs inside the plugin's autocast (``bf16-mixed``,
  ``16-mixed``), the fp16 GradScaler of ``16-mixed`` scales every loss and
  ``optimizer.step()`` unscales and skips overflowed steps, as in automatic optimisation;
* **gradient accumulation and clipping** — give them to the module (``accumulate=``,
  ``clip_grad_norm=``): Lightning refuses ``accumulate_grad_batches`` and
  ``gradient_clip_val`` with manual optimisation.  Each loss is divided by ``accumulate`` as
  automatic optimisation divides it, so at h = T the weights equal automatic optimisation's
  bitwise (fp32 CPU, ``tests/test_integrations_lightning.py``);
* **lr schedulers** from ``configure_optimizers`` are stepped once per optimizer step
  (``interval="step"``) or per epoch;
* **logging** — ``train_loss`` (L(x_T)) every step, ``val_loss`` in validation;
* **checkpointing** — the model, the new heads (``module.recede_heads``), optimizer and
  schedulers are in Lightning's checkpoints; ``fit(ckpt_path=...)`` resumes;
* **refused** in one line: strategies other than one device (the engine's gradients bypass
  DDP's hooks; use :mod:`recede.integrations.accelerate` or ``recede train --nproc`` for data
  parallel), and several optimizers, ``ReduceLROnPlateau`` (step it yourself).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from recede.core.blocks import BlockNet, LossFn
from recede.integrations import build_method, new_head_modules, weighted_backward
from recede.wrap import wrap


class RecedeModule(L.LightningModule):
    """A ``LightningModule`` training ``model`` with horizon h (see the module docstring).

    Subclasses define ``configure_optimizers`` (on ``self.parameters()``: the model and the new
    heads) and may override :meth:`batch_to_xy`.

    Args:
        model: a model :func:`recede.wrap` accepts, or any module with ``net=`` given.
        horizon: h in [1, T] (``None``: T, exact BP).
        net: a BlockNet of ``model``'s modules to use instead of ``recede.wrap(model)``.
        blocks, head, loss_fn: as in :func:`recede.wrap`.
        bp_modified: options of :class:`recede.BPModified` (``period``, ``offset_samples``,
            ``micro_batch``, ``data``...).
        accumulate: batches per optimizer step.
        clip_grad_norm: clip the gradients' total norm to this before each step.
    """

    recede_net: BlockNet  # set in __dict__ by __init__, so that it is not a submodule

    def __init__(
        self,
        model: nn.Module,
        horizon: int | None = None,
        *,
        net: BlockNet | None = None,
        blocks: int | None = None,
        head: Any = "auto",
        loss_fn: LossFn | None = None,
        bp_modified: dict[str, Any] | None = None,
        accumulate: int = 1,
        clip_grad_norm: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
            raise ValueError(f"accumulate must be a positive integer, got {accumulate!r}")
        self.automatic_optimization = False
        self.model = model
        net = net if net is not None else wrap(model, blocks=blocks, head=head, loss_fn=loss_fn)
        self.recede_heads = nn.ModuleList(new_head_modules(net, model))
        self.__dict__["recede_net"] = net  # not a submodule: its modules are model's and recede_heads'
        self.recede_method = build_method(net, horizon, bp_modified)
        self.accumulate, self.clip_grad_norm = accumulate, clip_grad_norm

    def forward(self, x: Any) -> Any:
        """The final prediction ``head_T(x_T)`` of the wrapped model."""
        return self.recede_net(x)

    def batch_to_xy(self, batch: Any) -> tuple[Any, Any]:
        """``(x, y)`` of a batch; the default takes a pair."""
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(
                f"RecedeModule: a batch must be a pair (x, y), got a {type(batch).__name__}; override batch_to_xy"
            )
        return batch[0], batch[1]

    def on_fit_start(self) -> None:
        strategy = type(self.trainer.strategy).__name__
        if strategy != "SingleDeviceStrategy":
            raise ValueError(
                f"RecedeModule: the {strategy} strategy is not supported (the engine's "
                "gradients bypass its hooks); train on one device"
            )
        if any(config.reduce_on_plateau for config in self.trainer.lr_scheduler_configs):
            raise ValueError(
                "RecedeModule: ReduceLROnPlateau is not stepped for you; step it in "
                "on_validation_epoch_end with the metric it monitors"
            )
        if self.trainer.accumulate_grad_batches != 1:  # Lightning refuses this itself; say what to do
            raise ValueError("RecedeModule: pass accumulate= to the module, not accumulate_grad_batches")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One batch of g_h into ``.grad``; an optimizer step every ``accumulate`` batches."""
        opt = self.optimizers()
        if isinstance(opt, list):
            raise ValueError("RecedeModule trains with one optimizer; configure_optimizers returned several")
        x, y = self.batch_to_xy(batch)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        loss = weighted_backward(self.recede_method, x, y, self.accumulate, scaler)
        if (batch_idx + 1) % self.accumulate == 0 or self.trainer.is_last_batch:
            opt.step()  # the precision plugin unscales, calls on_before_optimizer_step (clipping), steps
            opt.zero_grad()
            for config in self.trainer.lr_scheduler_configs:
                if config.interval == "step" and (self.trainer.global_step % config.frequency == 0):
                    config.scheduler.step()  # type: ignore[call-arg]  # ReduceLROnPlateau is refused in on_fit_start
        loss_t = torch.tensor(loss)
        self.log("train_loss", loss_t, prog_bar=True)
        return loss_t

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip to ``clip_grad_norm`` (after the precision plugin has unscaled fp16 gradients)."""
        if self.clip_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.clip_grad_norm, gradient_clip_algorithm="norm")

    def on_train_epoch_end(self) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == "epoch" and (self.current_epoch + 1) % config.frequency == 0:
                config.scheduler.step()  # type: ignore[call-arg]

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """``val_loss``: the model's own loss L(x_T)."""
        x, y = self.batch_to_xy(batch)
        loss = self.recede_net.loss(x, y)
        self.log("val_loss", loss, prog_bar=True)
        return loss
