"""The cycle model of a network of streaming engines (pure Python, no Amaranth).

A streaming network's timing is not a sum of per-layer terms: an engine starts an output
row as soon as the rows under it have arrived, so its pace depends on its producer's, and a
slow consumer's full line buffer holds its producer back.  This model steps every engine's
*control* cycle by cycle, as the RTL does (``hw/stream.py``: the line-buffer writer's free
slots, the window walk and its row gating, the MAC array's pipeline, the output bank and
register; a join's FIFOs), with no data, and the network top's links and forks between
them: valid and ready are evaluated each cycle from the state (ready backwards, valid
forwards), the handshakes happen, every node steps.  Its results are what the formulas
give for a streaming design and what co-simulation checks, cycle for cycle:

* per image, the first input handshake and the last output handshake (the latency, and
  the initiation interval between successive images);
* per join input, the skew between the join's inputs (:class:`JoinNode`'s shadow): the
  smallest FIFO depth at which that input never waits at a full FIFO while the join waits
  for another input (a skew stall, what deadlocks a residual block's fork); with one less,
  the first time the skew exceeds it an input waits so;
* a deadlock (FIFOs too small: a fork waits on a join that waits on the fork) is reported
  naming the nodes that wait, instead of running for ever.

Each engine gives its node through ``cycle_node()``; a network with an engine that has
none (a load-then-compute engine) has no cycle model here (``NetworkTop`` then uses the
load-then-compute formulas).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WindowNode", "GapNode", "JoinNode", "PassNode", "RegisterNode", "Schedule", "Deadlock", "run_network"]


class Deadlock(RuntimeError):
    """No handshake anywhere for longer than any engine waits on its own."""


def _clip(v: int, hi: int) -> int:
    return min(max(v, 0), hi)


class WindowNode:
    """A line-buffered window engine (conv, depthwise, linear over its map, pooling): the
    writer, the window walk (``middle × inner`` steps a pixel), ``1 + pipeline`` stages to
    the array's ``done``, the output bank (``groups`` values a capture; the last channel
    group ``last_group``) and the output register."""

    __slots__ = ("g", "rows", "per_row", "inner_n", "middle_n", "pipe", "counts", "wpos", "mid", "free", "wy",
                 "ahead", "inner", "middle", "ox", "oy", "issued_all", "done", "remaining", "out_valid", "cg",
                 "last_by_release", "top")

    def __init__(self, sg, pipeline: int, groups: list[int]):
        g = self.g = sg.conv
        self.rows, self.per_row = sg.rows, g.w * g.cin
        self.inner_n, self.middle_n = sg.inner, sg.middle
        self.counts = groups  # values per capture, channel group by channel group
        self.wpos, self.mid, self.free, self.wy, self.ahead = 0, False, self.rows, 0, False
        self.inner = self.middle = self.ox = self.oy = 0
        self.issued_all = False
        self.pipe, self.top = 0, 1 << pipeline  # the stages' last-step flags as bits, stage 0 lowest
        self.done = False
        self.remaining, self.out_valid, self.cg = 0, False, 0
        self.last_by_release = g.h - _clip((g.oh - 1) * g.sh - g.ph, g.h)

    def in_ready(self, out_ready: bool) -> bool:
        return self.mid or self.free > 0

    def step(self, accepts, out_ready: bool) -> None:
        g = self.g
        by = self.oy * g.sh - g.ph
        issuing = not self.issued_all and (self.ahead or self.wy > min(by + g.kh - 1, g.h - 1))
        take = (not self.out_valid or out_ready) and self.remaining != 0
        bank_free = self.remaining == 0 or (self.remaining == 1 and take)
        en = not self.done or bank_free
        capture = self.done and bank_free
        release, finish = 0, False
        last_step = self.inner == self.inner_n - 1
        if self.issued_all and self.ahead:  # the image's end
            release, finish, self.issued_all = self.last_by_release, True, False
            self.inner = self.middle = self.ox = self.oy = 0
        elif en and issuing:
            if last_step:
                self.inner = 0
                if self.middle == self.middle_n - 1:
                    self.middle = 0
                    if self.ox == g.ow - 1:
                        self.ox = 0
                        if self.oy == g.oh - 1:
                            self.oy, self.issued_all = 0, True
                        else:
                            release = _clip(by + g.sh, g.h) - _clip(by, g.h)
                            self.oy += 1
                    else:
                        self.ox += 1
                else:
                    self.middle += 1
            else:
                self.inner += 1
        if en:
            self.done = bool(self.pipe & self.top)
            self.pipe = ((self.pipe << 1) | (issuing and last_step)) & (2 * self.top - 1)
        if take:
            self.out_valid, self.remaining = True, self.remaining - 1
        elif out_ready:
            self.out_valid = False
        if capture:
            self.remaining = self.counts[self.cg]
            self.cg = self.cg + 1 if self.cg + 1 < len(self.counts) else 0
        # the writer
        accept = accepts[0]
        self.free += release - (1 if accept and not self.mid else 0)
        if finish:
            self.ahead = False
        if accept:
            self.mid = True
            if self.wpos == self.per_row - 1:
                self.wpos, self.mid = 0, False
                if self.wy == g.h - 1:
                    self.wy, self.ahead = 0, True
                else:
                    self.wy += 1
            else:
                self.wpos += 1


class GapNode:
    """Global average pooling's running sums: takes a map, then sends its ``C`` sums."""

    __slots__ = ("channels", "size", "taken", "draining", "d", "out_valid")

    def __init__(self, channels: int, size: int):
        self.channels, self.size = channels, size
        self.taken, self.draining, self.d, self.out_valid = 0, False, 0, False

    def in_ready(self, out_ready: bool) -> bool:
        return not self.draining

    def step(self, accepts, out_ready: bool) -> None:
        if self.draining and (not self.out_valid or out_ready):
            self.out_valid = True
            if self.d == self.channels - 1:
                self.d, self.draining = 0, False
            else:
                self.d += 1
        elif out_ready:
            self.out_valid = False
        if accepts[0]:
            self.taken += 1
            if self.taken == self.size:
                self.taken, self.draining, self.d = 0, True, 0


class JoinNode:
    """An add (every input's next value) or a concat (per pixel each input's channels in
    turn) over per-input FIFOs of ``depths`` (None: unbounded), with their high-water marks.

    A *shadow* join beside it takes the same arrivals and issues whenever its operands are
    there, as if its output were never held up: its FIFOs' high-water marks are the skew
    between the inputs, the depths at which an input never waits at a full FIFO while the
    join waits for another input (a *skew stall*: the wait that deadlocks a fork that feeds
    both, as a residual block's does).  The design's depths are the shadow's marks."""

    __slots__ = ("channels", "depths", "count", "hwm", "sel", "local", "out_valid", "add", "shadow", "shadow_hwm",
                 "shadow_sel", "shadow_local")

    def __init__(self, add: bool, channels: list[int], depths: list[int | None]):
        self.add, self.channels, self.depths = add, channels, depths
        self.count = [0] * len(channels)
        self.hwm = [0] * len(channels)
        self.sel = self.local = 0
        self.out_valid = False
        self.shadow = [0] * len(channels)
        self.shadow_hwm = [0] * len(channels)
        self.shadow_sel = self.shadow_local = 0

    def input_ready(self, j: int) -> bool:
        return self.depths[j] is None or self.count[j] != self.depths[j]

    def issuable(self) -> bool:
        return all(c != 0 for c in self.count) if self.add else self.count[self.sel] != 0

    def _pops(self, count, sel, local, go: bool):
        if self.add:
            issuing = all(c != 0 for c in count)
            return [go and issuing] * len(count), sel, local
        if go and count[sel] != 0:
            pops = [j == sel for j in range(len(count))]
            if local == self.channels[sel] - 1:
                return pops, sel + 1 if sel + 1 < len(self.channels) else 0, 0
            return pops, sel, local + 1
        return [False] * len(count), sel, local

    def step(self, accepts, out_ready: bool) -> None:
        en = not self.out_valid or out_ready
        issuing = self.issuable()
        pops, self.sel, self.local = self._pops(self.count, self.sel, self.local, en)
        spops, self.shadow_sel, self.shadow_local = self._pops(self.shadow, self.shadow_sel, self.shadow_local, True)
        for j, a in enumerate(accepts):
            c = self.count[j] + a - pops[j]
            self.count[j] = c
            if c > self.hwm[j]:
                self.hwm[j] = c
            c = self.shadow[j] + a - spops[j]
            self.shadow[j] = c
            if c > self.shadow_hwm[j]:
                self.shadow_hwm[j] = c
        if en:
            self.out_valid = issuing


class PassNode:
    """A combinational stage (ReLU): ready and valid pass straight through."""

    passes = True


class RegisterNode:
    """One registered stage that takes a value while empty or being emptied (a table look-up)."""

    __slots__ = ("out_valid",)

    def __init__(self):
        self.out_valid = False

    def in_ready(self, out_ready: bool) -> bool:
        return not self.out_valid or out_ready

    def step(self, accepts, out_ready: bool) -> None:
        if accepts[0]:
            self.out_valid = True
        elif out_ready:
            self.out_valid = False


@dataclass(frozen=True)
class Schedule:
    """What :func:`run_network` measured, cycles counted from the first input handshake (1)."""

    #: per image, the cycle of its first input handshake and of its last output handshake
    first_in: tuple[int, ...]
    last_out: tuple[int, ...]
    #: per join, per input, the most values its FIFO held
    fifo_hwm: dict[str, tuple[int, ...]]
    #: per join, per input, the most its shadow FIFO held (the inputs' skew: the depth it needs)
    skew_hwm: dict[str, tuple[int, ...]]
    #: per join, per input, the cycles a value waited at a full FIFO while the join waited
    #: for another input (skew stalls: none at the depths of :attr:`skew_hwm`)
    skew_stalls: dict[str, tuple[int, ...]]

    @property
    def latencies(self) -> list[int]:
        return [b - a + 1 for a, b in zip(self.first_in, self.last_out)]

    @property
    def intervals(self) -> list[int]:
        return [b - a for a, b in zip(self.last_out, self.last_out[1:])]


def run_network(order: list[str], sources: dict[str, list[str]], nodes: dict, in_size: int, out_size: int,
                images: int, stall_limit: int) -> Schedule:
    """Step the network ``order`` (node names in a topological order; ``sources[n]`` the
    producers of each input of node ``n``, ``"input"`` for the image) with ``images`` images
    streamed back to back into the first and the last node's output always ready.
    ``stall_limit``: cycles without any handshake after which it is a :class:`Deadlock`."""
    n_nodes = len(order)
    index = {n: i for i, n in enumerate(order)}
    INP = n_nodes  # the image source, as a producer
    srcs = [[INP if s == "input" else index[s] for s in sources[n]] for n in order]
    readers: list[list[tuple[int, int]]] = [[] for _ in range(n_nodes + 1)]
    for i, ss in enumerate(srcs):
        for j, s in enumerate(ss):
            readers[s].append((i, j))
    objs = [nodes[n] for n in order]
    kinds = [2 if isinstance(o, PassNode) else 1 if isinstance(o, JoinNode) else 0 for o in objs]
    last = n_nodes - 1
    in_ready = [[True] * len(ss) for ss in srcs]
    out_ready = [True] * (n_nodes + 1)
    valid = [False] * (n_nodes + 1)
    fire = [False] * (n_nodes + 1)
    joins = [i for i in range(n_nodes) if kinds[i] == 1]
    full = {i: [0] * len(srcs[i]) for i in joins}
    first_in, last_out = [], []
    total_in = images * in_size
    fed = sent = cycle = quiet = 0
    rev = list(range(n_nodes - 1, -1, -1))
    fwd = list(range(n_nodes))
    # per producer its readers, per reader of a fork the other readers (as flat index lists)
    others = {(i, j): [(a, b) for a, b in readers[s] if (a, b) != (i, j)] for i, ss in enumerate(srcs)
              for j, s in enumerate(ss)}
    pass_src = [srcs[i][0] if kinds[i] == 2 else -1 for i in range(n_nodes)]
    steppers = [(i, objs[i], srcs[i]) for i in fwd if kinds[i] != 2]
    while len(last_out) < images:
        # ready, backwards: a node's output is ready when all its readers are
        for i in rev:
            r = True
            if i != last:
                for a, b in readers[i]:
                    if not in_ready[a][b]:
                        r = False
                        break
            out_ready[i] = r
            k = kinds[i]
            if k == 0:
                in_ready[i][0] = objs[i].in_ready(r)
            elif k == 2:
                in_ready[i][0] = r
            else:
                ir, o = in_ready[i], objs[i]
                for j in range(len(ir)):
                    ir[j] = o.input_ready(j)
        src_ready = True
        for a, b in readers[INP]:
            if not in_ready[a][b]:
                src_ready = False
                break
        # valid, forwards (a pass-through node's is its producer's, as that reader sees it)
        valid[INP] = v = fed < total_in
        fire[INP] = f_in = v and src_ready
        any_fire = f_in
        for i in fwd:
            s = pass_src[i]
            if s >= 0:
                v = valid[s]
                if v:
                    for a, b in others[(i, 0)]:
                        if not in_ready[a][b]:
                            v = False
                            break
            else:
                v = objs[i].out_valid
            valid[i] = v
            f = v and out_ready[i]
            fire[i] = f
            if f:
                any_fire = True
        if f_in:
            if fed % in_size == 0:
                first_in.append(cycle + 1)
            fed += 1
        if fire[last]:
            sent += 1
            if sent % out_size == 0:
                last_out.append(cycle + 1)
        for i in joins:  # a skew stall: the input offers a value (as it sees it), the FIFO is full, the join starves
            if not objs[i].issuable():
                f = full[i]
                for j, s in enumerate(srcs[i]):
                    if valid[s] and not in_ready[i][j] and all(in_ready[a][b] for a, b in others[(i, j)]):
                        f[j] += 1
        for i, o, ss in steppers:
            o.step([fire[s] for s in ss] if len(ss) > 1 else (fire[ss[0]],), out_ready[i])
        cycle += 1
        quiet = 0 if any_fire else quiet + 1
        if quiet > stall_limit:
            waiting = [order[i] for i in joins
                       if any(valid[s] and not in_ready[i][j] for j, s in enumerate(srcs[i]))]
            raise Deadlock(f"no handshake for {quiet} cycles at cycle {cycle}: "
                           + (f"join {', '.join(waiting)} waits with a full FIFO" if waiting else
                              "the network stopped") + f" ({len(last_out)} of {images} images out)")
    return Schedule(tuple(first_in), tuple(last_out), {order[i]: tuple(objs[i].hwm) for i in joins},
                    {order[i]: tuple(objs[i].shadow_hwm) for i in joins},
                    {order[i]: tuple(full[i]) for i in joins})
