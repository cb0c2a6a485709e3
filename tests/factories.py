"""Random integer artifacts for tests that need no torch (explicitly imported, no fixtures magic)."""
from __future__ import annotations

import numpy as np

from quantrtl.model.numbers.artifact import Layer, QuantizedNetwork, expected_out_shape
from dataclasses import replace

from quantrtl.model.numbers.families import families, family, method_names
from quantrtl.model.numbers.formats import ActivationFormat, ParamFormat, WeightFormat

# Every quantizer list of the tests comes from the family registry: a registered family
# (a toy one too) appears in every parametrization below without editing a test.

#: The seed methods' representative names (fitted per-layer parameters, binary activations).
METHOD_QUANTIZERS = method_names()
#: The families whose datapath is a MAC array of per-weight PEs (``pq`` has an engine of its own).
PE_FAMILIES = [f for f in families() if f.pe is not None]
#: The representatives of the seed methods that run on a MAC array.
MAC_METHODS = [f.examples[0] for f in PE_FAMILIES if f.method]
#: The families with an engine of their own instead of a PE.
ENGINE_FAMILIES = [f for f in families() if f.pe is None]
#: Every name of every family whose format has no fitted per-layer parameters.
PLAIN_NAMES = [n for f in families() if not issubclass(f.format, ParamFormat) for n in f.names]
#: The example names of the families whose formats fit per-layer parameters.
FITTED_NAMES = [n for f in families() if issubclass(f.format, ParamFormat) for n in f.examples]
#: Those of them with a per-weight PE.
FITTED_PE_NAMES = [n for f in PE_FAMILIES if issubclass(f.format, ParamFormat) for n in f.examples]
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


def layer_codes(rng, fmt: WeightFormat, shape, source=None) -> tuple[WeightFormat, np.ndarray]:
    """Random codes a layer of ``shape`` (reading a ``source`` map, for a linear layer) may
    hold, and their format: any code at any weight for a PE family; for a family whose
    format fits its structure to the layer (an engine of its own: pq), the codes of random
    weights, encoded by the format refitted to this layer."""
    if family(fmt.family).pe is not None:
        return fmt, rng.choice(fmt.code_space(), size=shape)
    spec = replace(fmt, **{p: None for p in fmt.PARAMS})
    spec = spec.for_input(tuple(source)) if source is not None and len(shape) == 2 else spec
    q = spec.encode(rng.normal(size=shape))
    return q.format, q.codes


def _weights(rng, fmt: WeightFormat, shape, source=None) -> dict:
    cout = shape[0]
    fmt, codes = layer_codes(rng, fmt, shape, source)
    return dict(
        format=fmt,
        codes=codes,
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
               output=_qp(rng), activation="none", **_weights(rng, fmt, (classes, fan), pool.out_shape))
    return QuantizedNetwork(name="random", quantizer=fmt.name, input_shape=(cin, h, w), input=qin,
                            layers=[conv, pool, fc], metadata={"seed": seed})


def pool_layer(op: str, in_shape, kernel=(2, 2), stride=None, padding=(0, 0), seed: int = 0,
               rescale: bool = False) -> Layer:
    """An ``avgpool``/``gap``/``maxpool`` layer on ``in_shape`` with a random input format
    (a non-zero zero point) and §9's constants for ``1/(kh·kw)``; ``rescale``: an average
    with an output format of its own (``S_in / (S_out·kh·kw)``, as imported models have)."""
    from quantrtl.model.numbers.artifact import quantize_multiplier

    rng = np.random.default_rng(seed)
    qin = _qp(rng)
    if op == "gap":
        kernel, stride, padding = tuple(in_shape[1:]), tuple(in_shape[1:]), (0, 0)
    kernel, stride = tuple(kernel), tuple(stride or kernel)
    qout = _qp(rng) if rescale else qin
    m0, n = quantize_multiplier(qin.scale / (qout.scale * kernel[0] * kernel[1]))
    layer = Layer(name=op, op=op, in_shape=tuple(in_shape), out_shape=tuple(in_shape), input=qin, output=qout,
                  kernel=kernel, stride=stride, padding=tuple(padding),
                  m0=np.array([m0]) if op != "maxpool" else None, shift=np.array([n]) if op != "maxpool" else None)
    layer.out_shape = expected_out_shape(layer)
    return layer


def grouped_conv_layer(fmt: WeightFormat, seed: int = 0, cin: int = 4, cout: int = 4, groups: int = 4, hw=5,
                       kernel=(3, 3), stride=(1, 1), padding=(1, 1), relu: bool = True) -> Layer:
    """A conv2d with ``groups`` (depthwise when groups == cin), random codes and constants."""
    rng = np.random.default_rng(seed)
    h, w = (hw, hw) if isinstance(hw, int) else hw
    layer = Layer(name="gconv", op="conv2d", in_shape=(cin, h, w), out_shape=(cout, h, w), input=_qp(rng),
                  output=_qp(rng, relu_out=relu), kernel=tuple(kernel), stride=tuple(stride), padding=tuple(padding),
                  activation="relu" if relu else "none", groups=groups,
                  **_weights(rng, fmt, (cout, cin // groups) + tuple(kernel)))
    layer.out_shape = expected_out_shape(layer)
    return layer


def join_layer(op: str, shapes: list[tuple], seed: int = 0, relu: bool = False, last_bits: int = 8) -> Layer:
    """An ``add`` (two inputs of ``shapes[0]``) or ``concat`` (inputs of ``shapes``) layer with
    random input and output formats (non-zero zero points) and their §8/§10 constants;
    ``last_bits``: the last input's code width (16: a wide conv output, §8)."""
    from quantrtl.model.numbers.artifact import add_multipliers, quantize_multiplier

    rng = np.random.default_rng(seed)
    fmts = tuple(_qp(rng) for _ in shapes)
    if last_bits != 8:  # a fine scale over a wide range, as an un-quantized conv branch gets
        fmts = fmts[:-1] + (ActivationFormat(scale=fmts[-1].scale / 64, bits=last_bits,
                                             zero_point=int(rng.integers(1, (1 << last_bits) - 1))),)
    out = ActivationFormat(scale=float(rng.uniform(0.01, 0.1)), zero_point=int(rng.integers(0, 256)))
    if op == "add":
        consts = add_multipliers([f.scale for f in fmts], out.scale)
        out_shape = tuple(shapes[0])
    else:
        consts = [quantize_multiplier(f.scale / out.scale) for f in fmts]
        out_shape = (sum(s[0] for s in shapes),) + tuple(shapes[0][1:])
    return Layer(name=op, op=op, in_shape=tuple(shapes[0]), out_shape=out_shape, input=fmts[0], output=out,
                 activation="relu" if relu else "none", inputs=tuple(f"in{j}" for j in range(len(shapes))),
                 input_formats=fmts, m0=np.array([c[0] for c in consts]), shift=np.array([c[1] for c in consts]))


def random_graph_network(fmt: WeightFormat, seed: int = 0, c: int = 2, hw: int = 4, classes: int = 3,
                         relu: bool = True) -> QuantizedNetwork:
    """A residual block, depthwise conv, average pooling, concat and global average pooling,
    random codes and constants, non-zero zero points::

        conv (c→c, 3×3) → dw (groups c) → pw (1×1) ─┐
           └──────────── skip ──────────────────── add (ReLU) → avgpool 2×2 ─┬→ conv3 ─┐
                                                                             └─────── cat → gap → fc
    """
    from quantrtl.model.numbers.artifact import add_multipliers, quantize_multiplier

    rng = np.random.default_rng(seed)
    qin = _qp(rng)

    def conv(name, src, inp, groups=1, k=3, act=True):
        layer = Layer(name=name, op="conv2d", in_shape=(c, hw, hw), out_shape=(c, hw, hw), input=inp,
                      output=_qp(rng, relu_out=act and relu), kernel=(k, k), stride=(1, 1), padding=(k // 2, k // 2),
                      activation="relu" if act and relu else "none", groups=groups, inputs=(src,),
                      **_weights(rng, fmt, (c, c // groups, k, k)))
        return layer

    first = conv("conv", "input", qin)
    dw = conv("dw", "conv", first.output, groups=c)
    pw = conv("pw", "dw", dw.output, k=1, act=False)
    out = ActivationFormat(scale=float(rng.uniform(0.01, 0.1)), zero_point=0 if relu else int(rng.integers(0, 256)))
    consts = add_multipliers([first.output.scale, pw.output.scale], out.scale)
    add = Layer(name="add", op="add", in_shape=(c, hw, hw), out_shape=(c, hw, hw), input=first.output, output=out,
                activation="relu" if relu else "none", inputs=("conv", "pw"), input_formats=(first.output, pw.output),
                m0=np.array([m for m, _ in consts]), shift=np.array([n for _, n in consts]))
    m0, n = quantize_multiplier(0.25)
    h2 = hw // 2
    pool = Layer(name="pool", op="avgpool", in_shape=(c, hw, hw), out_shape=(c, h2, h2), input=out, output=out,
                 kernel=(2, 2), stride=(2, 2), inputs=("add",), m0=np.array([m0]), shift=np.array([n]))
    conv3 = Layer(name="conv3", op="conv2d", in_shape=(c, h2, h2), out_shape=(c, h2, h2), input=out, output=_qp(rng),
                  kernel=(3, 3), stride=(1, 1), padding=(1, 1), activation="none", inputs=("pool",),
                  **_weights(rng, fmt, (c, c, 3, 3)))
    cat_out = _qp(rng)
    cc = [quantize_multiplier(f.scale / cat_out.scale) for f in (out, conv3.output)]
    cat = Layer(name="cat", op="concat", in_shape=(c, h2, h2), out_shape=(2 * c, h2, h2), input=out, output=cat_out,
                inputs=("pool", "conv3"), input_formats=(out, conv3.output), m0=np.array([m for m, _ in cc]),
                shift=np.array([s for _, s in cc]))
    g0, gn = quantize_multiplier(1.0 / (h2 * h2))
    gap = Layer(name="gap", op="gap", in_shape=(2 * c, h2, h2), out_shape=(2 * c, 1, 1), input=cat_out, output=cat_out,
                kernel=(h2, h2), stride=(h2, h2), inputs=("cat",), m0=np.array([g0]), shift=np.array([gn]))
    fc = Layer(name="fc", op="linear", in_shape=(2 * c,), out_shape=(classes,), input=cat_out, output=_qp(rng),
               activation="none", inputs=("gap",), **_weights(rng, fmt, (classes, 2 * c), (2 * c, 1, 1)))
    return QuantizedNetwork(name="graph", quantizer=fmt.name, input_shape=(c, hw, hw), input=qin,
                            layers=[first, dw, pw, add, pool, conv3, cat, gap, fc], metadata={"seed": seed})
