"""The network top: the layer engines of a whole artifact, joined by streams as its
graph says.

A layer's output feeds every layer that reads it: one reader by a plain stream link, more
through a *fork* (each reader sees ``valid`` only when all the others are ready, and the
value moves on when all take it).  A residual block's skip path is a fork to the add's
first input, whose join engine buffers the whole map while the branch computes
(``hw/join.py``), so neither branch waits for the other.

Ports: ``inp`` (the image, stream order), ``out`` (the last layer's outputs, e.g. the
logits) and, with ``taps=True``, one observe-only port per inner layer,
``tap_<layer>`` = {payload, valid}, that pulses with each handshake of that layer's
output (so a testbench can check every layer without slowing the design).
"""
from __future__ import annotations

from math import prod

import operator

from amaranth.hdl import Module, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from quantrtl.model.numbers.artifact import INPUT, QuantizedNetwork

from quantrtl.hw.arith import all_of
from quantrtl.hw.cyclemodel import run_network
from quantrtl.hw.engines import make_engine, sparse_mode
from quantrtl.hw.join import JoinEngine
from quantrtl.hw.parts import code_width
from quantrtl.util.lanes import check_plan_layers, lanes_for, parse_lanes

__all__ = ["NetworkTop", "TapSignature"]



def TapSignature(width: int = 8) -> wiring.Signature:
    return wiring.Signature({"payload": Out(unsigned(width)), "valid": Out(1)})


def _check_wide_codes(net: QuantizedNetwork) -> None:
    """A wide (over 8-bit) code is an add's operand only (docs/integer-semantics.md §8):
    every reader of such a layer is an add, and the network's output is 8-bit."""
    for layer in net.layers:
        if code_width(layer.output) == 8:
            continue
        readers = [r for r in net.layers if layer.name in net.sources(r)]
        if not readers or any(r.op != "add" for r in readers):
            raise ValueError(f"layer {layer.name!r}: its {layer.output.bits}-bit output codes feed "
                             + (", ".join(f"{r.name!r} ({r.op})" for r in readers) if readers else "the network output")
                             + "; only an add reads codes wider than 8 bits")


class NetworkTop(wiring.Component):
    """All layers of ``net`` as one streaming design.

    Parameters
    ----------
    net : QuantizedNetwork
    lanes : int or dict
        MAC lanes of every conv2d/linear engine, or a plan per layer (``{"conv1": 8, "*": 32}``,
        :mod:`quantrtl.util.lanes`).
    sparse, index_bits : str, int
        Zero-skipping engines, ``"row"`` (``hw/sparse.py``) or ``"broadcast"``
        (``hw/broadcast.py``), with relative indices of ``index_bits`` bits (False: dense).
    pipeline : int
        MAC array pipeline stages (0..2).
    taps : bool
        Expose ``tap_<layer>`` ports for every layer but the last.
    tap_faults : dict, optional
        Injected control faults, layer name → fan-in position (``hw/faults.py``).
    fifo_depths : dict, optional
        A streaming join's FIFO depths (join name → a depth per input) instead of the cycle
        model's (:attr:`fifo_depths`): to see what a smaller FIFO does.
    """

    def __init__(self, net: QuantizedNetwork, lanes: int | dict = 8, pipeline: int = 0, taps: bool = False,
                 sparse: bool | str = False, index_bits: int = 4, tap_faults: dict[str, int] | None = None,
                 fifo_depths: dict[str, list[int]] | None = None):
        self.net = net
        self._fifo_override = {k: [int(d) for d in v] for k, v in (fifo_depths or {}).items()}
        self.lanes = parse_lanes(lanes)
        check_plan_layers(self.lanes, [l.name for l in net.layers], [l.name for l in net.layers if l.has_weights])
        self.pipeline = operator.index(pipeline)
        self.sparse = sparse_mode(sparse)
        self.engines = {}
        shapes = {INPUT: tuple(net.input_shape)}
        for layer in net.layers:
            srcs = net.sources(layer)
            self.engines[layer.name] = make_engine(
                layer, lanes=lanes_for(self.lanes, layer.name) if layer.has_weights else 1, pipeline=self.pipeline,
                source_shape=shapes[srcs[0]] if layer.kind.flattens else None,
                source_shapes=[shapes[s] for s in srcs],
                sparse=sparse, index_bits=index_bits,
                tap_fault=(tap_faults or {}).get(layer.name))
            shapes[layer.name] = tuple(layer.out_shape)
        _check_wide_codes(net)
        self.tap_names = [l.name for l in net.layers[:-1]] if taps else []
        members = {"inp": In(stream.Signature(unsigned(8))), "out": Out(stream.Signature(unsigned(8)))}
        members.update({f"tap_{n}": Out(TapSignature(code_width(net.layer(n).output))) for n in self.tap_names})
        super().__init__(members)

    def _input_ports(self, name: str) -> list:
        e = self.engines[name]
        return e.inputs if isinstance(e, JoinEngine) else [e.inp]

    # ---- the cycle model of a streaming design (hw/cyclemodel.py) --------------------
    @property
    def streaming(self) -> bool:
        """Every engine streams (the stream style): the design's cycles, initiation interval
        and FIFO depths come from the cycle model, not the load-then-compute formulas."""
        return all(hasattr(e, "cycle_node") for e in self.engines.values()) and any(
            hasattr(e, "stream") for e in self.engines.values())

    def schedule(self, images: int = 1, unbounded: bool = False):
        """The cycle model's run of ``images`` images back to back (cached): the design's
        FIFOs at their depths, or ``unbounded`` (what sizes them); None for a design that
        does not stream."""
        if not self.streaming:
            return None
        key = (images, unbounded)
        cache = self.__dict__.setdefault("_schedules", {})
        if key not in cache:
            if not unbounded:
                self.fifo_depths  # noqa: B018 (sizes the FIFOs first)
            nodes = {n: (e.cycle_node(unbounded=unbounded) if isinstance(e, JoinEngine) else e.cycle_node())
                     for n, e in self.engines.items()}
            order = [l.name for l in self.net.layers]
            sources = {l.name: self.net.sources(l) for l in self.net.layers}
            bound = 4 * sum(e.expected_cycles for e in self.engines.values()) + 1000
            cache[key] = run_network(order, sources, nodes, prod(self.net.input_shape),
                                     prod(self.net.layers[-1].out_shape), images, bound)
        return cache[key]

    #: Images the FIFOs are sized over: the most a co-simulation batch streams back to back.
    SIZING_IMAGES = 8

    @property
    def fifo_depths(self) -> dict[str, list[int]]:
        """Per streaming join, per input, its FIFO's depth: the skew between the join's
        inputs over :data:`SIZING_IMAGES` images back to back (``hw/cyclemodel.py``: the
        smallest depth at which no input waits at a full FIFO while the join waits for
        another); set on the join engines the first time it is asked."""
        if "_fifo_depths" not in self.__dict__:
            depths = {}
            if self.streaming:
                skew = self.schedule(self.SIZING_IMAGES, unbounded=True).skew_hwm
                for name, marks in skew.items():
                    depths[name] = self._fifo_override.get(name) or [max(1, m) for m in marks]
                    self.engines[name].depths = depths[name]
            unknown = set(self._fifo_override) - set(depths)
            if unknown:
                raise ValueError(f"fifo_depths names {', '.join(sorted(unknown))}: no streaming join of the design "
                                 f"({', '.join(depths) or 'it has none'})")
            self.__dict__["_fifo_depths"] = depths
        return self.__dict__["_fifo_depths"]

    @property
    def expected_cycles(self) -> int:
        """Cycles for one image, first input handshake to last output handshake.

        A layer loads while the layers it reads emit; its last input handshake *is* the
        last output handshake of the last of them to finish, after which it needs a fixed
        tail (its cycles less its largest input).  So, with ``T(input) = in_size``:
        ``T(layer) = max(T(its inputs)) + cycles(layer) − max(in_size of its inputs)``,
        and the network's cycles are ``T(last layer)``; for a chain, ``in_size(first) +
        sum(cycles(layer) − in_size(layer))``.  Exact for one image: a fork waits for all
        its readers, and every reader is loading then.  A streaming design: the cycle
        model's latency of one image.
        """
        if self.streaming:
            return self.schedule(1).latencies[0]
        tails = self.tails()
        t = {INPUT: tails[INPUT]}
        for layer in self.net.layers:
            t[layer.name] = max(t[s] for s in self.net.sources(layer)) + tails[layer.name]
        return t[self.net.layers[-1].name]

    def tails(self) -> dict[str, int]:
        """Per node, the cycles from its last input handshake to its last output handshake
        (the input: its size, one value per cycle)."""
        tails = {INPUT: prod(self.net.input_shape)}
        for layer in self.net.layers:
            e = self.engines[layer.name]
            tails[layer.name] = e.expected_cycles - (max(e.in_sizes) if isinstance(e, JoinEngine) else prod(layer.in_shape))
        return tails

    def occupancy(self) -> dict[str, int]:
        """Per layer, the cycles its engine is busy with one image when images stream
        back to back.  A single-buffered engine takes its input at its producer's pace and
        then needs its own tail before it takes the next image; its producer meanwhile
        loads its own next input and computes ahead until its output blocks (a dense
        engine's ``head_start``; as far as the consumer's tail leaves time for), so the
        input phase is the producer's tail less that.  A join loads into its second buffer
        meanwhile, so only its tail counts."""
        tails = self.tails()
        occ: dict[str, int] = {}
        # an engine that streams through (ReLU, a table activation: no map of its own) hands
        # its producer's pace on: a reader loads for as long as the producer behind it emits
        # (a registered stage's cycle of latency is matched by the value it holds, which lets
        # the producer run one value further ahead)
        behind: dict[str, str] = {INPUT: INPUT}  # node → the producer whose pace it carries
        for layer in self.net.layers:
            name = layer.name
            srcs = self.net.sources(layer)
            behind[name] = behind[srcs[0]] if getattr(self.engines[name], "streams_through", False) else name
            if isinstance(self.engines[name], JoinEngine):
                occ[name] = tails[name]
                continue
            loading = 0
            for src in srcs:
                p = behind[src]
                ahead = 0
                if p != INPUT:
                    spare = tails[name] - (occ[p] - tails[p])  # the consumer's tail less the producer's loading
                    ahead = max(0, min(getattr(self.engines[p], "head_start", 0), spare))
                loading = max(loading, tails[p] - ahead)
            occ[name] = loading + tails[name]
        return occ

    @property
    def initiation_interval(self) -> int:
        """Cycles between successive images streamed back to back, by the formula: the
        slowest layer's :meth:`occupancy` (cosim measures the interval; docs/cosim.md).
        A streaming design: the cycle model's interval between the last two of
        :data:`SIZING_IMAGES` images."""
        if self.streaming:
            return self.schedule(self.SIZING_IMAGES).intervals[-1]
        return max(self.occupancy().values())

    def batch_interval(self, images: int) -> int | None:
        """The interval between the last two of ``images`` images streamed back to back (what
        a co-simulation batch of that many measures): the cycle model's for a streaming
        design, the steady-state formula's otherwise (and for a batch of one)."""
        if images >= 2 and self.streaming:
            return self.schedule(images).intervals[-1]
        return self.initiation_interval

    @property
    def memory_bits(self) -> dict[str, int]:
        self.fifo_depths  # noqa: B018 (a streaming join's FIFOs are sized first)
        total: dict[str, int] = {}
        for e in self.engines.values():
            for k, v in e.memory_bits.items():
                total[k] = total.get(k, 0) + v
        return total

    def elaborate(self, platform):
        m = Module()
        self.fifo_depths  # noqa: B018 (a streaming join's FIFOs are sized before they are built)
        for name, e in self.engines.items():
            m.submodules[name] = e
        readers: dict[str, list] = {INPUT: []}
        for layer in self.net.layers:
            readers.setdefault(layer.name, [])
            for src, port in zip(self.net.sources(layer), self._input_ports(layer.name)):
                readers[src].append(port)
        for src, ports in readers.items():
            producer = self.inp if src == INPUT else self.engines[src].out
            if not ports:  # the last layer: the network's output
                connect(m, producer, wiring.flipped(self.out))
                continue
            if len(ports) == 1:  # a plain link
                connect(m, wiring.flipped(self.inp) if src == INPUT else producer, ports[0])
                if src in self.tap_names:
                    tap = getattr(self, f"tap_{src}")
                    m.d.comb += [tap.payload.eq(producer.payload), tap.valid.eq(producer.valid & ports[0].ready)]
                continue
            # a fork: each reader sees valid when every other reader is ready too, and the
            # producer moves on when all of them take the value (one handshake for all)
            all_ready = all_of([p.ready for p in ports])
            m.d.comb += producer.ready.eq(all_ready)
            for i, p in enumerate(ports):
                others = all_of([producer.valid] + [q.ready for j, q in enumerate(ports) if j != i])
                m.d.comb += [p.valid.eq(others), p.payload.eq(producer.payload)]
            if src in self.tap_names:
                tap = getattr(self, f"tap_{src}")
                m.d.comb += [tap.payload.eq(producer.payload), tap.valid.eq(producer.valid & all_ready)]
        return m
