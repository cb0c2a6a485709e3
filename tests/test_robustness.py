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
