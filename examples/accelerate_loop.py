"""An accelerate training loop at horizon 2 with gradient accumulation and clipping.

Offline and CPU-only: a small torchvision ViT (6 encoder blocks) on scikit-learn's bundled
digits upsampled to 32×32.  Launch with ``accelerate launch`` or ``torchrun`` for data parallel.
"""

import torch
import torchvision
from accelerate import Accelerator
from sklearn.datasets import load_digits

import recede
from recede.integrations import memory_against_bp
from recede.integrations.accelerate import AcceleratedEngine

torch.manual_seed(0)
digits = load_digits()
x = torch.nn.functional.interpolate(torch.tensor(digits.images, dtype=torch.float32).div(16).unsqueeze(1), size=32)
x, y = x.expand(-1, 3, -1, -1).contiguous(), torch.tensor(digits.target)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:640], y[:640]), batch_size=32, shuffle=True)

accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)  # mixed_precision="bf16" works too
vit = torchvision.models.VisionTransformer(
    image_size=32, patch_size=4, num_layers=6, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10
)
net = recede.wrap(vit)  # before prepare: its new heads are trained too
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
net, opt, loader = accelerator.prepare(net, opt, loader)
engine = AcceleratedEngine(accelerator, net, horizon=2)
for epoch in range(3):
    for x_batch, y_batch in loader:
        with accelerator.accumulate(net):
            loss = engine.backward(x_batch, y_batch)  # in place of accelerator.backward(loss)
            accelerator.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            opt.zero_grad()
    accelerator.print(f"epoch {epoch}: last loss {loss:.3f}")

net.eval()
with torch.no_grad():
    accuracy = (net(x[1200:]).argmax(1) == y[1200:]).float().mean()
accelerator.print(f"test accuracy {float(accuracy):.3f}")
accelerator.print(memory_against_bp(accelerator.unwrap_model(net), x[:32].clone(), y[:32], horizon=2))
