"""Deep Compression's weight sharing with trained centroids (``kmeansN``).

After pruning, every layer's nonzero weights are clustered once (k-means with linear
initialisation, :func:`model.codebook.kmeans_linear`); the assignment is then fixed and
the centroids are trained: each weight is ``centroid[assign]``, so the gradient of a
centroid is the sum of its members' gradients (Han et al., §3.3).  The forward pass
uses the centroids quantized to the integer codebook (STE to the float centroids), so
fine-tuning sees exactly the exported weights.  Pruned weights stay zero.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from quantrtl.model.numbers.codebook import KMeansFormat, kmeans_linear
from quantrtl.model.numbers.formats import ActivationFormat, Quantized
from quantrtl.model.training.net import fit, single_thread
from quantrtl.model.training.quantize import QuantLayer, QuantModel, straight_through
from quantrtl.model.training.procedures import TrainRequest, Trained, no_inq, prune_and_retrain

__all__ = ["SharedWeights", "kmeans_quantize", "procedure"]


class SharedWeights(nn.Module):
    """A layer's weights as trainable centroids, a fixed assignment and a pruning mask."""

    def __init__(self, weight: torch.Tensor, fmt: KMeansFormat):
        super().__init__()
        w = weight.detach().cpu().double().numpy()
        mask = w != 0
        c, assign = kmeans_linear(w[mask], fmt.centroids)
        full = np.zeros(w.shape, dtype=np.int64)
        full[mask] = assign
        self.fmt = fmt
        self.centroids = nn.Parameter(torch.tensor(c, dtype=weight.dtype))
        self.register_buffer("assign", torch.from_numpy(full))
        self.register_buffer("mask", torch.from_numpy(mask))

    def fitted(self) -> KMeansFormat:
        return self.fmt.from_centroids(self.centroids.detach().double().numpy())

    def forward(self):
        f = self.fitted()
        real = torch.tensor(f.scale * np.asarray(f.codebook[1:], dtype=np.float64), dtype=self.centroids.dtype)
        w = straight_through(self.centroids[self.assign], real[self.assign]) * self.mask
        return w, np.full(w.shape[0], f.scale)

    def quantized(self) -> Quantized:
        f = self.fitted()
        real = f.scale * np.asarray(f.codebook[1:], dtype=np.float64)
        return f.encode(np.where(self.mask.numpy(), real[self.assign.numpy()], 0.0))


def kmeans_quantize(float_model: nn.Sequential, fmt: KMeansFormat, train, epochs: int, lr: float = 5e-4,
                    seed: int = 0, input_fmt: ActivationFormat | None = None) -> QuantModel:
    """Cluster every (already pruned) layer once, then fine-tune the centroids ``epochs``."""
    qm = QuantModel(float_model, fmt, input_fmt)
    with single_thread():
        for step in qm.steps.values():
            if isinstance(step, QuantLayer):
                step.shared = SharedWeights(step.module.weight, fmt)
        qm.calibrate(train)
        if epochs > 0:
            fit(qm, train, epochs, lr, 32, seed, on_epoch=lambda m, e: e and m.calibrate(train))
            qm.calibrate(train)
    qm.eval()
    return qm


def procedure(req: TrainRequest) -> Trained:
    """Deep Compression: pruning and retraining, k-means clustering once per layer, then
    fine-tuning of the centroids by the summed gradients of their members."""
    no_inq(req)
    _, note = prune_and_retrain(req)
    qm = kmeans_quantize(req.float_model, req.fmt, req.train, epochs=req.epochs, lr=req.fmt.finetune_lr,
                         seed=req.seed, input_fmt=req.input_fmt)
    return Trained(qm, note + f"k-means (linear init), {req.epochs} epochs centroid fine-tuning", req.plan)
