"""MAC lanes per engine: one count for every engine, or a plan per layer.

``8`` gives every conv2d/linear engine 8 lanes; ``"conv1=8,*=32"`` gives ``conv1`` 8 and
every other engine 32 (``*`` is the default; without it every weighted layer must be
named).  The plan is how a user balances a network's slowest layer.
"""
from __future__ import annotations

import hashlib
import re

from quantrtl.util.errors import OptionError

__all__ = ["MAX_LANES", "parse_lanes", "parse_lane_axis", "lanes_for", "lanes_tag", "lanes_text", "check_plan_layers"]

#: The most MAC lanes an engine may have.
MAX_LANES = 256


def _check(n: int, param: str, where: str = "") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_LANES:
        raise OptionError(param, f"{where}must be in 1..{MAX_LANES}, got {n!r}")
    return n


def parse_lanes(value, param: str = "lanes") -> int | dict[str, int]:
    """``8``, ``"8"`` or ``"conv1=8,*=32"`` (or a dict) → a count or a plan; checked."""
    if isinstance(value, dict):
        if not value:
            raise OptionError(param, "an empty plan gives no engine any lanes")
        return {str(k): _check(v, param, f"{k}: ") for k, v in value.items()}
    if isinstance(value, int):
        return _check(value, param)
    text = str(value).strip()
    if "=" not in text:
        try:
            n = int(text)
        except ValueError:
            raise OptionError(param, f"cannot read {text!r}: give a number or a plan like conv1=8,*=32") from None
        return _check(n, param)
    plan: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition("=")
        name = name.strip()
        if not name or not re.fullmatch(r"\*|[A-Za-z0-9_]{1,64}", name) or name in plan:
            raise OptionError(param, f"{part!r}: each entry is LAYER=N or *=N, each layer once")
        try:
            n = int(count)
        except ValueError:
            raise OptionError(param, f"{part!r}: {count.strip()!r} is not a number of lanes") from None
        plan[name] = _check(n, param, f"{name}: ")
    if not plan:
        raise OptionError(param, f"cannot read {text!r}")
    return plan


def lanes_for(lanes: int | dict, layer: str) -> int:
    """The lanes of ``layer``'s engine under ``lanes`` (a count or a plan)."""
    if isinstance(lanes, int):
        return lanes
    if layer in lanes:
        return lanes[layer]
    if "*" in lanes:
        return lanes["*"]
    raise OptionError("lanes", f"the plan gives layer {layer!r} no lanes; name it or add *=N")


def check_plan_layers(lanes: int | dict, layers: list[str], weighted: list[str]) -> None:
    """A plan names only layers of the network (``layers``) and covers every conv2d/linear
    layer (``weighted``), directly or through ``*``."""
    if isinstance(lanes, int):
        return
    unknown = [k for k in lanes if k != "*" and k not in layers]
    if unknown:
        raise OptionError("lanes", f"the plan names {unknown}, not layers of the network; layers are {layers}")
    for name in weighted:
        lanes_for(lanes, name)


def lanes_tag(lanes: int | dict) -> str:
    """A short name for folder names: ``p8``, or ``p`` + the plan (hashed when long)."""
    if isinstance(lanes, int):
        return f"p{lanes}"
    text = "_".join(f"{'all' if k == '*' else k}{v}" for k, v in sorted(lanes.items()))
    if len(text) > 40:
        text = text[:24] + "_" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"p{text}"


def lanes_text(lanes: int | dict) -> str:
    """A count or plan as the command line writes it: ``8``, ``conv1=8,*=32``."""
    return str(lanes) if isinstance(lanes, int) else ",".join(f"{k}={v}" for k, v in lanes.items())


def parse_lane_axis(value, param: str = "lanes") -> list[int | dict[str, int]]:
    """A list of lane settings (``sweep``'s axis): ``4,8,16`` (counts), or settings apart by
    ``;`` when any is a plan: ``8;conv1=8,*=32``; each checked by :func:`parse_lanes`."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        text = str(value)
        items = [p for p in (x.strip() for x in text.split(";" if ";" in text or "=" in text else ",")) if p]
    if not items:
        raise OptionError(param, "needs at least one lane setting")
    return [parse_lanes(x, param) for x in items]
