"""A tiny in-memory segmentation task with a learnable pattern (tests only, no files).

Each case is a ball: WT = the ball, TC = the inner 70 %, ET = the TC shell outside 40 %. FLAIR and T2 show
WT, T1ce shows ET (bright) and the core (dark), T1 shows the core faintly; plus Gaussian noise. Items follow
the batch contract.
"""

import torch


class ToyBalls(torch.utils.data.Dataset):
    def __init__(self, cases: int = 8, size: int = 16, seed: int = 0, noise: float = 0.3):
        g = torch.Generator().manual_seed(seed)
        axis = torch.arange(size, dtype=torch.float32)
        zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
        self.items = []
        for _ in range(cases):
            centre = size / 2 + (torch.rand(3, generator=g) - 0.5) * size / 3
            radius = size * (0.25 + 0.1 * torch.rand((), generator=g))
            dist = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2).sqrt()
            wt, tc = dist <= radius, dist <= 0.7 * radius
            et = tc & (dist > 0.4 * radius)
            image = torch.stack([wt * 1.0, -0.5 * tc, 1.5 * et - 0.7 * (tc & ~et), 0.8 * wt]).float()
            image = image + noise * torch.randn(image.shape, generator=g)
            target = torch.stack([et, wt, tc]).float()
            self.items.append({"image": image, "present": torch.ones(4, dtype=torch.bool), "target": target})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return {k: v.clone() for k, v in self.items[i].items()}
