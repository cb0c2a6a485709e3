"""cocotb test module: inferences through the capture harness (hw/harness.py).

Run by :mod:`sim.runner` inside the simulator.  The job (the image streams, captures to
read, timeout) comes from the JSON file named by ``QUANTRTL_COSIM_JOB``; the raw results
(per image: captured values, counts, cycle stamps) go to the file named by
``QUANTRTL_COSIM_RESULT``.  Comparing with the golden model happens outside, in one place
(:mod:`sim.cosim`).  Many images run in one simulator process: between images the
design is reset (its state, not its memories' contents; every capture count restarts).
Python touches the clock only while an image streams in; then it waits for ``done`` and
reads the capture memories through the simulator's handles (no clock, no time steps).
"""
from __future__ import annotations

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, RisingEdge, Timer

from quantrtl.sim.compare import X_VALUE

CLOCK_NS = 10


class CosimBench:
    """Owns the clock, the reset, the input stream driver and the capture readout."""

    def __init__(self, dut, job: dict):
        self.dut, self.job = dut, job

    async def start(self):
        cocotb.start_soon(Clock(self.dut.clk, CLOCK_NS, unit="ns", impl="gpi").start())
        await self.reset()

    async def reset(self):
        self.dut.inp__valid.value = 0
        self.dut.inp__payload.value = 0
        self.dut.rd_sel.value = 0
        self.dut.rd_addr.value = 0
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await FallingEdge(self.dut.clk)

    async def send(self, values):
        """Drive the input stream, one value per handshake.

        Right after ``RisingEdge`` signals still show their pre-edge values (cocotb 2
        samples before the edge's updates settle), so ``ready`` read there tells whether
        that edge took the value.
        """
        dut = self.dut
        dut.inp__valid.value = 1
        for v in values:
            dut.inp__payload.value = int(v)
            await RisingEdge(dut.clk)
            while not int(dut.inp__ready.value):
                await RisingEdge(dut.clk)
        dut.inp__valid.value = 0

    async def wait_done(self, timeout_cycles: int) -> bool:
        if int(self.dut.done.value):
            return True
        await First(RisingEdge(self.dut.done), Timer(timeout_cycles * CLOCK_NS, unit="ns"))
        await FallingEdge(self.dut.clk)
        return bool(int(self.dut.done.value))

    async def read(self, sel: int, name: str) -> dict:
        """Capture ``sel`` (memory ``cap_<name>``): its count and cycle stamps through the
        ``rd_*`` ports, its values straight from the memory (the count says how many hold
        this image's values)."""
        dut = self.dut
        dut.rd_sel.value = sel
        await Timer(1, unit="ns")
        count = int(dut.rd_count.value)
        mem = getattr(dut, f"cap_{name}")
        size = len(mem)
        # a value with X or Z bits (a 4-state simulator) is recorded as -1: a mismatch, shown as X
        values = [v.to_unsigned() if v.is_resolvable else X_VALUE
                  for v in (mem[addr].value for addr in range(min(count, size)))]
        return {"values": values, "count": count, "first": int(dut.rd_first.value), "last": int(dut.rd_last.value)}

    async def infer(self, stream) -> dict:
        """One image: stream it in, wait for ``done``, read every capture."""
        dut = self.dut
        await self.send(stream)
        done = await self.wait_done(self.job["timeout_cycles"])
        result = {"done": done, "cycles": int(dut.cycles.value), "in_last": int(dut.in_last.value), "captures": {}}
        for sel, (name, _) in enumerate(self.job["captures"]):
            result["captures"][name] = await self.read(sel, name)
        return result


@cocotb.test()
async def inference(dut):
    with open(os.environ["QUANTRTL_COSIM_JOB"]) as f:
        job = json.load(f)
    bench = CosimBench(dut, job)
    await bench.start()
    results = []
    for i, stream in enumerate(job["inputs"]):
        if i:
            await bench.reset()
        results.append(await bench.infer(stream))
    with open(os.environ["QUANTRTL_COSIM_RESULT"], "w") as f:
        json.dump({"images": results}, f)
