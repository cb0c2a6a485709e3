"""Hostile and careless inputs on the newer surfaces (ONNX attributes and constants,
calibration data, user models, output paths, option combinations, the Python API): each
is exit 2 with one line naming the culprit, no traceback, nothing written over."""
import copy
import shutil

import numpy as np
import pytest

from quantrtl.cli import main
from tests.test_robustness import assert_one_line_error

EXAMPLE = "model/data/digits_brevitas.onnx"


# ---- calibration data that does not fit the model ----------------------------------

@pytest.mark.parametrize("model, shape, must", [
    ("resnet8", (4, 3, 16, 16), "resnet8 takes inputs of shape (N, 3, 32, 32), the file holds (4, 3, 16, 16)"),
    ("resnet8", (4, 1, 32, 32), "(N, 3, 32, 32), the file holds (4, 1, 32, 32)"),
    ("dscnn", (4, 1, 10, 49), "dscnn takes inputs of shape (N, 1, 49, 10)"),  # transposed MFCCs
    ("digits", (4, 1, 16, 16), "digits takes inputs of shape (N, 1, 8, 8)"),
    (EXAMPLE, (4, 1, 16, 16), f"{EXAMPLE} takes inputs of shape (N, 1, 8, 8), the file holds (4, 1, 16, 16)"),
])
@pytest.mark.parametrize("command", ["quantize", "cosim"])
def test_a_models_input_shape_is_fixed(tmp_path, capsys, model, shape, must, command):
    calib = tmp_path / "c.npy"
    np.save(calib, np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32))
    extra = ["--finetune", "0"] + (["--out", str(tmp_path / "a")] if command == "quantize" else [])
    rc = main([command, "--quantizer", "fixed8", "--model", model, "--calib", str(calib), *extra])
    assert_one_line_error(capsys, 2, rc, must)
    assert not (tmp_path / "a").exists()


def test_an_onnx_models_own_quantization_checks_the_input_shape(tmp_path, capsys):
    calib = tmp_path / "c.npy"
    np.save(calib, np.zeros((4, 1, 16, 16), np.float32))
    rc = main(["quantize", "--quantizer", "keep", "--model", EXAMPLE, "--calib", str(calib), "--out", str(tmp_path / "a")])
    assert_one_line_error(capsys, 2, rc, f"{EXAMPLE} takes inputs of shape (N, 1, 8, 8), the file holds (4, 1, 16, 16)")


def test_an_npz_is_not_a_calibration_array(tmp_path, capsys):
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3, 32, 32), np.float32))
    rc = main(["quantize", "--quantizer", "fixed8", "--model", "resnet8", "--calib", str(tmp_path / "c.npz"),
               "--out", str(tmp_path / "a")])
    assert_one_line_error(capsys, 2, rc, "expected one .npy array, got an .npz archive (x)")


# ---- outputs that name the run's inputs or each other -------------------------------

def test_outputs_never_name_an_input_or_each_other(tmp_path, capsys, quantized):
    src = quantized("shift4").artifact
    d = tmp_path / "d"
    d.mkdir()
    for suffix in (".json", ".npz"):
        shutil.copy(src.replace(".json", suffix), d / f"digits-shift4{suffix}")
    art = str(d / "digits-shift4.json")
    calib = tmp_path / "c.npy"
    np.save(calib, np.zeros((2, 3, 32, 32), np.float32))
    before = {p: p.read_bytes() for p in [d / "digits-shift4.json", d / "digits-shift4.npz", calib]}
    cases = [
        (["cosim", "--quantizer", "shift4", "--artifact", art, "--json", art], "is the run's input (--artifact)"),
        (["verilog", "--quantizer", "shift4", "--artifact", art, "--out", str(d), "--json", art], "--artifact"),
        (["verilog", "--quantizer", "shift4", "--artifact", art, "--out", str(d), "--json",
          str(d / "digits-shift4.npz")], "is the run's input (--artifact (its arrays))"),
        (["verilog", "--quantizer", "shift4", "--artifact", art, "--out", str(d), "--json",
          str(d / "digits_shift4_top.v")], "the Verilog"),
        (["quantize", "--quantizer", "shift4", "--out", str(d), "--json", str(d / "digits-shift4.npz")],
         "the artifact's arrays"),
        (["quantize", "--quantizer", "shift4", "--out", str(d), "--json", str(d / "digits-shift4.json")],
         "is also --json"),
        (["quantize", "--quantizer", "fixed8", "--model", "resnet8", "--calib", str(calib), "--json", str(calib)],
         "is the run's input (--calib)"),
        (["gates", "--quantizers", "shift4", "--json", str(tmp_path / "g"), "--csv", str(tmp_path / "g")],
         "--csv"),
    ]
    for argv, must in cases:
        assert_one_line_error(capsys, 2, main(argv), must)
    assert all(p.read_bytes() == b for p, b in before.items())


def test_writing_over_an_input_is_refused_at_the_write_too(tmp_path):
    from quantrtl.util.atomic import OutputPathError, atomic_write, run_inputs

    f = tmp_path / "in.npy"
    f.write_bytes(b"data")
    with run_inputs({"--calib": f}), pytest.raises(OutputPathError, match=r"--calib"):
        atomic_write(f, b"other")
    assert f.read_bytes() == b"data"
    atomic_write(f, b"other")  # outside a run: an ordinary file
    assert f.read_bytes() == b"other"


# ---- option values and combinations --------------------------------------------------

@pytest.mark.parametrize("argv, must", [
    (["quantize", "--quantizer", "shift4", "--density", "conv1=0.3,conv1=0.5"], "gives 'conv1' twice"),
    (["quantize", "--quantizer", "shift4", "--density", "0.3,0.5"], "gives every layer twice"),
    (["cosim", "--quantizer", "shift4", "--images", "3", "--image", "5"], "either --image or --images"),
    (["cosim", "--quantizer", "shift4", "--images", "\u00b2"], "--images '\u00b2' is not an index"),
    (["cosim", "--quantizer", "shift4", "--image", "\u00b2"], "\u00b2"),
    (["demo", "--image", "-1"], "--image must be a test image 0..359, got -1"),
    (["gates", "--sparse", "--density", "0", "--quantizers", "shift4"], "--density must be in (0, 1], got 0"),
    (["gates", "--sparse", "--densities", "0.5,nan", "--quantizers", "shift4"], "--densities must be in (0, 1]"),
    (["gates", "--densities", "0.5", "--quantizers", "shift4"], "--densities is for the dense vs zero-skipping"),
    (["gates", "--index-bits", "3", "--quantizers", "shift4"], "--index-bits is for the dense vs zero-skipping"),
    (["cosim", "--quantizer", "shift4", "--artifact", ""], "--artifact is empty"),
    (["verilog", "--quantizer", "shift4", "--artifact", " ", "--out", "x"], "--artifact is empty"),
])
def test_option_values_and_pairs(capsys, argv, must):
    assert_one_line_error(capsys, 2, main(argv), must)


@pytest.mark.parametrize("extra, must", [
    (["--density", "0.5"], "--density is an option of quantizing"),
    (["--finetune", "3"], "--finetune is an option of quantizing"),
    (["--checkpoint", "x.pt"], "--checkpoint is an option of quantizing"),
    (["--block", "4"], "--block is an option of quantizing"),
    (["--model", "digits"], "--model chooses the model to quantize"),
])
def test_quantization_options_beside_an_artifact_are_refused(tmp_path, capsys, quantized, extra, must):
    rc = main(["verilog", "--quantizer", "shift4", "--artifact", quantized("shift4").artifact,
               "--out", str(tmp_path / "v"), *extra])
    assert_one_line_error(capsys, 2, rc, must)
    assert not (tmp_path / "v").exists()


def test_checks_come_before_the_work(tmp_path, capsys, monkeypatch):
    from quantrtl import demo
    from quantrtl.model.training import net

    doc = tmp_path / "doc.md"
    doc.write_text("no markers here\n")
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("the demo ran"))
    assert_one_line_error(capsys, 2, main(["demo", "--update-doc", str(doc)]), "needs one <!-- methods-table:begin")
    monkeypatch.setattr(net, "train", lambda *a, **k: pytest.fail("the training ran"))
    (tmp_path / "folder").mkdir()
    assert_one_line_error(capsys, 2, main(["train", "--out", str(tmp_path / "folder")]), "is a folder")


def test_artifact_version_true_is_not_version_1(tmp_path, quantized):
    import json

    from quantrtl.model.numbers.artifact import ArtifactError, load

    src = quantized("shift4").artifact
    doc = json.loads(open(src).read())
    doc["version"] = True
    (tmp_path / "digits-shift4.json").write_text(json.dumps(doc))
    shutil.copy(src.replace(".json", ".npz"), tmp_path / "digits-shift4.npz")
    with pytest.raises(ArtifactError, match="schema version True"):
        load(tmp_path / "digits-shift4.json")


# ---- user models that trace but make no sense ---------------------------------------

USER_MODELS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, out=10, bn=None, mid=4, pool_twice=False):
        super().__init__()
        self.conv = nn.Conv2d(1, mid, 3, padding=1)
        self.bn = bn
        self.pool = nn.AvgPool2d(2)
        self.pool_twice = pool_twice
        self.fc = nn.Linear(mid * (4 if pool_twice else 16), out)

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        x = self.pool(torch.relu(x))
        if self.pool_twice:
            x = self.pool(x)
        return self.fc(torch.flatten(x, 1))


class NoWeights(nn.Module):
    def forward(self, x):
        return torch.flatten(torch.relu(x), 1)


class Stop(BaseException):
    pass


def one_class(): return Net(out=1)
def no_stats(): return Net(bn=nn.BatchNorm2d(4, track_running_stats=False))
def no_outputs(): return Net(mid=0)
def raises(): raise Stop("from the factory")
def pool_twice(): return Net(pool_twice=True)
def no_weights(): return NoWeights()
'''


@pytest.fixture(scope="module")
def user_models(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "hostile_models.py"
    path.write_text(USER_MODELS)
    return path


@pytest.mark.parametrize("factory, must", [
    ("one_class", "1 output, but the digits data it is trained and evaluated on has 10 classes"),
    ("no_stats", "node 'bn' (BatchNorm2d(track_running_stats=False)) is not supported"),
    ("no_outputs", "node 'conv' (Conv2d with weights of shape 0x1x3x3) is not supported"),
    ("raises", "calling the factory failed: Stop: from the factory"),
    ("no_weights", "has no Conv2d or Linear layer"),
])
def test_user_models_that_make_no_sense(tmp_path, capsys, user_models, factory, must):
    rc = main(["quantize", "--quantizer", "fixed8", "--model", f"{user_models}:{factory}", "--finetune", "0",
               "--out", str(tmp_path / "a")])
    assert_one_line_error(capsys, 2, rc, must)
    assert not (tmp_path / "a").exists()


def test_a_pooling_module_called_twice_is_a_valid_model(tmp_path, user_models):
    from quantrtl import flows

    r = flows.quantize_flow("fixed8", tmp_path, finetune=0,
                            source=flows.ModelSource(model=f"{user_models}:pool_twice"))
    assert [l["op"] for l in r.layers].count("avgpool") == 2
    assert r.golden_agreement > 0.9


# ---- ONNX files with bad attributes and constants ------------------------------------

def _mutated(tmp_path, name, edit):
    import onnx

    m = onnx.load(EXAMPLE)
    m = copy.deepcopy(m)
    edit(m)
    path = tmp_path / f"{name}.onnx"
    onnx.save(m, str(path))
    return path


def _node(m, name):
    return next(n for n in m.graph.node if n.name == name)


def _set_ints(node_name, attr, values):
    def edit(m):
        a = next(a for a in _node(m, node_name).attribute if a.name == attr)
        if a.ints:
            a.ints[:] = values
        else:
            a.i = values
    return edit


def _constant(node_name, position, value):
    """Input ``position`` of a Quant node replaced by a new constant ``value``."""
    def edit(m):
        from onnx import numpy_helper

        n = _node(m, node_name)
        new = f"{n.input[position]}_hostile"
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), new))
        n.input[position] = new
    return edit


RELU2 = "/relu2/act_quant/export_handler/Quant"
STEM_W = "/stem/weight_quant/export_handler/Quant"


ONNX_CASES = [
    ("stride0", _set_ints("/stem/Conv", "strides", [0, 0]), "node '/stem/Conv' (Conv): strides [0, 0]: each must be 1"),
    ("negpads", _set_ints("/stem/Conv", "pads", [-1, -1, -1, -1]), "pads [-1, -1, -1, -1]: each must be 0 or more"),
    ("poolstride0", _set_ints("/pool/AveragePool", "strides", [0, 0]), "node '/pool/AveragePool' (AveragePool)"),
    ("group3", _set_ints("/pw/Conv", "group", 3), "node '/pw/Conv' (Conv): group 3 does not fit 8 input"),
    ("kernel", _set_ints("/stem/Conv", "kernel_shape", [5, 5]), "kernel_shape [5, 5] does not match"),
    ("opset", lambda m: setattr(m.opset_import[0], "version", 999), "opset 999 of the default domain"),
    ("bits_inf", _constant(RELU2, 3, np.inf), "its bit width must be finite, got [inf]"),
    ("bits_nan", _constant(RELU2, 3, np.nan), "its bit width must be finite, got [nan]"),
    ("scale_inf", _constant(RELU2, 1, np.inf), "its scale must be finite"),
    ("scale_tiny", _constant(RELU2, 1, 1e-38), "its scale must be in 1e-30..1e30"),
    ("scale_len", _constant(STEM_W, 1, np.full((5, 1, 1, 1), 0.05)), "its scale of shape (5, 1, 1, 1) does not fit"),
    ("wbits", _constant(STEM_W, 3, 1e9), "2..16 bits"),
]
#: Re-quantizing (any quantizer but keep) reads the same file: its structure is checked alike.
STRUCTURE = ("stride0", "negpads", "group3", "kernel", "opset", "scale_inf", "scale_len")


@pytest.mark.parametrize("name, edit, must, quantizer",
                         [(*c, "keep") for c in ONNX_CASES] + [(*c, "shift4") for c in ONNX_CASES if c[0] in STRUCTURE])
def test_onnx_attributes_and_constants_are_named(tmp_path, capsys, name, edit, must, quantizer):
    path = _mutated(tmp_path, name, edit)
    rc = main(["quantize", "--quantizer", quantizer, "--model", str(path), "--finetune", "0",
               "--out", str(tmp_path / "a")])
    assert_one_line_error(capsys, 2, rc, must)
    assert not (tmp_path / "a").exists()


# ---- the Python API: wrong types by name ---------------------------------------------

def test_api_refuses_wrong_types_by_name(quantized):
    import quantrtl
    from quantrtl.util.errors import OptionError

    art = quantized("shift4").artifact
    cases = [
        (lambda: quantrtl.quantize("shift4", seed="x"), "seed must be an int, got str 'x'"),
        (lambda: quantrtl.quantize(4), "quantizer must be a str, got int 4"),
        (lambda: quantrtl.quantize("shift4", density=True), "density must be a fraction"),
        (lambda: quantrtl.quantize("shift4", bogus=1), "quantize(): got an unexpected keyword argument 'bogus'"),
        (lambda: quantrtl.verilog(art, "o", taps="no"), "taps must be True or False, got str 'no'"),
        (lambda: quantrtl.cosim(art, stream=True), "stream must be an int, got bool True"),
        (lambda: quantrtl.cosim(art, lanes=2.5), "lanes must be an int or a str or a dict, got float 2.5"),
        (lambda: quantrtl.gates("shift4"), "nets must be a list of networks or quantizer names, got str 'shift4'"),
        (lambda: quantrtl.gates(["shift4"], jobs="2"), "jobs must be an int"),
    ]
    for call, must in cases:
        with pytest.raises(OptionError) as e:
            call()
        assert must in str(e.value), (must, str(e.value))


# ---- processes: an interrupted or terminated run leaves nothing running ---------------

def _sleeper(pid_file: str) -> None:
    """A job that runs a tool the way the flows run theirs (``subprocess.run``), and the
    tool a process of its own (as ``make`` runs the compiler): ``sleep`` under a shell
    that waits for it, so killing the shell alone would leave ``sleep`` running."""
    import subprocess

    subprocess.run(["sh", "-c", f"sleep 120 & echo $! > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; wait"])


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # (a zombie is gone)
        return f.read().split()[2] != "Z"


def test_an_interrupted_pool_stops_its_workers_and_their_tools(tmp_path):
    import time

    from quantrtl.util.pools import process_pool

    pid_file = tmp_path / "tool.pid"
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with process_pool(2) as ex:
            ex.submit(_sleeper, str(pid_file))
            while not pid_file.is_file() or not pid_file.read_text():
                time.sleep(0.1)
            workers = list(ex._processes.values())
            raise KeyboardInterrupt
    assert time.monotonic() - t0 < 60  # not the job's 120 s
    # by pid, not Process.is_alive(): the executor's own thread may reap a worker first, and
    # multiprocessing then never learns its exit (is_alive stays True, exitcode None)
    assert not any(_alive(p.pid) for p in workers)
    # 143: its handler ran; -15: SIGTERM came while it was still starting (before its handler), on a loaded machine
    assert [p.exitcode for p in workers if p.exitcode not in (143, -15, None)] == [], \
        "a worker ignored SIGTERM (killed after the grace)"
    deadline = time.monotonic() + 10
    while _alive(int(pid_file.read_text())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(int(pid_file.read_text())), "the worker's tool outlived it"


def test_sigterm_to_sweep_stops_it_and_its_workers(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    p = subprocess.Popen([sys.executable, "-m", "quantrtl", "sweep", "--quantizers", "shift4", "--lanes", "5,13",
                          "--out", str(tmp_path / "s"), "--no-cosim"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "QUANTRTL_CACHE": str(tmp_path / "c")})

    def children():
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(p.pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    deadline = time.monotonic() + 120
    while len(children()) < 2 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    kids = children()
    assert len(kids) >= 2, "the sweep's workers did not start"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and err.strip().endswith("quantrtl: terminated"), err
    deadline = time.monotonic() + 10
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(k) for k in kids), "a worker (or the resource tracker) outlived the sweep"


# ---- a full disk: the error names the file ---------------------------------------------

def test_a_full_disk_names_the_file(tmp_path, capsys, monkeypatch):
    """A write's ENOSPC names no file; quantrtl's writers add it (``/dev/full`` is a disk
    that is always full), and atomic_write leaves no temporary file behind."""
    import errno
    import os

    from quantrtl import cli
    from quantrtl.util.atomic import atomic_write, write_file

    with pytest.raises(OSError) as e:
        write_file("/dev/full", "x" * 100)
    assert e.value.errno == errno.ENOSPC and e.value.filename == "/dev/full"

    def full(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    target = tmp_path / "out.json"
    with pytest.raises(OSError) as e:
        atomic_write(target, full)
    assert e.value.filename == str(target) and os.listdir(tmp_path) == []

    monkeypatch.setattr(cli, "_check_outputs", lambda args: atomic_write(target, full))
    assert cli.main(["gates", "--quantizers", "shift4"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"quantrtl: error: {target}: No space left on device"], err
