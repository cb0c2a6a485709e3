"""Bring your own model: a PyTorch module from a file, batch norm folded, checked up front.

``--model path/to/file.py:factory`` names a function (or class) in a Python file outside
the repo that returns an ``nn.Module`` whose ``forward`` ``torch.fx`` can trace, built
from the operations of :data:`quantrtl.model.training.graph.SUPPORTED_TEXT` (residual
adds, concatenation, depthwise convolutions, average pooling included).
``--weights ckpt.pt`` loads a state dict into it.  Batch norms are folded into the
preceding conv/linear (eval-mode statistics) before quantization.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import torch
from torch import nn

from quantrtl.model.training.graph import FloatGraph, trace
from quantrtl.model.training.net import CheckpointError
from quantrtl.util.errors import first_line


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
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # a model file that exits is an error, not a success
        sys.modules.pop(name, None)
        raise ModelSpecError(f"--model {spec!r}: importing {path} failed: {_what(e)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelSpecError(f"--model {spec!r}: {path} has no callable {attr!r}")
    return factory


def _what(e: BaseException) -> str:
    """User code's failure (any exception it raised, or its exit) in words."""
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {first_line(e, 160)}"


def load_user_model(spec: str, weights: str | None = None, probe: torch.Tensor | None = None) -> FloatGraph:
    """Build, load, check and trace a user model into the graph quantization expects
    (``probe``: a few inputs on which the graph must compute what the model computes)."""
    factory = load_factory(spec)
    try:
        model = factory()
    except KeyboardInterrupt:
        raise
    except BaseException as e:
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
                   probe: torch.Tensor | None = None) -> FloatGraph:
    """Check a float module's parameters, trace it into the graph quantization expects
    (batch norm folded; :func:`~quantrtl.model.training.graph.trace`) and, on ``probe``
    inputs, check that the graph computes what the module computes.  ``what`` names the
    model in errors, ``source`` where its parameters came from."""
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{what}: expected an nn.Module, got {type(model).__name__}")
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{source or what}: parameter {name!r} contains NaN or infinity")
    model.eval()
    graph = trace(model, what)
    if probe is not None:
        with torch.no_grad():
            try:
                want = model(probe)
            except KeyboardInterrupt:
                raise
            except BaseException as e:
                raise ModelSpecError(f"{what}: forward on the calibration data failed: {_what(e)}") from None
            try:
                got = graph(probe)
            except Exception as e:  # shapes that do not fit (a node's input is not what it expects)
                raise ModelSpecError(f"{what}: its traced graph fails on the calibration data "
                                     f"({type(e).__name__}: {first_line(e, 160)})") from None
        if not isinstance(want, torch.Tensor) or want.reshape(len(want), -1).shape != got.reshape(len(got), -1).shape \
                or not torch.allclose(want.reshape(len(want), -1), got.reshape(len(got), -1), rtol=1e-4, atol=1e-4):
            raise ModelSpecError(f"{what}: its traced graph does not compute what its forward computes")
    return graph


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
    if not isinstance(a, np.ndarray):  # an .npz archive (np.load gives its arrays by name)
        names = ", ".join(a.files)
        a.close()
        raise ModelSpecError(f"--calib {p}: expected one .npy array, got an .npz archive ({names}); save the inputs "
                             "with numpy.save")
    if a.dtype.kind not in "iuf" or a.ndim not in (2, 4) or len(a) < 1:
        raise ModelSpecError(f"--calib {p}: expected a numeric (N, C, H, W) or (N, F) array, got {a.dtype} {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ModelSpecError(f"--calib {p}: contains NaN or infinity")
    return a.astype(np.float32)
