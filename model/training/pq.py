"""Quantized CNN's training of product quantization (``pqN``; Wu et al., CVPR 2016).

Layer by layer, in the network's order (so a layer is fitted to the inputs that the
already quantized layers before it produce):

1. **k-means** per subspace on the weight sub-vectors (``PQFormat.fit``);
2. **error correction** on the layer's *response*: with ``X`` the layer's inputs on
   calibration data (conv: every patch), minimize ``||(W - Ŵ) X||²`` by alternating
   (a) the codewords by least squares with the assignments fixed (all codewords of the
   layer jointly: one linear system) and (b) each sub-vector's assignment with the
   codewords and the other sub-vectors fixed (the cross terms through ``X Xᵀ`` included),
   a few rounds; the relative response error before and after is reported per layer;
3. **fine-tuning** of the codewords with the assignments fixed (every weight of a
   codeword passes its gradient to it), with the integer (8-bit) codewords in the
   forward pass (straight-through), so training sees exactly the exported weights.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from quantrtl.model.numbers.formats import Quantized
from quantrtl.model.numbers.pq import PQFormat
from quantrtl.model.training.net import batches, fit, single_thread
from quantrtl.model.training.procedures import TrainRequest, Trained, no_inq, prune_and_retrain
from quantrtl.model.training.quantize import QuantLayer, QuantModel, straight_through

__all__ = ["PQWeights", "response_gram", "response_error", "correct", "procedure", "CORRECTION_ROUNDS"]

#: Rounds of (codewords by least squares, assignments) in the error-correcting step.
CORRECTION_ROUNDS = 4


class PQWeights(nn.Module):
    """A layer's weights as trainable codebooks (M, K, sub) and fixed indices (cout, M, P)."""

    def __init__(self, fmt: PQFormat, index: np.ndarray, shape: tuple, dtype=torch.float32):
        super().__init__()
        self.fmt, self.shape = fmt, tuple(shape)
        self.books = nn.Parameter(torch.tensor(fmt.scale * fmt.codebook_array.astype(np.float64), dtype=dtype))
        self.register_buffer("index", torch.from_numpy(np.asarray(index, dtype=np.int64)))

    def fitted(self) -> PQFormat:
        return self.fmt.from_codewords(self.books.detach().double().numpy())

    def _gather(self, books: torch.Tensor) -> torch.Tensor:
        m = torch.arange(books.shape[0])[None, :, None]
        v = books[m, self.index]  # (cout, M, P, sub)
        cout, M, P, sub = v.shape
        return v.permute(0, 1, 3, 2).reshape(self.shape)

    def forward(self):
        f = self.fitted()
        real = torch.tensor(f.scale * f.codebook_array.astype(np.float64), dtype=self.books.dtype)
        return straight_through(self._gather(self.books), self._gather(real)), np.full(self.shape[0], f.scale)

    def quantized(self) -> Quantized:
        f = self.fitted()
        codes = f.codes_of(self.index.numpy(), self.shape)
        return Quantized(codes=codes, values=f.decode(codes), scale=np.full(self.shape[0], f.scale), format=f)


def _elements(fmt: PQFormat, shape: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per weight of a row in PyTorch's flattened order ``c * P + p``: its subspace, its
    place in the sub-vector and its position; and P."""
    c, p = fmt.channels(shape)
    ch, pos = np.divmod(np.arange(c * p), p)
    return ch // fmt.sub, ch % fmt.sub, pos, p


def response_gram(x: torch.Tensor, module: nn.Module) -> np.ndarray:
    """``X Xᵀ`` (fan-in × fan-in, PyTorch's weight order) of a layer's inputs ``x``, one per
    group of a grouped conv (``(groups, F, F)``): every patch of a conv (padding reads the
    real zero), every row of a linear layer."""
    groups = module.groups if isinstance(module, nn.Conv2d) else 1
    if isinstance(module, nn.Conv2d):
        cols = nn.functional.unfold(x, module.kernel_size, padding=module.padding, stride=module.stride)
        cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        cols = x.flatten(1)
    cols = cols.double().reshape(len(cols), groups, -1)
    return torch.einsum("ngi,ngj->gij", cols, cols).numpy()


def _row_grams(gram: np.ndarray, rows: int) -> np.ndarray:
    """Each output channel's group's ``X Xᵀ`` (rows, F, F): the groups own equal slices."""
    return np.repeat(gram, rows // len(gram), axis=0)


def response_error(w: np.ndarray, wq: np.ndarray, gram: np.ndarray) -> float:
    """``||(W − Ŵ) X||² / ||W X||²`` from the groups' ``X Xᵀ`` (:func:`response_gram`)."""
    g = _row_grams(gram, w.shape[0])
    w2, d2 = w.reshape(w.shape[0], -1), (w - wq).reshape(w.shape[0], -1)
    total = float(np.einsum("ti,tij,tj->", w2, g, w2))
    return float(np.einsum("ti,tij,tj->", d2, g, d2)) / total if total > 0 else 0.0


def _weights(fmt: PQFormat, index: np.ndarray, shape: tuple) -> np.ndarray:
    codes = fmt.codes_of(index, shape)
    return fmt.scale * fmt.decode(codes).astype(np.float64)


def _least_squares(w2: np.ndarray, gram: np.ndarray, fmt: PQFormat, index: np.ndarray, shape: tuple) -> np.ndarray:
    """The real codewords (M, K, sub) minimizing the response error for fixed ``index``."""
    M, K, sub = fmt.subspaces, fmt.codewords, fmt.sub
    sub_of, j_of, pos_of, _ = _elements(fmt, shape)
    n = M * K * sub
    H, rhs = np.zeros((n, n)), np.zeros(n)
    grams = _row_grams(gram, w2.shape[0])
    for t in range(w2.shape[0]):
        idx = (sub_of * K + index[t, sub_of, pos_of]) * sub + j_of
        np.add.at(H, (idx[:, None], idx[None, :]), grams[t])
        np.add.at(rhs, idx, w2[t] @ grams[t])
    current = fmt.scale * fmt.codebook_array.astype(np.float64).ravel()
    lam = 1e-6 * max(float(np.trace(H)) / n, 1e-12)
    return np.linalg.solve(H + lam * np.eye(n), rhs + lam * current).reshape(M, K, sub)


def _reassign(w2: np.ndarray, gram: np.ndarray, fmt: PQFormat, index: np.ndarray, shape: tuple) -> np.ndarray:
    """Each sub-vector's codeword by the response error, the others held (one sweep)."""
    index = index.copy()
    real = fmt.scale * fmt.codebook_array.astype(np.float64)
    sub_of, _, pos_of, _ = _elements(fmt, shape)
    delta = w2 - _weights(fmt, index, shape).reshape(w2.shape)
    per = w2.shape[0] // len(gram)
    for m in range(fmt.subspaces):
        for p in range(index.shape[2]):
            blk = np.flatnonzero((sub_of == m) & (pos_of == p))  # in sub-vector order
            for grp, gr in enumerate(gram):  # the output channels of each group see its inputs
                rows = slice(grp * per, (grp + 1) * per)
                g_bb = gr[np.ix_(blk, blk)]
                cross = delta[rows] @ gr[:, blk] - delta[rows, blk] @ g_bb  # (T, sub): Σ_{B,rest} Δ_rest
                d = w2[rows, None, blk] - real[m][None]  # (T, K, sub)
                cost = np.einsum("tki,ij,tkj->tk", d, g_bb, d) + 2 * np.einsum("tki,ti->tk", d, cross)
                index[rows, m, p] = cost.argmin(axis=1)
            delta[:, blk] = w2[:, blk] - real[m][index[:, m, p]]
    return index


def correct(w: np.ndarray, fmt: PQFormat, gram: np.ndarray, rounds: int = CORRECTION_ROUNDS):
    """Error correction of a fitted layer: ``(format, index, error before, error after)``."""
    shape = w.shape
    w2 = w.reshape(shape[0], -1)
    index = fmt.assign(w)
    before = best = response_error(w, _weights(fmt, index, shape).reshape(shape), gram)
    best_fmt, best_index = fmt, index
    for _ in range(rounds):
        fmt = fmt.from_codewords(_least_squares(w2, gram, fmt, index, shape))
        index = _reassign(w2, gram, fmt, index, shape)
        err = response_error(w, _weights(fmt, index, shape).reshape(shape), gram)
        if err < best:
            best, best_fmt, best_index = err, fmt, index
    return best_fmt, best_index, before, best


def _layer_inputs(qm: QuantModel, step: QuantLayer, split) -> np.ndarray:
    """``X Xᵀ`` of ``step``'s inputs over ``split``, as the model computes them now."""
    grams = []

    def grab(_mod, args):
        grams.append(response_gram(args[0].detach(), step.module))

    hook = step.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            for xb, _ in batches(split, 512):
                qm(xb)
    finally:
        hook.remove()
    return sum(grams)


def pq_quantize(float_model: nn.Module, fmt: PQFormat, train, epochs: int, lr: float, seed: int, input_fmt):
    """Fit, correct and fine-tune every layer; returns (model, per-layer response errors)."""
    qm = QuantModel(float_model, fmt, input_fmt)
    errors = {}
    with single_thread():
        qm.calibrate(train)
        qm.eval()
        for step in qm.steps.values():
            if not isinstance(step, QuantLayer):
                continue
            w = step.module.weight.detach().cpu().double().numpy()
            gram = _layer_inputs(qm, step, train)
            shape_fmt = step.layer_format(step.in_shape)
            fitted, index, before, after = correct(w, shape_fmt.fit(w), gram)
            step.shared = PQWeights(fitted, index, w.shape, dtype=step.module.weight.dtype)
            errors[step.name] = (before, after)
            qm.calibrate(train)
            qm.eval()
        if epochs > 0:
            fit(qm, train, epochs, lr, 32, seed, on_epoch=lambda m, e: e and m.calibrate(train))
            qm.calibrate(train)
    qm.eval()
    return qm, errors


def procedure(req: TrainRequest) -> Trained:
    """Quantized CNN: (optional pruning), k-means per subspace, response error correction
    layer by layer, codeword fine-tuning."""
    no_inq(req)
    _, note = prune_and_retrain(req)
    qm, errors = pq_quantize(req.float_model, req.fmt, req.train, req.epochs, req.fmt.finetune_lr, req.seed,
                             req.input_fmt)
    text = ", ".join(f"{n} {b:.4f} -> {a:.4f}" for n, (b, a) in errors.items())
    return Trained(qm, note + f"k-means per subspace, response error correction ({CORRECTION_ROUNDS} rounds; "
                   f"relative response error k-means -> corrected: {text}), {req.epochs} epochs codeword "
                   f"fine-tuning", req.plan)
