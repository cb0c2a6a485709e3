"""The training request and the generic procedures; a family names its own (``families.py``).

Method-specific procedures live with their training code: ``kmeans`` in ``sharing.py``
(Deep Compression), ``unified`` in ``admm.py``.

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

__all__ = ["TrainRequest", "Trained", "RETRAIN_LR", "no_inq", "prune_and_retrain", "standard", "incremental"]

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


def no_inq(req: TrainRequest) -> None:
    """Reject ``--inq`` for a procedure that does not train incrementally."""
    if req.inq:
        raise OptionError("inq", f"trains powers of two: use a shiftN quantizer, not {req.fmt.name!r}")


def prune_and_retrain(req: TrainRequest):
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
    no_inq(req)
    after_step, note = prune_and_retrain(req)
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
