"""The cosim flow: one inference in RTL (cocotb on Icarus or Verilator) against golden."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from quantrtl.flows.common import DEFAULT_FINETUNE, DIGITS, HardwareOptions, ModelSource, load_data
from quantrtl.flows.quantize import network_for
from quantrtl.model.numbers import artifact
from quantrtl.model.numbers.families import parse_format
from quantrtl.util.atomic import atomic_write
from quantrtl.util.errors import OptionError

__all__ = ["CosimOptions", "CosimResult", "resolve_image", "cosim_flow"]


@dataclass(frozen=True)
class CosimOptions(HardwareOptions):
    """One co-simulation (:class:`HardwareOptions`, and the image, the simulator, waves,
    the build folder), validated on construction.  ``fault=(layer, index)`` (tests)
    corrupts one weight code in the generated hardware only."""

    image: str | int = 0
    simulator: str = "icarus"
    waves: bool = False
    build_root: str | Path = "build/cosim"
    fault: tuple[str, int] | None = None

    def __post_init__(self):
        from quantrtl.sim.runner import check_simulator

        super().__post_init__()
        check_simulator(self.simulator)


@dataclass(frozen=True)
class CosimResult:
    quantizer: str
    image: str
    label: int | None
    predicted: int | None
    golden_predicted: int
    bit_exact: bool
    cycles: int
    expected_cycles: int
    simulator: str
    lanes: int
    wall_seconds: float
    build_seconds: float
    run_seconds: float
    layers: list
    first_mismatch: dict | None
    timed_out: bool
    verilog: str
    waves: str | None


def resolve_image(image: str | int, source: ModelSource = DIGITS):
    """``N`` (index into the digits test split, or into ``--calib``) or a digits-style image
    file → (integer input, label or None, description)."""
    from quantrtl.model.digits import load_image

    text = str(image)
    if text.isdigit():
        _, test, _, labelled = load_data(source)
        i = int(text)
        if not 0 <= i < len(test.x):
            what = "the digits test split" if labelled else f"{{1}} {source.calib}"
            raise OptionError(("image", "calib"), f"{i}: {what} has images 0..{len(test.x) - 1}")
        return test.x[i], int(test.y[i]) if labelled else None, f"test[{i}]" if labelled else f"calib[{i}]"
    if source.calib is not None:
        raise OptionError(("image", "calib"), "with {1}, {0} must be an index into the calibration data")
    return load_image(text), None, text


def cosim_flow(quantizer: str, image: str | int = 0, simulator: str = "icarus", lanes: int = 8,
               waves: bool = False, artifact_path: str | Path | None = None, finetune: int = DEFAULT_FINETUNE,
               build_root: str | Path = "build/cosim", fault: tuple[str, int] | None = None,
               source: ModelSource = DIGITS, sparse: bool = False, index_bits: int = 4) -> CosimResult:
    """One inference in RTL (cocotb on Icarus or Verilator) checked against the golden model
    (:class:`CosimOptions` says what each argument means)."""
    CosimOptions(quantizer=quantizer, image=image, simulator=simulator, lanes=lanes, waves=waves,
                 artifact=artifact_path, finetune=finetune, build_root=build_root, fault=fault, source=source,
                 sparse=sparse, index_bits=index_bits)
    fmt = parse_format(quantizer)
    from quantrtl.hw.harness import CaptureHarness
    from quantrtl.hw.network import NetworkTop
    from quantrtl.hw.verilog import to_verilog
    from quantrtl.model.numbers.layout import to_stream
    from quantrtl.sim import cosim, golden
    from quantrtl.sim.runner import run_cocotb

    x, label, desc = resolve_image(image, source)
    t0 = time.perf_counter()
    qnet = network_for(fmt, artifact_path, finetune, source)
    if tuple(x.shape) != tuple(qnet.input_shape):
        raise OptionError("image", f"{desc} has shape {tuple(x.shape)}, the model's input is {tuple(qnet.input_shape)}")
    gold = golden.run(qnet, x)
    hw_net = qnet if fault is None else artifact.with_corrupted_code(qnet, *fault)
    harness = CaptureHarness(NetworkTop(hw_net, lanes=lanes, taps=True, sparse=sparse, index_bits=index_bits))
    top = f"{qnet.name}_{qnet.quantizer}_cosim"
    text = to_verilog(harness, top)
    variant = (f"-sparse{index_bits}" if sparse else "") + ("-fault" if fault else "") + ("-waves" if waves else "")
    build_dir = Path(build_root) / f"{qnet.name}-{qnet.quantizer}-p{lanes}-{simulator}{variant}"
    v_path = build_dir / f"{top}.v"
    if not v_path.is_file() or v_path.read_text() != text:  # unchanged Verilog keeps the simulator build
        atomic_write(v_path, text)
    job = {"input": [int(v) for v in to_stream(x, qnet.input_shape)], "captures": harness.captures,
           "timeout_cycles": 4 * harness.expected_cycles + 1000}
    run = run_cocotb(v_path, top, simulator, build_dir, job, waves=waves)
    report = cosim.compare(qnet, gold, run.result, lanes, [n for n, _ in harness.captures], sparse=sparse)
    return CosimResult(
        quantizer=qnet.quantizer, image=desc, label=label, predicted=report.predicted,
        golden_predicted=report.golden_predicted, bit_exact=report.bit_exact, cycles=report.cycles,
        expected_cycles=harness.expected_cycles, simulator=simulator, lanes=lanes,
        wall_seconds=time.perf_counter() - t0, build_seconds=run.build_seconds, run_seconds=run.run_seconds,
        layers=[asdict(l) for l in report.layers],
        first_mismatch=None if report.first_mismatch is None else asdict(report.first_mismatch),
        timed_out=report.timed_out, verilog=str(v_path), waves=run.waves)
