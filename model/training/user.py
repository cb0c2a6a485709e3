"""Bring your own model: a PyTorch module from a file, batch norm folded, checked up front.

``--model path/to/file.py:factory`` names a function (or class) in a Python file outside
the repo that returns an ``nn.Module`` built from Conv2d, Linear, ReLU, MaxPool2d,
BatchNorm2d/BatchNorm1d and Flatten, in the order its ``forward`` applies them
(``nn.Sequential``, nested or not, or a module whose children run in order).
``--weights ckpt.pt`` loads a state dict into it.  Batch norms are folded into the
preceding conv/linear (eval-mode statistics) before quantization.
"""
from __future__ import annotations

import copy
import importlib.util
import re
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from quantrtl.model.training.net import CheckpointError
from quantrtl.model.training.quantize import SUPPORTED, UnsupportedLayerError
from quantrtl.util.errors import first_line

ACCEPTED = SUPPORTED + (nn.BatchNorm2d, nn.BatchNorm1d)


class ModelSpecError(ValueError):
    """A ``--model`` specification that cannot be loaded."""


def load_factory(spec: str):
    """``"path/to/file.py:factory"`` → the callable."""
    if ":" not in spec:
        raise ModelSpecError(f"--model {spec!r}: expected path/to/file.py:factory")
    path_text, _, attr = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise ModelSpecError(f"--model {spec!r}: file {path} not found")
    name = "quantrtl_user_" + re.sub(r"\W", "_", str(path.resolve()))
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a model file that exits is an error, not a success
        sys.modules.pop(name, None)
        raise ModelSpecError(f"--model {spec!r}: importing {path} failed: {_what(e)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelSpecError(f"--model {spec!r}: {path} has no callable {attr!r}")
    return factory


def _flatten(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            out += _flatten(child, full + "_")
        else:
            out.append((re.sub(r"\W", "_", full), child))
    return out


def check_layers(layers: list[tuple[str, nn.Module]]) -> None:
    """Reject any unsupported layer, naming it, before any work."""
    for name, m in layers:
        if not isinstance(m, ACCEPTED):
            raise UnsupportedLayerError(
                f"layer {name!r} of type {type(m).__name__} is not supported; supported: "
                + ", ".join(t.__name__ for t in ACCEPTED))


def fold_batch_norm(layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Fold each BatchNorm into the conv/linear before it: ``w' = w·γ/σ``, ``b' = (b − μ)·γ/σ + β``."""
    out: list[tuple[str, nn.Module]] = []
    for name, m in layers:
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if not out or not isinstance(out[-1][1], (nn.Conv2d, nn.Linear)):
                raise UnsupportedLayerError(f"layer {name!r} ({type(m).__name__}) must follow a Conv2d or Linear to be folded")
            pname, prev = out[-1]
            if prev.weight.shape[0] != m.num_features:
                raise UnsupportedLayerError(f"layer {name!r}: {m.num_features} features after {pname!r} with "
                                            f"{prev.weight.shape[0]} outputs")
            with torch.no_grad():
                std = torch.sqrt(m.running_var + m.eps)
                gamma = m.weight if m.affine else torch.ones_like(std)
                beta = m.bias if m.affine else torch.zeros_like(std)
                k = gamma / std
                folded = copy.deepcopy(prev)
                folded.weight = nn.Parameter(prev.weight * k.reshape(-1, *([1] * (prev.weight.dim() - 1))))
                b = prev.bias if prev.bias is not None else torch.zeros_like(m.running_mean)
                folded.bias = nn.Parameter((b - m.running_mean) * k + beta)
            out[-1] = (pname, folded)
        else:
            out.append((name, m))
    return out


def _what(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {e}"


def load_user_model(spec: str, weights: str | None = None, probe: torch.Tensor | None = None) -> nn.Sequential:
    """Build, load, check and fold a user model into the ``nn.Sequential`` quantization expects.

    ``probe`` (a few inputs) verifies that a non-Sequential module's forward equals running
    its children in order, and that folding kept the outputs.
    """
    factory = load_factory(spec)
    try:
        model = factory()
    except (Exception, SystemExit) as e:
        raise ModelSpecError(f"--model {spec!r}: calling the factory failed: {_what(e)}") from None
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"--model {spec!r}: the factory returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise CheckpointError(f"{p}: checkpoint not found")
        try:
            model.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
        except Exception as e:
            raise CheckpointError(f"{p}: cannot load checkpoint ({first_line(e)})") from None
    return prepare_module(model, f"--model {spec!r}", weights or spec, probe)


def prepare_module(model: nn.Module, what: str = "the model", source: str | None = None,
                   probe: torch.Tensor | None = None) -> nn.Sequential:
    """Check a float module's parameters and layers, fold batch norm, and return the
    ``nn.Sequential`` quantization expects (``probe`` checks that folding kept the outputs).
    ``what`` names the model in errors, ``source`` where its parameters came from."""
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{what}: expected an nn.Module, got {type(model).__name__}")
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{source or what}: parameter {name!r} contains NaN or infinity")
    model.eval()
    layers = _flatten(model)
    check_layers(layers)
    seq = nn.Sequential(OrderedDict(fold_batch_norm(layers))).eval()
    if probe is not None:
        with torch.no_grad():
            try:
                want = model(probe)
            except (Exception, SystemExit) as e:
                raise ModelSpecError(f"{what}: forward on the calibration data failed: {_what(e)}") from None
            try:
                got = seq(probe)
            except Exception as e:  # children registered in another order than forward uses them
                raise ModelSpecError(f"{what}: its layers applied in the order they are registered fail "
                                     f"({type(e).__name__}: {first_line(e, 160)}); quantrtl needs a "
                                     "sequence of layers registered in the order forward uses them") from None
        if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-4):
            raise ModelSpecError(f"{what}: its forward is not its layers applied in order "
                                 "(quantrtl needs a sequence of layers)")
    return seq


class ArraySplit:
    """Calibration inputs from ``--calib file.npy``: float model inputs (N, C, H, W), no labels."""

    def __init__(self, x_float, input_fmt):
        import numpy as np

        self._float = np.asarray(x_float, dtype=np.float32)
        self.x = input_fmt.quantize(self._float)
        self.y = np.zeros(len(self._float), dtype=np.int64)  # unused: no labels

    def float_inputs(self):
        return self._float


def load_calibration(path: str):
    """``--calib``: an .npy array of float model inputs, (N, C, H, W) or (N, F)."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise ModelSpecError(f"--calib {p}: file not found")
    try:
        a = np.load(p, allow_pickle=False)
    except Exception as e:
        raise ModelSpecError(f"--calib {p}: unreadable .npy file ({e})") from None
    if a.dtype.kind not in "iuf" or a.ndim not in (2, 4) or len(a) < 1:
        raise ModelSpecError(f"--calib {p}: expected a numeric (N, C, H, W) or (N, F) array, got {a.dtype} {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ModelSpecError(f"--calib {p}: contains NaN or infinity")
    return a.astype(np.float32)
