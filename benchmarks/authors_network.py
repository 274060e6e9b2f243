"""Build and time the authors' MCKD network (billhhh/MCKD, ``DualNet.py``) on the CPU, beside ours.

The authors' code is not part of mckd-lab: the user names a checkout of it (``--authors DIR``). Their code
calls ``.cuda()`` and ``device='cuda'`` unconditionally; :func:`cpu_shims` redirects those to the CPU for the
duration of the build and the step, without editing their files. Their ASPP applies instance norm to the
1x1x1 global-pool branch, which current PyTorch refuses in training (METHOD.md); for timing we swap that one
module for an identity on the built instance (it has no parameters that count: affine 2x256 = 512 are kept in
the parameter count, which is taken before the swap).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
import types
from pathlib import Path

import torch


@contextlib.contextmanager
def cpu_shims():
    """Make ``.cuda()`` and ``device='cuda'`` in the authors' code land on the CPU."""
    saved = (torch.nn.Module.cuda, torch.Tensor.cuda, torch.zeros_like, torch.tensor)

    def _drop_cuda(fn):
        def wrapped(*args, **kwargs):
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return fn(*args, **kwargs)

        return wrapped

    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.zeros_like = _drop_cuda(saved[2])
    torch.tensor = _drop_cuda(saved[3])
    try:
        yield
    finally:
        torch.nn.Module.cuda, torch.Tensor.cuda, torch.zeros_like, torch.tensor = saved


def build_authors_network(authors_dir: Path):
    """The authors' DualNet as their train.py builds it for BraTS (IN, LeakyReLU, weight std, 3 classes)."""
    if not (authors_dir / "DualNet.py").exists():
        raise FileNotFoundError(
            f"{authors_dir} has no DualNet.py: pass a checkout of billhhh/MCKD with --authors"
        )
    sys.path.insert(0, str(authors_dir))
    with cpu_shims():
        dualnet = importlib.import_module("DualNet")
        args = types.SimpleNamespace()
        net = dualnet.DualNet(args, norm_cfg="IN", activation_cfg="LeakyReLU", num_classes=3, weight_std=True)
    return net


def count_parameters(net: torch.nn.Module, exclude: str = "multihead_attn") -> int:
    return sum(p.numel() for n, p in net.named_parameters() if exclude not in n)


def time_authors_step(net, size=(32, 64, 64), batch=2, steps=3, warmup=1) -> float:
    """Seconds per SGD step (Dice + BCE + KD, all modalities present) of the authors' network."""
    net.shared_enc.aspp.branch5_norm = torch.nn.Identity()  # refused by PyTorch in training (see module doc)
    params = [p for n, p in net.named_parameters() if "kd_weights" not in n]
    opt = torch.optim.SGD(params, lr=1e-2, momentum=0.99, nesterov=True)
    x = torch.randn(batch, 4, *size)
    y = (torch.rand(batch, 3, *size) > 0.9).float()
    times = []
    with cpu_shims():
        net.train()
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            opt.zero_grad()
            logits, _, kd = net(x, mode="0,1,2,3")
            prob = torch.sigmoid(logits)
            dice = 1 - (2 * (prob * y).sum() + 1) / (prob.sum() + y.sum() + 1)
            loss = dice + torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 0.1 * kd
            loss.backward()
            opt.step()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return sum(times) / len(times)
