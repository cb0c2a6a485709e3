"""ADMM training for micro-structured weight unification and pruning (``unified``).

The constrained problem ``min loss(W)  s.t.  W in S`` (S: every block unified, at most
``ceil(density * blocks)`` nonzero blocks per layer) is split with an auxiliary ``Z``
and a scaled dual ``U`` (Boyd et al.; seed 001):

* W-step: an epoch of SGD on ``loss(W) + rho/2 * ||W - Z + U||^2``;
* Z-step: ``Z = project(W + U)`` (:func:`model.unified.project`);
* U-step: ``U = U + W - Z``.

After the ADMM epochs ``W`` is hard-projected, the pruned blocks are masked, and the
network is fine-tuned with the unified format in the loop (blocks re-unified by the
codec on every forward pass, pruned blocks held at zero).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from quantrtl.model.numbers.formats import ActivationFormat
from quantrtl.model.training.net import fit, single_thread
from quantrtl.model.training.graph import INPUT, FloatGraph, apply, trace
from quantrtl.model.training.quantize import QuantLayer, QuantModel
from quantrtl.model.numbers.unified import UnifiedFormat, project
from quantrtl.model.training.procedures import TrainRequest, Trained, no_inq

__all__ = ["AdmmState", "admm_unify", "unified_quantize", "layer_sources", "procedure"]


@torch.no_grad()
def layer_sources(model: nn.Module, probe: torch.Tensor) -> dict[str, tuple | None]:
    """For each Linear layer reading a feature map, that map's (C, H, W): its unified
    blocks follow the map's stream order, as in the quantized model."""
    graph = model if isinstance(model, FloatGraph) else trace(model)
    vals, shapes = {INPUT: probe}, {}
    for n in graph.nodes:
        xs = [vals[i] for i in n.inputs]
        if n.kind == "linear":
            shapes[n.name] = tuple(xs[0].shape[1:]) if xs[0].dim() > 2 else None
        vals[n.name] = apply(n, xs)
    return shapes


@dataclass
class AdmmState:
    """Per layer: the module, its block source shape, Z and U."""

    layers: dict[str, nn.Module]
    sources: dict[str, tuple | None]
    block: int
    density: dict[str, float]  # per layer: fraction of blocks kept
    rho: float
    rho_growth: float = 1.0
    z: dict[str, torch.Tensor] = field(default_factory=dict)
    u: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)  # relative primal residual per iteration

    def project(self, name: str, w: torch.Tensor) -> torch.Tensor:
        src = self.sources.get(name)
        src = src if src is not None and len(src) == 3 else None
        p = project(w.detach().double().numpy(), self.block, self.density[name], src)
        return torch.from_numpy(p).to(w.dtype)

    def penalty(self, _model) -> torch.Tensor:
        return sum(0.5 * self.rho * ((m.weight - self.z[n] + self.u[n]) ** 2).sum() for n, m in self.layers.items())

    @torch.no_grad()
    def update(self) -> float:
        """Z- and U-steps; returns ``||W - Z|| / ||W||`` (the primal residual)."""
        num = den = 0.0
        for n, m in self.layers.items():
            w = m.weight
            self.z[n] = self.project(n, w + self.u[n])
            self.u[n] = self.u[n] + w - self.z[n]
            num += float(((w - self.z[n]) ** 2).sum())
            den += float((w ** 2).sum())
        r = (num / max(den, 1e-300)) ** 0.5
        self.history.append(r)
        self.rho *= self.rho_growth  # a growing penalty drives W onto the constraint set
        return r


def admm_unify(model: nn.Sequential, train, epochs: int, block: int, density: dict[str, float], rho: float = 0.05,
               lr: float = 1e-3, seed: int = 0, rho_growth: float = 1.0) -> tuple[AdmmState, dict[str, torch.Tensor]]:
    """ADMM epochs on the float ``model``, then the hard projection; returns the state and
    the masks of the kept weights (kept blocks)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    probe = torch.tensor(train.float_inputs()[:2])
    state = AdmmState(layers, layer_sources(model, probe), block, density, rho, rho_growth)
    with torch.no_grad():
        for n, m in layers.items():
            state.z[n] = state.project(n, m.weight)
            state.u[n] = torch.zeros_like(m.weight)
    for e in range(epochs):
        fit(model, train, 1, lr, 32, seed + e, penalty=state.penalty)
        state.update()
    masks = {}
    with torch.no_grad():
        for n, m in layers.items():
            m.weight.copy_(state.project(n, m.weight))
            masks[n] = m.weight != 0
    return state, masks


def unified_quantize(float_model: nn.Sequential, fmt: UnifiedFormat, train, admm_epochs: int, epochs: int,
                     density: dict[str, float], lr: float = 5e-4, seed: int = 0,
                     input_fmt: ActivationFormat | None = None) -> tuple[QuantModel, AdmmState]:
    """ADMM unification and pruning, then fine-tuning with the unified format in the loop."""
    with single_thread():
        state, masks = admm_unify(float_model, train, admm_epochs, fmt.block, density, seed=seed)
        qm = QuantModel(float_model, fmt, input_fmt)
        mods = dict(float_model.named_modules())

        @torch.no_grad()
        def hold(_model):
            for n, mask in masks.items():
                mods[n].weight.mul_(mask)

        qm.calibrate(train)
        if epochs > 0:
            fit(qm, train, epochs, lr, 32, seed, on_epoch=lambda m, e: e and m.calibrate(train), after_step=hold)
            qm.calibrate(train)
    qm.eval()
    return qm, state


def procedure(req: TrainRequest) -> Trained:
    """ADMM unification and block pruning (the plan is a block density), then masked
    fine-tuning."""
    no_inq(req)
    qm, state = unified_quantize(req.float_model, req.fmt, req.train, admm_epochs=req.epochs, epochs=req.epochs,
                                 density=req.plan, seed=req.seed, input_fmt=req.input_fmt)
    res = ", ".join(f"{r:.3f}" for r in state.history)
    return Trained(qm, (f"ADMM unification and pruning (block {req.fmt.block}, block density {req.plan_text}, "
                        f"{req.epochs} ADMM epochs, primal residual per epoch [{res}]) + {req.epochs} epochs "
                        f"fine-tuning"), req.plan)
