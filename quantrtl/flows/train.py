"""The train flow: the digits CNN from scratch, compared with the shipped checkpoint."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from quantrtl.flows.common import tool_versions
from quantrtl.util.errors import OptionError

__all__ = ["TrainResult", "train_flow"]


@dataclass(frozen=True)
class TrainResult:
    checkpoint: str
    test_accuracy: float
    digest: str
    shipped_digest: str | None
    reproduces_shipped: bool
    seconds: float
    config: dict


def train_flow(out: str | Path, epochs: int | None = None, seed: int | None = None) -> TrainResult:
    """Train the digits CNN and write ``out`` (+ ``.json``); compare with the shipped checkpoint."""
    from quantrtl.model.training import net

    cfg = net.TRAIN_DEFAULTS
    cfg = replace(cfg, **{k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None})
    if cfg.epochs < 1:
        raise OptionError("epochs", f"must be at least 1, got {cfg.epochs}")
    t0 = time.perf_counter()
    model, acc = net.train(cfg)
    digest = net.state_digest(model)
    # the reference is what the default recipe gives on this CPU kind (training is bit-exact
    # per CPU kernel capability), else the shipped weights' own digest
    shipped = net.retrained_digest()
    meta = net.CHECKPOINT.with_suffix(".json")
    if shipped is None and meta.is_file():
        shipped = json.loads(meta.read_text()).get("digest")
    info = {"test_accuracy": acc, "digest": digest, "config": asdict(cfg), "versions": tool_versions(),
            "cpu_capability": net.cpu_capability(),
            "split": "sklearn digits, train_test_split(test_size=0.2, stratify=y, random_state=0)"}
    net.save_checkpoint(model, out, info)
    return TrainResult(checkpoint=str(out), test_accuracy=acc, digest=digest, shipped_digest=shipped,
                       reproduces_shipped=digest == shipped, seconds=time.perf_counter() - t0, config=asdict(cfg))
