"""Bad input and failing tools: a clear one-line error, a non-zero exit, no partial outputs.

(Corrupt checkpoints, NaN/inf weights, wrong shapes, unsupported ops and widths out of
range are covered next to their modules: tests/model, tests/test_cli.py,
tests/test_user_model.py; this file adds tool crashes and interruptions.)
"""
import os
import stat

import pytest

from quantrtl.cli import main


def fake_tool(folder, name, script):
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def assert_one_line_error(capsys, code, rc, must):
    assert rc == code
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("quantrtl: error:")]
    assert len(err) == 1 and must in err[0], err


@pytest.mark.icarus
def test_simulator_crash(tmp_path, capsys, monkeypatch, quantized):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "iverilog", "echo 'iverilog: internal error' >&2\nexit 139\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)  # a fresh build folder, so the simulator really builds
    rc = main(["cosim", "--quantizer", "shift4", "--artifact", quantized("shift4").artifact,
               "--json", str(tmp_path / "c.json")])
    assert_one_line_error(capsys, 3, rc, "icarus build of digits_shift4_cosim.v failed")
    assert not (tmp_path / "c.json").exists()


@pytest.mark.yosys
def test_yosys_crash(tmp_path, capsys):
    yosys = fake_tool(tmp_path, "yosys", 'if [ "$1" = "-V" ]; then echo "Yosys 0.0 (fake)"; exit 0; fi\n'
                                         "echo 'ERROR: simulated crash' >&2\nexit 1\n")
    rc = main(["gates", "--quantizers", "binary", "--layer", "conv1", "--throughput", "2", "--yosys", str(yosys),
               "--finetune", "0", "--out", str(tmp_path / "v"), "--json", str(tmp_path / "g.json")])
    assert_one_line_error(capsys, 3, rc, "Yosys failed on")
    assert not (tmp_path / "g.json").exists()


def test_interrupted_quantize_leaves_no_files(tmp_path, capsys, monkeypatch):
    from quantrtl.model.numbers import artifact

    real = artifact.atomic_write

    def interrupt_on_json(path, data):
        if str(path).endswith(".json"):
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(artifact, "atomic_write", interrupt_on_json)
    rc = main(["quantize", "--quantizer", "ternary", "--finetune", "0", "--out", str(tmp_path / "a"),
               "--json", str(tmp_path / "q.json")])
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "q.json").exists()
    assert not any((tmp_path / "a").iterdir()) if (tmp_path / "a").exists() else True


def test_corrupt_artifact_is_rejected_by_every_consumer(tmp_path, capsys, quantized):
    import shutil

    src = quantized("fixed8").artifact
    art = tmp_path / "digits-fixed8.json"
    shutil.copy(src, art)
    shutil.copy(src.replace(".json", ".npz"), tmp_path / "digits-fixed8.npz")
    with open(tmp_path / "digits-fixed8.npz", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    for argv in (["verilog", "--out", str(tmp_path / "v")], ["cosim"]):
        rc = main([argv[0], "--quantizer", "fixed8", "--artifact", str(art), *argv[1:]])
        assert_one_line_error(capsys, 2, rc, "SHA-256 does not match")
    assert not (tmp_path / "v").exists()


# ---- hostile inputs (issue 13): one line, the documented exit status, nothing replaced or escaped ----

MODELS = '''
import sys
import torch.nn as nn

class Swapped(nn.Module):
    """Children registered in another order than forward uses them."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4 * 8 * 8, 10)
        self.flat = nn.Flatten()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return self.fc(self.flat(self.conv(x)))

def exits():
    sys.exit(0)

def swapped():
    return Swapped()

def zeros():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    for p in net.parameters():
        nn.init.zeros_(p)
    return net
'''


@pytest.fixture
def models(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    return tmp_path / "models.py"


def test_outputs_never_replace_a_fifo_a_device_a_symlink_or_a_folder(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "target.json"
    target.write_text("keep me")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    for path, what in ((fifo, "is a FIFO"), (link, "is a symbolic link"), ("/dev/null", "is a device"),
                       (tmp_path, "is a folder")):
        rc = main(["quantize", "--quantizer", "fixed8", "--finetune", "0", "--out", str(tmp_path / "a"),
                   "--json", str(path)])
        assert_one_line_error(capsys, 2, rc, what)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink() and target.read_text() == "keep me"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not (tmp_path / "a").exists()  # checked before any work


@pytest.mark.parametrize("name,what", [
    ("../../escaped", "network name '../../escaped'"),
    ("with space", "network name 'with space'"),
    ("line\nbreak", "network name 'line\\nbreak'"),
    ("x" * 300, "must be 1 to 64 letters"),
])
def test_artifact_names_never_become_paths(tmp_path, capsys, quantized, name, what):
    import json
    import shutil

    src = quantized("fixed8").artifact
    doc = json.loads(open(src).read())
    doc["name"] = name
    (tmp_path / "art").mkdir()
    shutil.copy(src.replace(".json", ".npz"), tmp_path / "art" / doc["arrays"]["file"])
    (tmp_path / "art" / "a.json").write_text(json.dumps(doc))
    rc = main(["verilog", "--quantizer", "fixed8", "--artifact", str(tmp_path / "art" / "a.json"),
               "--out", str(tmp_path / "out" / "v")])
    assert_one_line_error(capsys, 2, rc, what)
    assert not (tmp_path / "out").exists() and sorted(os.listdir(tmp_path)) == ["art"]


def test_layer_names_are_checked_too(tmp_path):
    from quantrtl.model.numbers import artifact
    from quantrtl.model.numbers.families import parse_format
    from tests.factories import random_network

    net = random_network(parse_format("fixed8"))
    net.layers[0].name = "conv/../x"
    with pytest.raises(artifact.ArtifactError, match="layer name 'conv/../x'"):
        artifact.save(net, tmp_path / "n")
    assert not list(tmp_path.iterdir())


def test_a_model_file_that_exits_is_an_error(tmp_path, capsys, models):
    rc = main(["quantize", "--quantizer", "fixed8", "--model", f"{models}:exits", "--out", str(tmp_path / "o")])
    assert_one_line_error(capsys, 2, rc, "it called sys.exit(0)")
    assert not (tmp_path / "o").exists()


def test_children_in_another_order_than_forward(tmp_path, capsys, models):
    """The forward is traced (torch.fx), so the order children are registered in does not matter."""
    from quantrtl.model.numbers import artifact

    rc = main(["quantize", "--quantizer", "fixed8", "--model", f"{models}:swapped", "--finetune", "0",
               "--out", str(tmp_path / "o")])
    assert rc == 0
    net = artifact.load(next((tmp_path / "o").glob("*.json")))
    assert [(l.name, l.op) for l in net.layers] == [("conv", "conv2d"), ("fc", "linear")]


def test_all_zero_weights_quantize_and_generate(tmp_path, capsys, models):
    out = tmp_path / "o"
    assert main(["quantize", "--quantizer", "fixed8", "--model", f"{models}:zeros", "--finetune", "0",
                 "--out", str(out)]) == 0
    art = next(out.glob("*.json"))
    assert main(["verilog", "--quantizer", "fixed8", "--artifact", str(art), "--out", str(tmp_path / "v")]) == 0
    assert next((tmp_path / "v").glob("*.v")).stat().st_size > 0


def test_empty_checkpoint_and_out_naming_a_file(tmp_path, capsys):
    (tmp_path / "empty.pt").write_bytes(b"")
    rc = main(["quantize", "--quantizer", "fixed8", "--checkpoint", str(tmp_path / "empty.pt"),
               "--out", str(tmp_path / "o")])
    assert_one_line_error(capsys, 2, rc, "empty.pt: cannot load checkpoint")
    (tmp_path / "afile").write_text("x")
    rc = main(["quantize", "--quantizer", "fixed8", "--finetune", "0", "--out", str(tmp_path / "afile")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("quantrtl: error:") and "afile" in err[-1]


@pytest.mark.yosys
def test_a_yosys_that_is_not_yosys(tmp_path, capsys):
    rc = main(["gates", "--quantizers", "binary", "--layer", "conv1", "--yosys", "/bin/true", "--finetune", "0",
               "--out", str(tmp_path / "g")])
    assert_one_line_error(capsys, 3, rc, "/bin/true is not Yosys")


def test_full_disk_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    import errno

    from quantrtl.model.numbers import artifact

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(artifact, "atomic_write", full)
    rc = main(["quantize", "--quantizer", "ternary", "--finetune", "0", "--out", str(tmp_path / "a")])
    assert_one_line_error(capsys, 3, rc, "No space left on device")


def test_closed_stdout(tmp_path, quantized):
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "quantrtl", "verilog", "--quantizer", "fixed8", "--artifact",
                          quantized("fixed8").artifact, "--out", str(tmp_path / "v")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # the reader goes away before anything is printed
    err = p.stderr.read()
    assert p.wait(timeout=300) == 3
    assert "Traceback" not in err and "standard output was closed" in err


def test_deeply_nested_json_artifact(tmp_path, capsys):
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    rc = main(["verilog", "--quantizer", "fixed8", "--artifact", str(tmp_path / "deep.json"),
               "--out", str(tmp_path / "v")])
    assert_one_line_error(capsys, 2, rc, "nested too deeply")


def test_npz_arrays_are_read_by_name_after_their_declared_shape(tmp_path, quantized):
    """An artifact whose archive holds an unreferenced (large) array and a mis-shaped one:
    only the named arrays are read, and the mis-shaped one is refused by its header."""
    import hashlib
    import json
    import zipfile

    import numpy as np

    from quantrtl.model.numbers import artifact

    src = quantized("fixed8").artifact
    doc = json.loads(open(src).read())
    npz = tmp_path / "n.npz"
    with zipfile.ZipFile(src.replace(".json", ".npz")) as zin, zipfile.ZipFile(npz, "w") as zout:
        for item in zin.namelist():
            zout.writestr(item, zin.read(item))
        with zout.open("unreferenced.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.zeros(4 << 20, dtype=np.int64))  # 32 MiB nobody names
    doc["arrays"].update(file="n.npz", sha256=hashlib.sha256(npz.read_bytes()).hexdigest())
    (tmp_path / "n.json").write_text(json.dumps(doc))
    net = artifact.load(tmp_path / "n.json")
    assert net.layer("fc").codes.shape == (10, 256)
    doc["layers"][0]["arrays"]["codes"] = "unreferenced"
    (tmp_path / "n.json").write_text(json.dumps(doc))
    with pytest.raises(artifact.ArtifactError, match=r"array 'unreferenced' is int64 \(4194304,\), expected"):
        artifact.load(tmp_path / "n.json")


def test_quantize_cache_reuses_and_repairs(tmp_path, monkeypatch):
    """The shipped model is quantized once per set of inputs: a second run loads the cached
    network and measurements (no training), a damaged entry is made again, and another
    option (fine-tuning epochs) is another entry."""
    import numpy as np

    from quantrtl import flows
    from quantrtl.flows import quantize as qmod
    from quantrtl.model.numbers import artifact
    from quantrtl.model.numbers.families import parse_format

    def same(a, b):
        return [l.name for l in a.layers] == [l.name for l in b.layers] and all(
            np.array_equal(x.codes, y.codes) and np.array_equal(x.bias, y.bias) and np.array_equal(x.m0, y.m0)
            for x, y in zip(a.layers, b.layers) if x.has_weights)

    monkeypatch.setenv("QUANTRTL_CACHE", str(tmp_path / "cache"))
    calls = []
    real = qmod._quantize
    monkeypatch.setattr(qmod, "_quantize", lambda opts: calls.append(opts) or real(opts))
    first = flows.quantize_network("ternary", 0)
    entries = list((tmp_path / "cache").iterdir())
    assert len(calls) == 1 and not first.cached and len(entries) == 1
    assert (entries[0] / "network.json").is_file() and (entries[0] / "run.json").is_file()
    again = flows.network_for(parse_format("ternary"), None, 0)  # what verilog/cosim/gates do
    assert len(calls) == 1 and same(again, first.qnet)
    hit = flows.quantize_network("ternary", 0)
    assert hit.cached and hit.golden_accuracy == first.golden_accuracy and hit.seconds == first.seconds
    (entries[0] / "network.npz").write_bytes(b"not a zip")
    repaired = flows.quantize_network("ternary", 0)
    assert len(calls) == 2 and not repaired.cached and same(repaired.qnet, first.qnet)
    assert artifact.load(entries[0] / "network.json") is not None
    flows.quantize_network("ternary", 1)
    assert len(calls) == 3 and len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 2
    user = flows.ModelSource(calib=str(tmp_path / "none.npy"))
    assert qmod._cache_key(flows.QuantizeOptions("ternary", 0, source=user)) is None  # user data: never cached
