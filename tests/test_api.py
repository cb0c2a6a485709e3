"""The Python API: docs/api.md runs as written (a doctest), and its acceptance line."""
import doctest
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.icarus
@pytest.mark.yosys
@pytest.mark.slow
def test_api_doc_runs_as_written():
    res = doctest.testfile(str(ROOT / "docs" / "api.md"), module_relative=False,
                           optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 10 and res.failed == 0, f"{res.failed} of {res.attempted} examples failed (see above)"


@pytest.mark.icarus
@pytest.mark.slow
def test_one_line_quantize_and_cosim(tmp_path):
    code = "import quantrtl; r = quantrtl.cosim(quantrtl.quantize('shift4'), image=3); print(r.bit_exact)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"


def test_api_validates_before_work():
    import quantrtl
    from quantrtl.model.numbers.families import parse_format
    from quantrtl.util.errors import OptionError
    from tests.factories import random_network

    net = random_network(parse_format("shift4"))
    with pytest.raises(OptionError, match="lanes must be in 1..256, got 0"):
        quantrtl.cosim(net, lanes=0)
    with pytest.raises(OptionError, match="pipeline must be 0, 1 or 2, got 3"):
        quantrtl.verilog(net, "unused-out", pipeline=3)
    with pytest.raises(OptionError, match="net must be what quantize"):
        quantrtl.cosim(42)
    with pytest.raises(Exception, match="unknown quantizer 'shift9'|bit width 9 out of range"):
        quantrtl.quantize("shift9")
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        quantrtl.nothing  # noqa: B018
