"""The default digits CNN, its training and evaluation (torch).

Architecture (``nn.Sequential``, the form export walks)::

    conv1  Conv2d(1, 8, 3, padding=1)  + ReLU      8×8×8
    conv2  Conv2d(8, 16, 3, padding=1) + ReLU      16×8×8
    pool   MaxPool2d(2)                            16×4×4
    flatten
    fc     Linear(256, 10)                         logits

The shipped checkpoint ``model/data/digits_cnn.pt`` is reproduced by
``quantrtl train`` (seed 0, Adam, see :data:`TRAIN_DEFAULTS`).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from quantrtl.util.atomic import atomic_write
from quantrtl.util.errors import first_line
from quantrtl.model.digits import INPUT_SHAPE, NUM_CLASSES, Split, load_split

DATA = Path(__file__).resolve().parent.parent / "data"
CHECKPOINT = DATA / "digits_cnn.pt"


def digits_cnn() -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 8, 3, padding=1)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(8, 16, 3, padding=1)),
        ("relu2", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(16 * 4 * 4, NUM_CLASSES)),
    ]))


class DigitsRes(nn.Module):
    """The residual digits network: every graph operation quantrtl takes, on 8×8 digits::

        stem   Conv2d(1, 8, 3, padding=1) + BatchNorm + ReLU        8×8×8
        dw     Conv2d(8, 8, 3, padding=1, groups=8) + ReLU           depthwise
        pw     Conv2d(8, 8, 1)                                       pointwise
        add    ReLU(stem + pw)                                       residual
        conv2  Conv2d(8, 16, 3, padding=1) + ReLU                   16×8×8
        pool   AvgPool2d(2)                                         16×4×4
        conv3  Conv2d(16, 16, 3, padding=1) + ReLU                  16×4×4
        cat    cat([pool, conv3], dim=1)                            32×4×4
        gap    AdaptiveAvgPool2d(1), flatten                        32
        fc     Linear(32, 10)                                       logits
    """

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.pw(torch.relu(self.dw(x))))
        p = self.pool(torch.relu(self.conv2(x)))
        z = torch.cat([p, torch.relu(self.conv3(p))], dim=1)
        return self.fc(torch.flatten(self.gap(z), 1))


class DigitsMobile(nn.Module):
    """A MobileNetV3-style digits network: table activations and squeeze-and-excitation::

        stem   Conv2d(1, 16, 3, padding=1) + BatchNorm + Hardswish        16×8×8
        dw     Conv2d(16, 16, 3, stride 2, padding=1, groups=16) + BN + SiLU   16×4×4
        se     s = sigmoid(Conv2d(4, 16, 1)(ReLU(Conv2d(16, 4, 1)(gap(x)))))  16×1×1
               x · s (the channel gate)                                  16×4×4
        pw     Conv2d(16, 24, 1) + BatchNorm + LeakyReLU(0.1)             24×4×4
        gap    AdaptiveAvgPool2d(1), flatten                             24
        fc     Linear(24, 10)                                            logits
    """

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.dw_bn = nn.BatchNorm2d(16)
        self.se_pool = nn.AdaptiveAvgPool2d(1)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.pw = nn.Conv2d(16, 24, 1)
        self.pw_bn = nn.BatchNorm2d(24)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, classes)

    def forward(self, x):
        x = F.hardswish(self.stem_bn(self.stem(x)))
        x = F.silu(self.dw_bn(self.dw(x)))
        s = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(self.se_pool(x)))))
        x = x * s
        x = F.leaky_relu(self.pw_bn(self.pw(x)), 0.1)
        return self.fc(torch.flatten(self.gap(x), 1))


class ResNet8(nn.Module):
    """The MLPerf Tiny image-classification ResNet-8 (CIFAR-10 shaped, 3×32×32 in)::

        stem    Conv2d(3, 16, 3, padding=1) + BN + ReLU                 16×32×32
        stack1  [Conv 3×3 16 + BN + ReLU, Conv 3×3 16 + BN] + x, ReLU    16×32×32
        stack2  [Conv 3×3 32 /2 + BN + ReLU, Conv 3×3 32 + BN]
                + Conv 1×1 32 /2 (shortcut), ReLU                       32×16×16
        stack3  the same at 64 channels                                 64×8×8
        gap     AdaptiveAvgPool2d(1), flatten                           64
        fc      Linear(64, 10)                                          logits

    About 12.5 M MACs per image.  Shipped untrained (seeded weights, :func:`seeded_init`):
    bit-exactness, cycles and gates are real for it; accuracy is not.
    """

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(16)
        chans = [(16, 16, 1), (16, 32, 2), (32, 64, 2)]
        for i, (cin, cout, stride) in enumerate(chans, 1):
            setattr(self, f"s{i}a", nn.Conv2d(cin, cout, 3, stride=stride, padding=1))
            setattr(self, f"s{i}a_bn", nn.BatchNorm2d(cout))
            setattr(self, f"s{i}b", nn.Conv2d(cout, cout, 3, padding=1))
            setattr(self, f"s{i}b_bn", nn.BatchNorm2d(cout))
            if stride != 1:
                setattr(self, f"s{i}sc", nn.Conv2d(cin, cout, 1, stride=stride))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        for i in (1, 2, 3):
            y = torch.relu(getattr(self, f"s{i}a_bn")(getattr(self, f"s{i}a")(x)))
            y = getattr(self, f"s{i}b_bn")(getattr(self, f"s{i}b")(y))
            skip = getattr(self, f"s{i}sc")(x) if i > 1 else x
            x = torch.relu(y + skip)
        return self.fc(torch.flatten(self.gap(x), 1))


class DSCNN(nn.Module):
    """The MLPerf Tiny keyword-spotting DS-CNN-S (1×49×10 MFCC features in)::

        conv1   Conv2d(1, 64, (10, 4), stride 2, padding (5, 1)) + BN + ReLU   64×25×5
        dwK     Conv2d(64, 64, 3, padding=1, groups=64) + BN + ReLU           depthwise
        pwK     Conv2d(64, 64, 1) + BN + ReLU                                 pointwise  (K = 1..4)
        gap     AdaptiveAvgPool2d(1), flatten                                64
        fc      Linear(64, 12)                                               logits

    About 2.7 M MACs per image.  Shipped untrained, like :class:`ResNet8`.
    """

    def __init__(self, classes: int = 12, blocks: int = 4, channels: int = 64):
        super().__init__()
        self.blocks = blocks
        self.conv1 = nn.Conv2d(1, channels, (10, 4), stride=2, padding=(5, 1))
        self.bn1 = nn.BatchNorm2d(channels)
        for k in range(1, blocks + 1):
            setattr(self, f"dw{k}", nn.Conv2d(channels, channels, 3, padding=1, groups=channels))
            setattr(self, f"dw{k}_bn", nn.BatchNorm2d(channels))
            setattr(self, f"pw{k}", nn.Conv2d(channels, channels, 1))
            setattr(self, f"pw{k}_bn", nn.BatchNorm2d(channels))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        for k in range(1, self.blocks + 1):
            x = torch.relu(getattr(self, f"dw{k}_bn")(getattr(self, f"dw{k}")(x)))
            x = torch.relu(getattr(self, f"pw{k}_bn")(getattr(self, f"pw{k}")(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


def seeded_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic weights from NumPy's generator (the same on every machine and torch
    version): He-uniform weights, small biases, batch norms with spread statistics (so
    folding them is exercised)."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                fan_in = mod.weight[0].numel()
                bound = float(np.sqrt(6.0 / fan_in))
                mod.weight.copy_(torch.tensor(rng.uniform(-bound, bound, tuple(mod.weight.shape)), dtype=torch.float32))
                if mod.bias is not None:
                    mod.bias.copy_(torch.tensor(rng.uniform(-0.1, 0.1, tuple(mod.bias.shape)), dtype=torch.float32))
            elif isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                for t, lo, hi in ((mod.weight, 0.5, 1.5), (mod.bias, -0.2, 0.2), (mod.running_mean, -0.2, 0.2),
                                  (mod.running_var, 0.5, 2.0)):
                    t.copy_(torch.tensor(rng.uniform(lo, hi, c), dtype=torch.float32))
    return model.eval()


@dataclass(frozen=True)
class Shipped:
    """A model shipped with its trained checkpoint (``--model <name>``), or untrained
    (``checkpoint`` None: seeded weights, no data of its own: ``--calib`` or a synthetic
    calibration set, accuracy "-")."""

    name: str
    factory: object
    checkpoint: Path | None
    description: str
    input_shape: tuple = INPUT_SHAPE

    def build(self, checkpoint: str | os.PathLike | None = None) -> nn.Module:
        """The float model: a checkpoint's weights, or the seeded ones of an untrained model."""
        if checkpoint is None and self.checkpoint is None:
            return seeded_init(self.factory())
        return load_checkpoint(checkpoint or self.checkpoint, self.factory)

    @property
    def labelled(self) -> bool:
        """Whether the model has its data (the digits) here."""
        return self.checkpoint is not None


#: The shipped models by ``--model`` name (the default first).
SHIPPED = {
    "digits": Shipped("digits", digits_cnn, CHECKPOINT, "the digits CNN (conv, conv, max pool, linear)"),
    "digits-res": Shipped("digits-res", DigitsRes, DATA / "digits_res.pt",
                          "the residual digits network (depthwise, residual add, average pooling, concat, "
                          "global average pooling)"),
    "digits-mobile": Shipped("digits-mobile", DigitsMobile, DATA / "digits_mobile.pt",
                             "a MobileNetV3-style digits network (hardswish, SiLU, LeakyReLU, squeeze-and-excitation "
                             "with a sigmoid gate, depthwise strided conv)"),
    "resnet8": Shipped("resnet8", ResNet8, None, "MLPerf Tiny ResNet-8, 3x32x32 (untrained)", (3, 32, 32)),
    "dscnn": Shipped("dscnn", DSCNN, None, "MLPerf Tiny DS-CNN-S keyword spotting, 1x49x10 (untrained)", (1, 49, 10)),
}


def synthetic_inputs(shape: tuple, count: int = 32, seed: int = 0) -> np.ndarray:
    """A synthetic calibration set for a model without data here: ``count`` seeded
    uniform [0, 1) inputs of ``shape`` (labelled "synthetic" wherever it is used)."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, (count, *shape)).astype(np.float32)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


TRAIN_DEFAULTS = TrainConfig()


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None):
    """Float input batches; shuffled when a generator is given."""
    x = torch.tensor(split.float_inputs())
    y = torch.tensor(split.y)
    idx = torch.randperm(len(y), generator=generator) if generator is not None else torch.arange(len(y))
    for i in range(0, len(y), batch_size):
        j = idx[i:i + batch_size]
        yield x[j], y[j]


def fit(model: nn.Module, split: Split, epochs: int, lr: float, batch_size: int, seed: int,
        weight_decay: float = 0.0, after_step=None, on_epoch=None, penalty=None) -> nn.Module:
    """Cross-entropy training with Adam; deterministic for a given seed.

    ``after_step(model)`` runs after every optimizer step (pruning masks, for example);
    ``on_epoch(model, epoch)`` at the start of each epoch (re-calibration);
    ``penalty(model)`` is added to the loss (ADMM's proximal term).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        if on_epoch is not None:
            on_epoch(model, epoch)
        model.train()
        for xb, yb in batches(split, batch_size, gen):
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            if penalty is not None:
                loss = loss + penalty(model)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
        sched.step()
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 512) -> np.ndarray:
    model.eval()
    return torch.cat([model(xb).argmax(dim=1) for xb, _ in batches(split, batch_size)]).numpy()


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(labels)).mean())


@contextmanager
def single_thread():
    """One CPU thread: one float reduction order, so the same seed gives the same weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train(cfg: TrainConfig = TRAIN_DEFAULTS, factory=digits_cnn) -> tuple[nn.Module, float]:
    """Train a shipped model (``factory``, the digits CNN by default) from scratch on the
    digits data; returns the model and its test accuracy."""
    with single_thread():
        torch.manual_seed(cfg.seed)
        model = factory()
        train_split, test_split = load_split()
        fit(model, train_split, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed, cfg.weight_decay)
    return model, accuracy(predict(model, test_split), test_split.y)


def cpu_capability() -> str:
    """The CPU kernels torch runs here (``AVX2``, ``AVX512``, …): training is bit-exact run
    to run on one capability, not across them."""
    return torch.backends.cpu.get_cpu_capability()


def retrained_digest(checkpoint: Path = CHECKPOINT) -> str | None:
    """The digest :func:`train` gives on this machine's CPU capability, as recorded next to
    the shipped ``checkpoint`` (None when none is recorded for it)."""
    meta = checkpoint.with_suffix(".json")
    if not meta.is_file():
        return None
    return json.loads(meta.read_text()).get("retrained_digests", {}).get(cpu_capability())


def state_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().astype("<f4").tobytes())
    return h.hexdigest()


def save_checkpoint(model: nn.Module, path: str | os.PathLike, info: dict) -> Path:
    """``path`` (state dict) and ``path.json`` (how it was made), each written atomically."""
    path = Path(path)
    atomic_write(path, lambda f: torch.save(model.state_dict(), f))
    atomic_write(path.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return path


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model."""


def load_checkpoint(path: str | os.PathLike | None = None, factory=digits_cnn) -> nn.Module:
    path = Path(path) if path is not None else CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    model = factory()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # torch raises many types for corrupt or mismatched files
        raise CheckpointError(f"{path}: cannot load checkpoint ({first_line(e)})") from None
    for name, p in model.state_dict().items():
        if not torch.isfinite(p).all():
            raise CheckpointError(f"{path}: parameter {name!r} contains NaN or infinity")
    model.eval()
    return model
