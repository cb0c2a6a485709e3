"""cocotb test module: batches of inferences through the capture harness (hw/harness.py).

Run by :mod:`sim.runner` inside the simulator.  The job (the images, the batch size, the
captures to read, the timeout) comes from the JSON file named by ``QUANTRTL_COSIM_JOB``;
the raw results (per image: captured values, counts, cycle stamps) go to the file named
by ``QUANTRTL_COSIM_RESULT``.  Comparing with the golden model happens outside, in one
place (:mod:`sim.cosim`).

Per batch: the images go to ``inputs.hex``, the simulator loads them into the harness's
source memory, the design is reset (its state, not its memories' contents), ``go``
streams them back to back; Python then waits for ``done`` (no clock edge in Python),
the simulator dumps every capture memory to a file at once, and Python reads the few
cycle stamps through the ``rd_*`` ports.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, RisingEdge, Timer

from quantrtl.sim.compare import X_VALUE


def read_hex(path: Path, count: int) -> list[int]:
    """The first ``count`` words of a ``$writememh`` file; a word with X or Z digits
    (a 4-state simulator's unwritten or unknown bits) is recorded as -1."""
    words = []
    for line in path.read_text().splitlines():
        for word in line.split("//")[0].split():
            if word.startswith("@") or len(words) == count:
                continue
            words.append(int(word, 16) if all(c in "0123456789abcdefABCDEF" for c in word) else X_VALUE)
    return words


class CosimBench:
    """Owns the reset, the batch loading and the capture read-out, and the clock when the
    Verilog wrapper does not make it (cocotb's GPI clock: no Python per cycle either)."""

    def __init__(self, dut, job: dict):
        self.dut, self.job = dut, job
        self.n_captures = len(job["captures"])

    async def start(self):
        if self.job["testbench_clock"]:  # (else the Verilog wrapper makes the clock)
            cocotb.start_soon(Clock(self.dut.clk, self.job["clock_ns"], unit="ns", impl="gpi").start())
        dut = self.dut
        for sig in (dut.reset, dut.load, dut.go, dut.dump, dut.n_images, dut.rd_sel, dut.rd_img):
            sig.value = 0
        await FallingEdge(self.dut.clk)

    async def pulse(self, sig):
        sig.value = 1
        await Timer(1, unit="ns")
        sig.value = 0
        await Timer(1, unit="ns")

    async def reset(self):
        dut = self.dut
        dut.go.value = 0
        dut.reset.value = 1
        await ClockCycles(dut.clk, 3)
        dut.reset.value = 0
        await ClockCycles(dut.clk, 2)  # the harness registers reset
        await FallingEdge(dut.clk)

    async def wait_done(self, timeout_cycles: int) -> bool:
        if int(self.dut.done.value):
            return True
        await First(RisingEdge(self.dut.done), Timer(timeout_cycles * self.job["clock_ns"], unit="ns"))
        await FallingEdge(self.dut.clk)
        return bool(int(self.dut.done.value))

    async def stamps(self, sel: int, images: int) -> tuple[int, list[int], list[int]]:
        """Capture ``sel``'s total count and its per-image first and last cycle stamps."""
        dut = self.dut
        dut.rd_sel.value = sel
        firsts, lasts = [], []
        for k in range(images):
            dut.rd_img.value = k
            await Timer(1, unit="ns")
            firsts.append(int(dut.rd_first.value))
            lasts.append(int(dut.rd_last.value))
        return int(dut.rd_count.value), firsts, lasts

    async def batch(self, streams: list[list[int]]) -> list[dict]:
        """Stream the images back to back; one raw result per image."""
        dut, n = self.dut, len(streams)
        values = [v for s in streams for v in s]
        values += [0] * (len(streams[0]) * self.job["batch"] - len(values))  # a short batch fills the memory up
        Path(self.job["source_file"]).write_text("\n".join(f"{v:02x}" for v in values) + "\n")
        await self.reset()
        await self.pulse(dut.load)
        dut.n_images.value = n
        dut.go.value = 1
        await ClockCycles(dut.clk, 1)  # the harness registers n_images and go
        await FallingEdge(dut.clk)
        done = await self.wait_done(self.job["timeout_cycles"] * n)
        dut.go.value = 0
        cycles = int(dut.cycles.value)
        fifos = [{"join": name, "input": j, "high_water": int(getattr(dut, f"fifo_hwm{k}").value),
                  "stall_cycles": int(getattr(dut, f"fifo_stalls{k}").value)}
                 for k, (name, j) in enumerate(self.job.get("fifos", []))]
        await self.pulse(dut.dump)
        _, in_first, in_last = await self.stamps(self.n_captures, n)
        results = [{"done": done, "batch_position": k, "in_first": in_first[k], "in_last": in_last[k],
                    "batch_cycles": cycles, "captures": {}, "fifos": fifos} for k in range(n)]
        for sel, (name, size) in enumerate(self.job["captures"]):
            count, firsts, lasts = await self.stamps(sel, n)
            # one value more than the batch holds shows as "extra" (-1) on the last image
            values = read_hex(Path(self.job["capture_files"][sel]), min(count, size * n))
            for k, r in enumerate(results):
                got = values[k * size:(k + 1) * size]
                taken = max(0, min(count - k * size, size))
                extra = 1 if k == n - 1 and count > size * n else 0
                r["captures"][name] = {"values": got[:taken], "count": taken + extra,
                                       "first": firsts[k] if taken else 0, "last": lasts[k] if taken else 0}
        for r in results:  # latency: first input handshake to last output handshake, inclusive
            out = r["captures"][self.job["captures"][-1][0]]
            r["cycles"] = out["last"] - r["in_first"] + 1 if out["count"] else 0
        return results


@cocotb.test()
async def inference(dut):
    with open(os.environ["QUANTRTL_COSIM_JOB"]) as f:
        job = json.load(f)
    bench = CosimBench(dut, job)
    await bench.start()
    results, inputs, b = [], job["inputs"], job["batch"]
    for i in range(0, len(inputs), b):
        results.extend(await bench.batch(inputs[i:i + b]))
    with open(os.environ["QUANTRTL_COSIM_RESULT"], "w") as f:
        json.dump({"images": results}, f)
