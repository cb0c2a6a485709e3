"""Training procedures, one per kind of method; a family names its own (``families.py``).

A procedure takes a :class:`TrainRequest` (the float model, the format, the data and the
schedule) and returns a :class:`Trained`: the fake-quantized model that is exported, a
one-line description of what was done (it goes into the artifact's metadata) and the
per-layer density plan.  The flows call ``family(fmt.family).resolve("train")(request)``
and know no method.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from quantrtl.model.digits import Split
from quantrtl.model.numbers.formats import ActivationFormat, WeightFormat
from quantrtl.model.training.net import fit, single_thread
from quantrtl.model.training.prune import apply_masks, magnitude_masks
from quantrtl.model.training.quantize import QuantModel, inq_quantize, quantize_model
from quantrtl.util.errors import OptionError

__all__ = ["TrainRequest", "Trained", "RETRAIN_LR", "standard", "incremental", "kmeans", "unified"]

#: Learning rate of the retraining after pruning (the float model's training rate).
RETRAIN_LR = 2e-3


@dataclass(frozen=True)
class TrainRequest:
    """What a training procedure gets.

    Attributes
    ----------
    float_model : nn.Sequential
        The float model (procedures may prune it in place).
    fmt : WeightFormat
        The (unfitted) format to train for.
    train : Split
        Training (and calibration) data.
    epochs : int
        Fine-tuning epochs (the flow has applied the method's default).
    seed : int
        Seed of every shuffle and initialisation.
    input_fmt : ActivationFormat
        The model input's format.
    plan : dict
        Per-layer weight density (block density for unified), resolved; 1.0 everywhere
        means no pruning.
    inq : bool
        Train incrementally (INQ); only a procedure that supports it accepts it.
    """

    float_model: nn.Module
    fmt: WeightFormat
    train: Split
    epochs: int
    seed: int
    input_fmt: ActivationFormat
    plan: dict
    inq: bool = False

    @property
    def plan_text(self) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in self.plan.items())

    @property
    def prunes(self) -> bool:
        return any(v < 1.0 for v in self.plan.values())


@dataclass(frozen=True)
class Trained:
    """A procedure's result: the model to export and what was done to it."""

    model: QuantModel
    description: str
    plan: dict


def _no_inq(req: TrainRequest) -> None:
    if req.inq:
        raise OptionError("inq", f"trains powers of two: use a shiftN quantizer, not {req.fmt.name!r}")


def _prune_and_retrain(req: TrainRequest):
    """Magnitude pruning to the plan, then retraining with the masks held; returns the
    optimizer hook that keeps pruned weights at zero (None without pruning) and a note."""
    if not req.prunes:
        return None, ""
    masks = magnitude_masks(req.float_model, req.plan)
    apply_masks(req.float_model, masks)

    def after_step(_model):
        apply_masks(req.float_model, masks)

    with single_thread():
        fit(req.float_model, req.train, req.epochs, RETRAIN_LR, 32, req.seed, after_step=after_step)
    return after_step, f"magnitude pruning ({req.plan_text}) and {req.epochs} epochs retraining, "


def standard(req: TrainRequest) -> Trained:
    """Optional magnitude pruning and retraining, then quantization-aware fine-tuning with
    the format's codec in the forward pass (straight-through gradients)."""
    _no_inq(req)
    after_step, note = _prune_and_retrain(req)
    qm = quantize_model(req.float_model, req.fmt, req.train, finetune=req.epochs, lr=req.fmt.finetune_lr,
                        seed=req.seed, input_fmt=req.input_fmt, after_step=after_step)
    return Trained(qm, note + f"quantization + {req.epochs} epochs fine-tuning", req.plan)


def incremental(req: TrainRequest) -> Trained:
    """Powers of two: INQ's incremental quantization when asked (``--inq``), else
    :func:`standard`."""
    if not req.inq:
        return standard(req)
    if req.prunes:
        raise OptionError(("inq", "density"), "{0} and {1} cannot be combined yet")
    qm = inq_quantize(req.float_model, req.fmt, req.train, epochs=req.epochs, lr=req.fmt.finetune_lr, seed=req.seed,
                      input_fmt=req.input_fmt)
    return Trained(qm, "INQ (50/75/87.5/100 %)", req.plan)


def kmeans(req: TrainRequest) -> Trained:
    """Deep Compression: pruning and retraining, k-means clustering once per layer, then
    fine-tuning of the centroids by the summed gradients of their members."""
    from quantrtl.model.training.sharing import kmeans_quantize

    _no_inq(req)
    _, note = _prune_and_retrain(req)
    qm = kmeans_quantize(req.float_model, req.fmt, req.train, epochs=req.epochs, lr=req.fmt.finetune_lr,
                         seed=req.seed, input_fmt=req.input_fmt)
    return Trained(qm, note + f"k-means (linear init), {req.epochs} epochs centroid fine-tuning", req.plan)


def unified(req: TrainRequest) -> Trained:
    """ADMM unification and block pruning (the plan is a block density), then masked
    fine-tuning."""
    from quantrtl.model.training.admm import unified_quantize

    _no_inq(req)
    qm, state = unified_quantize(req.float_model, req.fmt, req.train, admm_epochs=req.epochs, epochs=req.epochs,
                                 density=req.plan, seed=req.seed, input_fmt=req.input_fmt)
    res = ", ".join(f"{r:.3f}" for r in state.history)
    return Trained(qm, (f"ADMM unification and pruning (block {req.fmt.block}, block density {req.plan_text}, "
                        f"{req.epochs} ADMM epochs, primal residual per epoch [{res}]) + {req.epochs} epochs "
                        f"fine-tuning"), req.plan)
