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


def train_flow(out: str | Path, epochs: int | None = None, seed: int | None = None,
               model: str = "digits") -> TrainResult:
    """Train a shipped model (``model``: a name of ``net.SHIPPED``) and write ``out`` (+
    ``.json``); compare with its shipped checkpoint."""
    from quantrtl.model.training import net

    if model not in net.SHIPPED:
        raise OptionError("model", f"{model!r} is not a shipped model; choose one of {', '.join(net.SHIPPED)}")
    shipped_model = net.SHIPPED[model]
    if not shipped_model.labelled:
        raise OptionError("model", f"{model} is shipped untrained (seeded weights): there is no labelled data here "
                                   "to train it on")
    cfg = net.TRAIN_DEFAULTS
    cfg = replace(cfg, **{k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None})
    if cfg.epochs < 1:
        raise OptionError("epochs", f"must be at least 1, got {cfg.epochs}")
    from quantrtl.util.atomic import check_distinct, check_output_path

    check_output_path(out)  # (a folder, a FIFO, a symlink: refused before the training, not after)
    check_output_path(Path(out).with_suffix(".json"))
    check_distinct({"--out": out, "its description": Path(out).with_suffix(".json")})
    t0 = time.perf_counter()
    trained, acc = net.train(cfg, shipped_model.factory)
    digest = net.state_digest(trained)
    # the reference is what the default recipe gives on this CPU kind (training is bit-exact
    # per CPU kernel capability), else the shipped weights' own digest
    shipped = net.retrained_digest(shipped_model.checkpoint)
    meta = shipped_model.checkpoint.with_suffix(".json")
    if shipped is None and meta.is_file():
        shipped = json.loads(meta.read_text()).get("digest")
    info = {"model": model, "test_accuracy": acc, "digest": digest, "config": asdict(cfg), "versions": tool_versions(),
            "cpu_capability": net.cpu_capability(),
            "split": "sklearn digits, train_test_split(test_size=0.2, stratify=y, random_state=0)"}
    net.save_checkpoint(trained, out, info)
    return TrainResult(checkpoint=str(out), test_accuracy=acc, digest=digest, shipped_digest=shipped,
                       reproduces_shipped=digest == shipped, seconds=time.perf_counter() - t0, config=asdict(cfg))
