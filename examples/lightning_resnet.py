"""A torchvision ResNet-18 trained under Lightning at horizon 2 (of its 8 residual blocks).

Offline and CPU-only (well under a minute): scikit-learn's bundled 8×8 digits, upsampled to
32×32 RGB.  For fine-tuning, build the model with ``weights=...`` and a new ``fc``.
"""

import lightning as L
import torch
import torchvision
from sklearn.datasets import load_digits

from recede.integrations import memory_against_bp
from recede.integrations.lightning import RecedeModule

torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).div(16).unsqueeze(1)
x = torch.nn.functional.interpolate(x, size=32).expand(-1, 3, -1, -1).contiguous()
y = torch.tensor(digits.target)
train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:640], y[:640]), batch_size=32, shuffle=True)
val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[1200:], y[1200:]), batch_size=128)


class Digits(RecedeModule):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.02, momentum=0.9)


module = Digits(torchvision.models.resnet18(num_classes=10), horizon=2, clip_grad_norm=5.0)
trainer = L.Trainer(
    max_epochs=2,
    accelerator="cpu",
    logger=False,  # precision="bf16-mixed" works too
    enable_checkpointing=False,
    enable_model_summary=False,
    enable_progress_bar=False,
)
trainer.fit(module, train, val)
print(memory_against_bp(module.recede_net, x[:32].clone(), y[:32], horizon=2))
with torch.no_grad():
    accuracy = (module.eval()(x[1200:]).argmax(1) == y[1200:]).float().mean()
print(f"val loss {float(trainer.callback_metrics['val_loss']):.3f}, val accuracy {float(accuracy):.3f}")
