"""The Python API: the command line's flows for notebooks and scripts.

>>> import quantrtl
>>> q = quantrtl.quantize("shift4")                # the digits CNN, or model=<nn.Module>
>>> r = quantrtl.cosim(q, image=3)                  # RTL (Icarus) against the golden model
>>> r.bit_exact
True

Each function validates its arguments before any work (errors are
:class:`~quantrtl.util.errors.OptionError`, naming the parameter) and returns the result
object the command line prints.  A network argument is what :func:`quantize` returned, an
in-memory :class:`~quantrtl.model.numbers.artifact.QuantizedNetwork`, or an artifact path.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

from quantrtl import flows

__all__ = ["quantize", "verilog", "cosim", "gates", "sweep", "load"]

#: The type each keyword argument of the API takes (None: may be None).  Python would take
#: ``taps="no"`` as true and ``seed="x"`` as a seed; the API refuses them by name instead.
_KINDS = {
    "finetune": (int, None), "seed": int, "inq": bool, "block": (int, None), "calib": (str, Path, None),
    "out": (str, Path), "layer": (str, None), "pipeline": int, "taps": bool, "index_bits": int,
    "image": (int, str, Path), "images": (str, None), "simulator": str, "waves": bool, "build_root": (str, Path),
    "inject": (str, None), "at": (str, None), "stream": int, "style": str, "throughput": int, "sample": (int, None),
    "jobs": int, "yosys": (str, Path, None), "out_dir": (str, Path), "cache_dir": (str, Path),
    "lanes": (int, str, dict), "sparse": (bool, str), "quantizer": str,
}


def _kind_text(kinds) -> str:
    names = {int: "an int", bool: "True or False", str: "a str", Path: "a Path", dict: "a dict", None: "None"}
    return " or ".join(names[k] for k in kinds)


def _checked(fn):
    """Refuse an argument of the wrong type by name (an OptionError), before any work."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            raise flows.OptionError(fn.__name__, f"{{0}}(): {e}") from None
        for name, value in bound.arguments.items():
            kinds = _KINDS.get(name)
            if kinds is None:
                continue
            kinds = kinds if isinstance(kinds, tuple) else (kinds,)
            ok = any(value is None if k is None else
                     isinstance(value, k) and (k is bool or not isinstance(value, bool)) for k in kinds)
            if not ok:
                raise flows.OptionError(name, f"must be {_kind_text(kinds)}, got {type(value).__name__} {value!r}")
        return fn(*args, **kwargs)

    return wrapper


def _source(model, calib, density, block) -> "flows.ModelSource":
    if model is None or isinstance(model, str):
        return flows.ModelSource(model=model, calib=calib, density=density, block=block)
    return flows.ModelSource(module=model, calib=calib, density=density, block=block)


def _network(net) -> tuple[str, Any, Any]:
    """``(quantizer, artifact argument, network)`` of a network argument (a path is read once)."""
    from quantrtl.model.numbers import artifact

    if isinstance(net, flows.QuantizedRun):
        return net.quantizer, net.qnet, net.qnet
    if isinstance(net, artifact.QuantizedNetwork):
        return net.quantizer, net, net
    if isinstance(net, (str, Path)):
        loaded = artifact.load(net)
        return loaded.quantizer, str(net), loaded
    raise flows.OptionError("net", f"must be what quantize() returned, a QuantizedNetwork or an artifact path, "
                                   f"not {type(net).__name__}")


@_checked
def quantize(quantizer: str, model=None, *, finetune: int | None = None, density=None, inq: bool = False,
             seed: int = 0, calib: str | None = None, block: int | None = None) -> "flows.QuantizedRun":
    """Quantize ``model`` (an ``nn.Module``, a ``path/file.py:factory`` string, or None for the
    shipped digits CNN) with ``quantizer``; returns the network (``.qnet``, ``.save(stem)``)
    with its float, fake-quant and golden accuracies and their agreement."""
    source = _source(model, calib, density, block)
    return flows.quantize_network(quantizer, finetune, source, seed=seed, density=density, inq=inq)


@_checked
def verilog(net, out: str | Path, *, layer: str = "all", lanes: int = 8, pipeline: int = 0, taps: bool = False,
            sparse: bool | str = False, index_bits: int = 4) -> "flows.VerilogResult":
    """Verilog (and its JSON description) of ``net``'s layer, or of the whole network, in ``out``."""
    quantizer, art, _ = _network(net)
    return flows.verilog_flow(quantizer, out, layer=layer, lanes=lanes, pipeline=pipeline, artifact_path=art,
                              taps=taps, sparse=sparse, index_bits=index_bits)


@_checked
def cosim(net, *, image: int | str = 0, images: str | None = None, simulator: str = "icarus", lanes: int | str = 8,
          waves: bool = False, build_root: str | Path = "build/cosim", sparse: bool | str = False, index_bits: int = 4,
          inject: str | None = None, at: str | None = None, stream: int = 3) -> "flows.CosimResult":
    """Inference of test image ``image`` (or an image file), or of ``images`` (``"all"``,
    ``"0-99"``, ``"3,5,8"``) in one simulator process, in RTL, compared bit for bit with the
    golden model layer by layer (``.bit_exact``, ``.first_mismatch``, ``.cycles``,
    ``.rtl_accuracy``), ``stream`` images back to back per batch (``.throughput``: latency
    and initiation interval).  ``inject`` (weight, bias, requant, control) ``at``
    ``"layer:index"`` puts a fault into the generated design only."""
    quantizer, art, _ = _network(net)
    return flows.cosim_flow(quantizer, image, simulator=simulator, lanes=lanes, waves=waves, artifact_path=art,
                            build_root=build_root, sparse=sparse, index_bits=index_bits, images=images,
                            inject=inject, at=at, stream=stream)


@_checked
def gates(nets, *, style: str = "array", layer: str | None = None, throughput: int = 16, sample: int = 4,
          jobs: int = 2, yosys: str | None = None, out_dir: str | Path = "build/gates",
          cache_dir: str | Path = "build/synth-cache") -> "flows.GatesResult":
    """Yosys gate counts of ``nets`` (networks, or quantizer names quantized now) at equal throughput."""
    if isinstance(nets, (str, Path)) or not hasattr(nets, "__iter__"):
        raise flows.OptionError("nets", f"must be a list of networks or quantizer names, got {type(nets).__name__} "
                                        f"{nets!r} (one design: [{nets!r}])")
    names, networks = [], {}
    for n in nets:
        if isinstance(n, str) and not n.endswith(".json"):
            names.append(n)
        else:
            quantizer, _, network = _network(n)
            names.append(quantizer)
            networks[quantizer] = network
    return flows.gates_flow(names, style=style, layer=layer, throughput=throughput, sample=sample, jobs=jobs,
                            yosys=yosys, out_dir=out_dir, cache_dir=cache_dir, networks=networks)


def sweep(quantizers: list[str], lanes: list[int], densities: list[float], **options) -> dict:
    """Design-space sweep (quantizer × lanes × density) on a local pool or a Dask cluster
    (``scheduler="tcp://host:port"``); see :func:`quantrtl.flows.sweep.sweep` for the options."""
    from quantrtl.flows.sweep import sweep as run

    return run(quantizers, lanes, densities, **options)


def load(path: str | Path):
    """An artifact from disk (``<stem>.json`` + ``.npz``), validated."""
    from quantrtl.model.numbers import artifact

    return artifact.load(path)
