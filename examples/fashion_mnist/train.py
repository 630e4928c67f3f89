"""Train the demo's ResNet-8 on Fashion-MNIST and write the files `make demo` uses.

    python examples/fashion_mnist/train.py      # ~3 min on 2 cores

Writes, next to this script:
  resnet8_fmnist.pt   state_dict (load with torch.load(..., weights_only=True))
  calibration/fashion-mnist-samples.npz  x: 512 training images, float32 [N,1,28,28] in [0,1] (calibration)
                      val_x / val_y: 1,000 test images and labels (accuracy check)
Deterministic on one machine (seeded, deterministic algorithms, fixed thread count).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data import load_split  # noqa: E402
from model import ResNet8  # noqa: E402

EPOCHS = int(os.environ.get("EPOCHS", 3))
BATCH = 128


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    xtr, ytr = load_split("train")
    xte, yte = load_split("t10k")
    Xtr = torch.from_numpy(xtr.astype(np.float32) / 255.0)
    Ytr = torch.from_numpy(ytr.astype(np.int64))
    Xte = torch.from_numpy(xte.astype(np.float32) / 255.0)
    Yte = torch.from_numpy(yte.astype(np.int64))

    model = ResNet8()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = EPOCHS * (len(Xtr) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.2, total_steps=steps)
    g = torch.Generator().manual_seed(0)
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(len(Xtr) // BATCH):
            idx = perm[i * BATCH:(i + 1) * BATCH]
            x = Xtr[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss = F.cross_entropy(model(x), Ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate(model, Xte, Yte)
        print(f"epoch {epoch}: loss {loss.item():.3f}  test accuracy {acc:.4f}  ({time.time() - t0:.0f}s)", flush=True)

    torch.save(model.state_dict(), HERE / "resnet8_fmnist.pt")
    rng = np.random.default_rng(0)
    calib = rng.choice(len(Xtr), 512, replace=False)
    samples = HERE.parents[1] / "calibration" / "fashion-mnist-samples.npz"
    np.savez_compressed(samples, x=Xtr[calib].numpy(), val_x=Xte[:1000].numpy(), val_y=yte[:1000])
    print(f"wrote {HERE / 'resnet8_fmnist.pt'} and {samples}")


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item() for i in range(0, len(x), 1000))
    return correct / len(x)


if __name__ == "__main__":
    main()
