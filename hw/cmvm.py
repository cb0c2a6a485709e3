"""Constant matrix-vector multiplication as an adder graph: ``y = W x`` for a constant
integer matrix ``W`` (Cout x N) and unsigned inputs ``x`` of ``in_bits`` bits, with no
multiplier (a hard-wired layer: every output channel at once).

Three steps, all exact integer arithmetic (no format knowledge):

1. **Canonical signed digits.** Each weight becomes its non-adjacent form
   ``w = sum_k d_k 2**k`` (``d_k`` in {-1, 0, 1}, no two adjacent nonzero digits): the
   fewest nonzero digits of any signed-digit form (Reitwiesner 1960), so a constant
   costs its nonzero digits minus one adders.  Output ``j`` is then a sum of *terms*
   ``±(x_i << k)``.
2. **Common subexpressions across output channels** (Hartley's two-term elimination,
   IEEE Trans. Circuits Syst. II 43(10), 1996, over the whole matrix): the most frequent
   pair of terms, up to a common shift and sign (``x_a + (x_b << d)`` or
   ``x_a - (x_b << d)``), becomes one adder whose output is a new operand; every output
   using the pair reads it instead.  Repeated while some pair occurs in two or more
   outputs (each extra use saves an adder).  A pair is taken only if its adder stays
   within ``max_depth`` levels (``None``: no limit), so subexpressions need not grow into
   long chains.  How "most frequent" is weighed (uses or outputs, less a charge for
   width and for a subtraction) is a :class:`Strategy`; every strategy of
   :data:`STRATEGIES` is run and the cheapest graph kept
   (:func:`adder_cost`, full-adder equivalents).
3. **Output sums.** Each output adds its positive terms and its negative terms apart
   (two at a time, Huffman's merge on width or on depth), then subtracts once: sums of
   like signs need no sign bits, and only an output whose every term is negative needs
   a final negation.

Every node carries the exact range of its values, so the hardware gives each adder the
smallest width that cannot overflow (``hw/unrolled.py`` builds it).
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

__all__ = ["csd_digits", "Node", "AdderGraph", "Strategy", "STRATEGIES", "adder_cost", "cmvm", "MAX_PAIRS", "MatrixTooLarge", "pair_count"]


def csd_digits(w: int) -> list[tuple[int, int]]:
    """The non-adjacent form of ``w``: ``[(k, d), ...]`` with ``w == sum(d << k)``,
    ``d`` in {-1, 1}, lowest ``k`` first, no two consecutive ``k``."""
    w = int(w)
    digits, k = [], 0
    while w:
        if w & 1:
            d = 2 - (w & 3)  # +1 when w = 1 (mod 4), -1 when w = 3 (mod 4)
            digits.append((k, d))
            w -= d
        w >>= 1
        k += 1
    return digits


@dataclass(frozen=True)
class Node:
    """An operand of the graph: input ``index`` (``a`` is None), or the adder
    ``a + sign * (b << shift_b)`` with ``a``'s own shift ``shift_a`` (one of the two
    shifts is 0); ``lo``..``hi`` its exact range, ``depth`` its adder levels."""

    id: int
    lo: int
    hi: int
    depth: int = 0
    index: int | None = None
    a: int | None = None
    b: int | None = None
    shift_a: int = 0
    shift_b: int = 0
    sign: int = 1

    @property
    def is_input(self) -> bool:
        return self.a is None


@dataclass
class AdderGraph:
    """The adders of ``y = W x`` (``nodes`` in topological order, inputs first) and each
    output as ``(node id, shift, sign)``: ``y_j = sign * (node << shift)``, or ``None`` for
    an all-zero row (``y_j = 0``)."""

    n_inputs: int
    in_bits: int
    nodes: list[Node]
    outputs: list[tuple[int, int, int] | None]
    shared: int = 0  # adders whose output is read by more than one output sum
    stats: dict = field(default_factory=dict)

    @property
    def adders(self) -> int:
        """Adders and subtractors, the final negations included."""
        return sum(1 for n in self.nodes if not n.is_input) + sum(1 for o in self.outputs if o and o[2] < 0)

    @property
    def depth(self) -> int:
        """Adder levels on the longest input-to-output path (a final negation counted)."""
        return max((self.nodes[o[0]].depth + (o[2] < 0) for o in self.outputs if o), default=0)

    def evaluate(self, x) -> np.ndarray:
        """The graph on integer inputs ``x`` (..., N): Python integers, no overflow."""
        x = np.asarray(x, dtype=object)
        vals: list = [None] * len(self.nodes)
        for n in self.nodes:
            if n.is_input:
                vals[n.id] = x[..., n.index]
            else:
                vals[n.id] = (vals[n.a] << n.shift_a) + n.sign * (vals[n.b] << n.shift_b)
        zero = np.zeros(x.shape[:-1], dtype=object)
        return np.stack([zero if o is None else o[2] * (vals[o[0]] << o[1]) for o in self.outputs], axis=-1)


class _Builder:
    def __init__(self, n_inputs: int, in_bits: int):
        hi = (1 << in_bits) - 1
        self.nodes = [Node(i, 0, hi, 0, index=i) for i in range(n_inputs)]
        self._memo: dict[tuple, int] = {}

    def range(self, a: int, sa: int, b: int, sb: int, sign: int) -> tuple[int, int]:
        """The exact range of ``(a << sa) + sign * (b << sb)``."""
        na, nb = self.nodes[a], self.nodes[b]
        blo, bhi = (nb.lo << sb, nb.hi << sb) if sign > 0 else (-(nb.hi << sb), -(nb.lo << sb))
        return (na.lo << sa) + blo, (na.hi << sa) + bhi

    def add(self, a: int, sa: int, b: int, sb: int, sign: int) -> int:
        """The node ``(a << sa) + sign * (b << sb)`` (one made before is reused)."""
        key = (a, sa, b, sb, sign)
        if key in self._memo:
            return self._memo[key]
        na, nb = self.nodes[a], self.nodes[b]
        node = Node(len(self.nodes), *self.range(a, sa, b, sb, sign), max(na.depth, nb.depth) + 1,
                    a=a, b=b, shift_a=sa, shift_b=sb, sign=sign)
        self.nodes.append(node)
        self._memo[key] = node.id
        return node.id


def _pair_key(t1, t2):
    """A pair of terms ``(node, shift, sign)`` up to a common shift and sign: (key, base
    shift, base sign); ``key = (a, b, d, rel)`` means ``x_a + rel * (x_b << d)`` when
    ``d >= 0``, ``(x_a << -d) + rel * x_b`` when ``d < 0``; ``a <= b``."""
    if (t2[0], t2[1]) < (t1[0], t1[1]):
        t1, t2 = t2, t1
    (a, sa, ga), (b, sb, gb) = t1, t2
    return (a, b, sb - sa, ga * gb), min(sa, sb), ga


@dataclass(frozen=True)
class Strategy:
    """How the greedy elimination ranks pairs and how the output sums pair terms.

    ``count_uses``: a pair's frequency is its uses (several in one output count) rather
    than the outputs it occurs in; ``width_weight`` / ``sub_weight``: the frequency less
    that times the adder's bits / less that for a subtraction (a signed result); the
    narrower adder breaks ties.  ``tree_by_width``: the output sums add the two narrowest
    terms first (else the two shallowest, then the narrowest)."""

    name: str
    count_uses: bool
    width_weight: float
    sub_weight: float
    tree_by_width: bool

    def score(self, uses: int, width: int, key: tuple) -> tuple:
        return (-(uses - self.width_weight * width - self.sub_weight * (key[3] < 0)), width)


#: Tried on every matrix; the cheapest graph by :func:`adder_cost` is kept.  (On the digits
#: conv2 matrices, 2026-12-03: "uses" is kept for fixed8 and shift3, "outputs-narrow" for
#: ternary; docs/results.md.)
STRATEGIES = (Strategy("uses", True, 0.0, 0.0, True),
              Strategy("outputs-narrow", False, 0.5, 0.5, True),
              Strategy("outputs-narrow-shallow", False, 0.5, 0.5, False))

#: The largest matrix :func:`cmvm` takes: the pairs of terms it counts (per output, digits
#: squared over two, summed), about a minute of Python here (the digits conv2 in fixed8 has
#: 0.25 M).
MAX_PAIRS = 4_000_000


def pair_count(weights) -> int:
    """The pairs of canonical-signed-digit terms :func:`cmvm` counts for ``weights``."""
    w = np.asarray(weights)
    per = [sum(len(csd_digits(v)) for v in row) for row in w.reshape(w.shape[0], -1)]
    return sum(d * (d - 1) // 2 for d in per)


#: A bit position where only one operand (and the carry) is present: a half adder, about
#: this fraction of a full adder's gates.
HALF_ADDER = 0.45


def adder_cost(graph: "AdderGraph") -> float:
    """The graph's adders in full-adder equivalents, the model that picks among
    :data:`STRATEGIES`: per adder, the bit positions above the lower shift (below it one
    operand passes through: wiring) where both operands have a bit, sign extensions and a
    subtrahend's inverted high bits included, count 1; where only one does, a half adder
    (:data:`HALF_ADDER`); a final negation is half adders at its width."""
    total = 0.0
    for n in graph.nodes:
        if n.is_input:
            continue
        a, b = graph.nodes[n.a], graph.nodes[n.b]
        top_a, top_b = n.shift_a + _bits(a.lo, a.hi), n.shift_b + _bits(b.lo, b.hi)
        for bit in range(max(n.shift_a, n.shift_b), _bits(n.lo, n.hi)):
            both = (bit < top_a or a.lo < 0) and (bit < top_b or b.lo < 0 or n.sign < 0)
            total += 1.0 if both else HALF_ADDER
    for o in graph.outputs:
        if o and o[2] < 0:
            total += HALF_ADDER * _bits(graph.nodes[o[0]].lo, graph.nodes[o[0]].hi)
    return total


def _bits(lo: int, hi: int) -> int:
    return max(hi, -lo - 1, 1).bit_length() + (lo < 0)


def cmvm(weights, in_bits: int = 8, max_depth: int | None = None, strategies=STRATEGIES) -> AdderGraph:
    """The adder graph of ``y = weights @ x`` (weights: integers, Cout x N; x: unsigned
    ``in_bits``-bit), the cheapest of ``strategies`` by :func:`adder_cost`.
    ``max_depth``: the deepest a shared subexpression may be (adder levels; the output
    sums add theirs on top)."""
    w = np.asarray(weights)
    if w.ndim != 2:
        raise ValueError(f"weights must be a matrix (Cout x N), got shape {w.shape}")
    if w.size and not np.array_equal(w, np.round(w)):
        raise ValueError("weights must be integers")
    pairs = pair_count(w)
    if pairs > MAX_PAIRS:
        raise MatrixTooLarge(pairs, w.shape)
    w = w.astype(object)
    return min((_cmvm(w, in_bits, max_depth, s) for s in strategies), key=adder_cost)


class MatrixTooLarge(ValueError):
    """A matrix with more than :data:`MAX_PAIRS` pairs of terms to count."""

    def __init__(self, pairs: int, shape: tuple[int, int]):
        self.pairs, self.shape = pairs, tuple(shape)
        super().__init__(f"a {shape[0]} x {shape[1]} matrix has {pairs:,} pairs of signed-digit terms to count, "
                         f"more than {MAX_PAIRS:,}")


def _cmvm(w: np.ndarray, in_bits: int, max_depth: int | None, strategy: Strategy) -> AdderGraph:
    """One strategy's graph of the checked integer matrix ``w`` (dtype object)."""
    cout, n = w.shape
    g = _Builder(n, in_bits)
    # each output: its terms (node, shift, sign), kept as a set (a term appears once)
    terms: list[set] = [{(i, k, d) for i in range(n) for k, d in csd_digits(w[j, i])} for j in range(cout)]
    digits = sum(len(t) for t in terms)
    # occurrences: key -> {output: count of disjoint pairs available there (upper bound)}
    occ: dict[tuple, dict[int, int]] = defaultdict(lambda: defaultdict(int))

    for j in range(cout):
        ts = sorted(terms[j])
        for x_, t in enumerate(ts):
            for u in ts[x_ + 1:]:
                occ[_pair_key(t, u)[0]][j] += 1

    def width(key):  # the bits of the adder the pair would be (its exact range)
        a, b, d, rel = key
        return _bits(*g.range(a, max(0, -d), b, max(0, d), rel))

    def outputs_with(key) -> int:  # the outputs the pair can still be taken from
        return sum(1 for c in occ[key].values() if c > 0)

    def priority(key):
        uses = sum(occ[key].values()) if strategy.count_uses else outputs_with(key)
        return (*strategy.score(uses, width(key), key), key)

    heap = [priority(k) for k in occ if outputs_with(k) >= 2]
    heapq.heapify(heap)
    shared: list[int] = []  # the subexpressions taken
    while heap:
        top = heapq.heappop(heap)
        key = top[-1]
        if key not in occ:
            continue
        now = priority(key)
        if now != top:  # stale: counts changed since it was pushed
            if outputs_with(key) >= 2:
                heapq.heappush(heap, now)
            continue
        a, b, d, rel = key
        depth = max(g.nodes[a].depth, g.nodes[b].depth) + 1
        if max_depth is not None and depth > max_depth:
            continue
        sa, sb = max(0, -d), max(0, d)
        # take the pair wherever it can be taken (each term once)
        uses = []
        for j in [j for j, c in occ[key].items() if c > 0]:
            ts = terms[j]
            by_node = defaultdict(list)
            for t in ts:
                by_node[t[0]].append(t)
            found = []
            used = set()
            for t in sorted(by_node[a]):
                if t in used:
                    continue
                for u in sorted(by_node[b]):
                    if u in used or u == t:
                        continue
                    if _pair_key(t, u)[0] == key:
                        p1, p2 = (t, u) if (t[0], t[1]) <= (u[0], u[1]) else (u, t)
                        found.append((p1, p2))
                        used.update((t, u))
                        break
            if found:
                uses.append((j, found))
        if len(uses) < 2:
            occ.pop(key, None)
            continue
        v = g.add(a, sa, b, sb, rel)
        shared.append(v)
        for j, found in uses:
            ts = terms[j]
            for p1, p2 in found:
                base_shift, base_sign = min(p1[1], p2[1]), p1[2]
                for t in (p1, p2):
                    ts.discard(t)
                    for u in ts:
                        k2 = _pair_key(t, u)[0]
                        c = occ.get(k2)
                        if c is not None and c.get(j, 0) > 0:
                            c[j] -= 1
                new = (v, base_shift, base_sign)
                for u in ts:
                    k2 = _pair_key(new, u)[0]
                    occ[k2][j] += 1
                    if outputs_with(k2) >= 2:
                        heapq.heappush(heap, priority(k2))
                ts.add(new)
        if key in occ and outputs_with(key) >= 2:
            heapq.heappush(heap, priority(key))
    outputs = [_sum_terms(g, sorted(ts), strategy.tree_by_width) for ts in terms]
    used_by = defaultdict(set)
    for j, o in enumerate(outputs):
        if o is not None:
            stack = [o[0]]
            seen = set()
            while stack:
                i = stack.pop()
                if i in seen or g.nodes[i].is_input:
                    continue
                seen.add(i)
                used_by[i].add(j)
                stack += [g.nodes[i].a, g.nodes[i].b]
    graph = AdderGraph(n, in_bits, g.nodes, outputs, shared=sum(1 for s in used_by.values() if len(s) > 1))
    graph.stats = {"digits": digits, "subexpressions": len(shared), "shared_nodes": shared,
                   "nonzero_weights": int(np.count_nonzero(w)), "strategy": strategy.name}
    return graph


def _sum_terms(g: _Builder, ts: list, by_width: bool) -> tuple[int, int, int] | None:
    """One output's terms summed: the positive ones and the negative ones apart (sums of
    like signs need no sign bits), then one subtraction; (node, shift, sign)."""
    pos = _tree(g, [t for t in ts if t[2] > 0], by_width)
    neg = _tree(g, [t for t in ts if t[2] < 0], by_width)
    if pos is None or neg is None:
        return pos or neg
    base = min(pos[1], neg[1])
    return g.add(pos[0], pos[1] - base, neg[0], neg[1] - base, -1), base, 1


def _tree(g: _Builder, ts: list, by_width: bool) -> tuple[int, int, int] | None:
    """Terms of one sign added two at a time, the two narrowest first (``by_width``) or
    the two shallowest (then narrowest): Huffman's merge on width or depth."""
    if not ts:
        return None

    def key(t):
        n = g.nodes[t[0]]
        width = _bits(n.lo, n.hi) + t[1]
        return width if by_width else (n.depth, width)

    heap = [(key(t), k, t) for k, t in enumerate(ts)]
    heapq.heapify(heap)
    count = len(heap)
    while len(heap) > 1:
        _, _, t1 = heapq.heappop(heap)
        _, _, t2 = heapq.heappop(heap)
        base = min(t1[1], t2[1])
        t = (g.add(t1[0], t1[1] - base, t2[0], t2[1] - base, 1), base, t1[2])
        heapq.heappush(heap, (key(t), count, t))
        count += 1
    return heap[0][2]
