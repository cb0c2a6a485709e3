"""Fine-grained magnitude pruning (Deep Compression): keep the largest |w| of each layer.

``magnitude_masks(model, density)`` keeps ``ceil(density · n)`` weights of every Conv2d and
Linear (ties broken by index, deterministic); ``apply_masks`` zeroes the rest.  Retraining
and fine-tuning call ``apply_masks`` after every optimizer step, so pruned weights stay zero.

A density is one fraction for every layer or a per-layer plan (:func:`parse_density`):
``"conv1=0.6,fc=0.12,*=0.3"``; the keys ``first`` and ``last`` name the first and the last
weight layer (Deep Compression: the first convolution is the most sensitive, the fully
connected layers the most redundant).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from quantrtl.util.errors import OptionError

__all__ = ["parse_density", "resolve_density", "magnitude_masks", "apply_masks", "densities"]


def parse_density(spec) -> dict[str, float]:
    """``0.3`` / ``"0.3"`` → ``{"*": 0.3}``; ``"first=0.6,*=0.3"`` → that mapping (validated)."""
    if isinstance(spec, bool) or not isinstance(spec, (dict, int, float, str)):
        raise OptionError("density", f"must be a fraction in (0, 1] or a plan such as 'conv1=0.6,*=0.3', got "
                                     f"{type(spec).__name__} {spec!r}")
    if isinstance(spec, dict):
        plan = dict(spec)
    elif isinstance(spec, (int, float)):
        plan = {"*": float(spec)}
    else:
        text = str(spec).strip()
        plan = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                key, value = "*", key
            key = key.strip()
            if key in plan:
                raise OptionError("density", f"{text!r} gives {'every layer' if key == '*' else repr(key)} twice")
            try:
                plan[key] = float(value)
            except ValueError:
                raise OptionError("density", f"{text!r}: {value.strip()!r} is not a number (use 0.3 or "
                                 f"layer=0.3,...,*=0.3)") from None
    for key, v in plan.items():
        if not (isinstance(v, float) and 0.0 < v <= 1.0):
            where = "every layer" if key == "*" else f"layer {key!r}"
            raise OptionError("density", f"must be in (0, 1], got {v:g} for {where}")
    return plan


def resolve_density(spec, names: list[str]) -> dict[str, float]:
    """Per-layer densities of the weight layers ``names`` (in order) under ``spec``."""
    plan = parse_density(spec)
    unknown = set(plan) - set(names) - {"*", "first", "last"}
    if unknown:
        raise OptionError("density", f"names unknown layers {sorted(unknown)}; weight layers are {names}")
    out = {}
    for i, n in enumerate(names):
        pos = "first" if i == 0 else "last" if i == len(names) - 1 else None
        out[n] = plan.get(n, plan.get(pos, plan.get("*", 1.0)) if pos else plan.get("*", 1.0))
    return out


def weight_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def magnitude_masks(model: nn.Module, density) -> dict[str, torch.Tensor]:
    per_layer = resolve_density(density, weight_layers(model))
    masks = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach().reshape(-1)
            keep = max(1, math.ceil(per_layer[name] * w.numel()))
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
