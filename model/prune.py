"""Fine-grained magnitude pruning (Deep Compression): keep the largest |w| of each layer.

``magnitude_masks(model, density)`` keeps ``ceil(density · n)`` weights of every Conv2d and
Linear (ties broken by index, deterministic); ``apply_masks`` zeroes the rest.  Fine-tuning
calls ``apply_masks`` after every optimizer step, so pruned weights stay zero.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def magnitude_masks(model: nn.Module, density: float) -> dict[str, torch.Tensor]:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    masks = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach().reshape(-1)
            keep = max(1, math.ceil(density * w.numel()))
            order = torch.argsort(w.abs(), descending=True, stable=True)
            mask = torch.zeros_like(w, dtype=torch.bool)
            mask[order[:keep]] = True
            masks[name] = mask.reshape(m.weight.shape)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        modules[name].weight.mul_(mask)


def densities(model: nn.Module) -> dict[str, float]:
    """Fraction of nonzero weights per Conv2d/Linear layer."""
    return {name: float((m.weight != 0).float().mean()) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}
