"""recede.integrations.lightning: a LightningModule trained by the horizon engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning")

import recede
from recede.integrations.lightning import RecedeModule


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(4)), nn.Linear(8, 3))


def net_of(model: nn.Sequential) -> recede.BlockNet:
    torch.manual_seed(5)
    return recede.BlockNet(
        list(model)[:-1], [nn.Linear(8, 3) for _ in range(3)] + [model[-1]], nn.functional.cross_entropy
    )


def loader(n: int = 24) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=4)


def optimizers(parameters):
    opt = torch.optim.SGD(parameters, lr=0.1, momentum=0.9)
    return {
        "optimizer": opt,
        "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5), "interval": "step"},
    }


class Ours(RecedeModule):
    def configure_optimizers(self):
        return optimizers(self.parameters())


class Plain(L.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return optimizers(self.parameters())


def trainer(tmp_path=None, **options) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**(defaults | options))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_horizon_T_equals_automatic_optimisation_bitwise(accumulate: int) -> None:
    """Same weights after an epoch: clipping, accumulation and a per-step lr schedule included."""
    ours, plain = mlp(), mlp()
    module = Ours(ours, None, net=net_of(ours), accumulate=accumulate, clip_grad_norm=0.5)
    trainer(max_epochs=2).fit(module, loader())
    trainer(max_epochs=2, accumulate_grad_batches=accumulate, gradient_clip_val=0.5).fit(Plain(plain), loader())
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), plain.parameters()))
    assert module.trainer.global_step == 12 // accumulate


def test_bf16_mixed_at_horizon_T_matches_automatic_optimisation() -> None:
    ours, plain = mlp(), mlp()
    trainer(precision="bf16-mixed").fit(Ours(ours, None, net=net_of(ours)), loader())
    trainer(precision="bf16-mixed").fit(Plain(plain), loader())
    for p, q in zip(ours.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_horizon_1_logs_checkpoints_and_resumes(tmp_path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(model, epochs, ckpt=None):
        module = Ours(model, 1, net=net_of(model))
        run = trainer(
            max_epochs=epochs,
            enable_checkpointing=True,
            default_root_dir=str(tmp_path),
            callbacks=[ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{epoch}")],
        )
        run.fit(module, loader(), loader(8), ckpt_path=ckpt)
        return module, run

    whole, run = fit(mlp(), 2)
    assert "train_loss" in run.logged_metrics and "val_loss" in run.logged_metrics
    state = torch.load(tmp_path / "epoch=0.ckpt", weights_only=False)["state_dict"]
    assert any(k.startswith("recede_heads.") for k in state)  # the new heads are checkpointed
    resumed, _ = fit(mlp(7), 2, ckpt=str(tmp_path / "epoch=0.ckpt"))
    assert all(torch.equal(p, q) for p, q in zip(whole.parameters(), resumed.parameters()))
    assert not torch.equal(whole.recede_heads[0].weight, net_of(mlp()).heads[0].weight)  # h = 1 trains the heads


def test_refusals() -> None:
    with pytest.raises(ValueError, match="accumulate must be"):
        Ours(mlp(), 2, net=net_of(mlp()), accumulate=0)
    with pytest.raises(ValueError, match="a pair"):
        Ours(mlp(), 2, net=net_of(mlp())).batch_to_xy({"x": 1})
