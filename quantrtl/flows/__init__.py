"""Flows that wire the stages together, one module per flow.

Each flow is a function that validates its arguments first (an options object per flow,
raising :class:`~quantrtl.util.errors.OptionError` that names the parameter) and returns a
frozen result dataclass; the command line only parses arguments and formats these results,
and :mod:`quantrtl` exposes them as the Python API.
"""
from quantrtl.flows.common import (DEFAULT_FINETUNE, DEMO_QUANTIZERS, DIGITS, KEEP, MAX_LANES, SHIPPED_MODELS,
                                   HardwareOptions, ModelSource, OptionError, artifact_stem, check_sparse,
                                   load_data, resolve_quantizer, tool_versions, write_json)
from quantrtl.flows.cosim import CosimOptions, CosimResult, cosim_flow, resolve_image
from quantrtl.flows.gates import ASIC_TARGETS, STYLES, GatesOptions, GatesResult, check_dsp, check_target, gates_flow, \
    sparse_gates_flow
from quantrtl.flows.quantize import (QuantizedRun, QuantizeOptions, QuantizeResult, method_finetune, method_format,
                                     network_for, quantize_flow, quantize_network)
from quantrtl.flows.train import TrainResult, train_flow
from quantrtl.flows.verilog import VerilogOptions, VerilogResult, verilog_flow

__all__ = ["DEFAULT_FINETUNE", "DEMO_QUANTIZERS", "DIGITS", "KEEP", "MAX_LANES", "SHIPPED_MODELS", "resolve_quantizer",
           "HardwareOptions", "ModelSource", "OptionError", "artifact_stem", "check_sparse",
           "load_data", "tool_versions", "write_json", "CosimOptions", "CosimResult", "cosim_flow", "resolve_image",
           "STYLES", "ASIC_TARGETS", "check_dsp", "check_target", "GatesOptions", "GatesResult", "gates_flow", "sparse_gates_flow", "QuantizedRun",
           "QuantizeOptions", "QuantizeResult", "method_finetune", "method_format", "network_for", "quantize_flow",
           "quantize_network", "TrainResult", "train_flow", "VerilogOptions", "VerilogResult", "verilog_flow"]
