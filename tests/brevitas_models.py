"""Brevitas models for the QONNX import tests, and the recipe of the shipped example
``model/data/digits_brevitas.onnx`` (``python -m tests.brevitas_models`` rewrites it).

Brevitas is a test-only dependency; nothing in quantrtl imports it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

EXAMPLE = Path(__file__).resolve().parent.parent / "model" / "data" / "digits_brevitas.onnx"
#: The residual block as Brevitas users write it (``relu_q(x + conv(x))``, no Quant on the conv branch).
HIDDEN_EXAMPLE = EXAMPLE.with_name("digits_brevitas_residual.onnx")


class _DigitsBackbone(nn.Module):
    """What both example networks share: an 8-bit input quantizer, an 8-bit-weight stem conv
    and its QuantReLU, then (after the block) average pooling re-quantized to 8 bits and an
    8-bit QuantLinear head. The modules are created in the order of the network (the seeded
    initialization of the shipped recipes depends on it): ``_stem`` first, ``_head`` last."""

    def _stem(self, abits: int) -> None:
        import brevitas.nn as qnn

        self.inp = qnn.QuantIdentity(bit_width=8)
        self.stem = qnn.QuantConv2d(1, 8, 3, padding=1, weight_bit_width=8, bias=True)
        self.relu1 = qnn.QuantReLU(bit_width=abits)

    def _head(self) -> None:
        import brevitas.nn as qnn

        self.pool = nn.AvgPool2d(2)
        self.poolq = qnn.QuantIdentity(bit_width=8)
        self.fc = qnn.QuantLinear(8 * 16, 10, weight_bit_width=8, bias=True)

    def forward(self, x):
        x = self.block(self.relu1(self.stem(self.inp(x))))
        return self.fc(torch.flatten(self.poolq(self.pool(x)), 1))


class QuantResidual(_DigitsBackbone):
    """QuantConv2d (incl. depthwise), QuantReLU, a residual add, average pooling and
    QuantLinear, with ``wbits``-bit weights and ``abits``-bit activations inside (8-bit
    input, stem weights and head)."""

    def __init__(self, wbits: int = 4, abits: int = 4):
        super().__init__()
        import brevitas.nn as qnn

        self._stem(abits)
        self.dw = qnn.QuantConv2d(8, 8, 3, padding=1, groups=8, weight_bit_width=wbits, bias=True)
        self.relu2 = qnn.QuantReLU(bit_width=abits)
        self.pw = qnn.QuantConv2d(8, 8, 1, weight_bit_width=wbits, bias=True)
        self.pwq = qnn.QuantIdentity(bit_width=abits)
        self.relu3 = qnn.QuantReLU(bit_width=abits)
        self._head()

    def block(self, x):
        return self.relu3(x + self.pwq(self.pw(self.relu2(self.dw(x)))))


class HiddenResidual(_DigitsBackbone):
    """The residual block of Brevitas' own examples: ``QuantReLU(x + QuantConv2d(x))``, the
    conv branch's output not quantized before the add (4-bit weights, 8-bit activations).
    ``shared``: one QuantIdentity quantizes both branches instead (``relu(q(x) + q(conv(x)))``)."""

    def __init__(self, wbits: int = 4, abits: int = 8, shared: bool = False):
        super().__init__()
        import brevitas.nn as qnn

        self.shared = shared
        self._stem(abits)
        self.conv = qnn.QuantConv2d(8, 8, 3, padding=1, weight_bit_width=wbits, bias=True)
        if shared:
            self.q = qnn.QuantIdentity(bit_width=abits)
        self.relu2 = qnn.QuantReLU(bit_width=abits)
        self._head()

    def block(self, x):
        return self.relu2(self.q(x) + self.q(self.conv(x))) if self.shared else self.relu2(x + self.conv(x))


def train_and_export(path: str | Path, epochs: int, wbits: int = 4, abits: int = 4, seed: int = 0,
                     model_class=QuantResidual, **options) -> float:
    """Quantization-aware training on the digits data, then Brevitas' QONNX export;
    returns the test accuracy of the trained Brevitas model."""
    from brevitas.export import export_qonnx

    from quantrtl.model.digits import load_split
    from quantrtl.model.training.net import accuracy, fit, predict, single_thread

    train, test = load_split()
    with single_thread():
        torch.manual_seed(seed)
        model = model_class(wbits, abits, **options)
        fit(model, train, epochs, 2e-3, 32, seed)
    model.eval()
    acc = accuracy(predict(model, test), test.y)
    export_qonnx(model, input_t=torch.tensor(test.float_inputs()[:1]), export_path=str(path), dynamo=False)
    return acc


if __name__ == "__main__":
    print(f"test accuracy {train_and_export(EXAMPLE, epochs=20):.4f}; wrote {EXAMPLE}")
    acc = train_and_export(HIDDEN_EXAMPLE, epochs=20, wbits=4, abits=8, model_class=HiddenResidual)
    print(f"test accuracy {acc:.4f}; wrote {HIDDEN_EXAMPLE}")
