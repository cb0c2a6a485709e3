"""Random integer artifacts for tests that need no torch (explicitly imported, no fixtures magic)."""
from __future__ import annotations

import numpy as np

from quantrtl.model.numbers.artifact import Layer, QuantizedNetwork, expected_out_shape
from quantrtl.model.numbers.families import families, method_names
from quantrtl.model.numbers.formats import ActivationFormat, ParamFormat, WeightFormat

# Every quantizer list of the tests comes from the family registry: a registered family
# (a toy one too) appears in every parametrization below without editing a test.

#: The seed methods' representative names (fitted per-layer parameters, binary activations).
METHOD_QUANTIZERS = method_names()
#: Every name of every family whose format has no fitted per-layer parameters.
PLAIN_NAMES = [n for f in families() if not issubclass(f.format, ParamFormat) for n in f.names]
#: The example names of the families whose formats fit per-layer parameters.
FITTED_NAMES = [n for f in families() if issubclass(f.format, ParamFormat) for n in f.examples]
#: Each family's representative (its first example name).
REPRESENTATIVES = [f.examples[0] for f in families()]
#: The representatives of the plain families whose layers read 8-bit activations.
PLAIN_REPRESENTATIVES = [f.examples[0] for f in families()
                         if not issubclass(f.format, ParamFormat) and not f.format.binary_input]
#: What the cosim tests run: every plain name, and each fitted family's representative.
COSIM_NAMES = PLAIN_NAMES + [f.examples[0] for f in families() if issubclass(f.format, ParamFormat)]


def format_for_test(name: str, seed: int = 0) -> WeightFormat:
    """``name``'s format, fitted to random weights when the family fits parameters."""
    from quantrtl.model.numbers.families import parse_format

    fmt = parse_format(name)
    return fitted_format(name, seed) if not fmt.fitted else fmt


def fitted_format(name: str, seed: int = 0) -> WeightFormat:
    """``name`` fitted to random pruned-looking (C=4, fan-in 36) weights."""
    from quantrtl.model.numbers.families import parse_format

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.2, size=(4, 4, 3, 3)) * (rng.random((4, 4, 3, 3)) < 0.6)
    return parse_format(name).encode(w).format


def _qp(rng, relu_out: bool = False) -> ActivationFormat:
    return ActivationFormat(scale=float(rng.uniform(0.01, 0.1)), zero_point=0 if relu_out else int(rng.integers(0, 256)))


def _weights(rng, fmt: WeightFormat, shape) -> dict:
    cout = shape[0]
    return dict(
        format=fmt,
        codes=rng.choice(fmt.code_space(), size=shape),
        bias=rng.integers(-5000, 5000, size=cout),
        m0=rng.integers(1 << 30, 1 << 31, size=cout),
        shift=rng.integers(20, 45, size=cout),
        weight_scale=rng.uniform(0.001, 0.1, size=cout),
    )


def random_network(fmt: WeightFormat, seed: int = 0, cin: int = 2, hw: int | tuple = 6, cout: int = 3,
                   classes: int = 4, kernel=(3, 3), stride=(1, 1), padding=(1, 1), pool=(2, 2, 0),
                   relu: bool = True) -> QuantizedNetwork:
    """conv2d(kernel, stride, padding, ReLU) → maxpool(k, s, p) → linear, random codes and constants."""
    rng = np.random.default_rng(seed)
    h, w = (hw, hw) if isinstance(hw, int) else hw
    qin = _qp(rng)
    conv = Layer(name="conv", op="conv2d", in_shape=(cin, h, w), out_shape=(cout, h, w), input=qin,
                 output=_qp(rng, relu_out=relu), kernel=tuple(kernel), stride=tuple(stride), padding=tuple(padding),
                 activation="relu" if relu else "none", **_weights(rng, fmt, (cout, cin) + tuple(kernel)))
    conv.out_shape = expected_out_shape(conv)
    pk, ps, pp = pool
    pool = Layer(name="pool", op="maxpool", in_shape=conv.out_shape, out_shape=conv.out_shape, input=conv.output,
                 output=conv.output, kernel=(pk, pk), stride=(ps, ps), padding=(pp, pp))
    pool.out_shape = expected_out_shape(pool)
    fan = int(np.prod(pool.out_shape))
    fc = Layer(name="fc", op="linear", in_shape=(fan,), out_shape=(classes,), input=pool.output,
               output=_qp(rng), activation="none", **_weights(rng, fmt, (classes, fan)))
    return QuantizedNetwork(name="random", quantizer=fmt.name, input_shape=(cin, h, w), input=qin,
                            layers=[conv, pool, fc], metadata={"seed": seed})
