"""Artifact: round trip, validation, and no partial files on failure."""
import json

import numpy as np
import pytest

from quantrtl.model.numbers import artifact
from quantrtl.model.numbers.artifact import ArtifactError
from quantrtl.model.numbers.families import parse_format
from quantrtl.sim import golden
from tests.factories import random_network

FORMATS = ["fixed8", "fixed3", "shift3", "shift4", "shift6", "ternary", "binary"]


def saved(tmp_path, name="fixed8", seed=0):
    net = random_network(parse_format(name), seed=seed)
    return net, artifact.save(net, tmp_path / "net")


@pytest.mark.parametrize("name", FORMATS)
def test_round_trip(tmp_path, name):
    net, path = saved(tmp_path, name)
    assert path == tmp_path / "net.json" and (tmp_path / "net.npz").is_file()
    back = artifact.load(path)
    assert back.quantizer == net.quantizer and back.input == net.input and back.input_shape == net.input_shape
    for a, b in zip(net.layers, back.layers):
        for k in ("name", "op", "in_shape", "out_shape", "input", "output", "kernel", "stride", "padding",
                  "activation", "format"):
            assert getattr(a, k) == getattr(b, k), k
        for k in ("codes", "bias", "m0", "shift", "weight_scale"):
            assert (getattr(a, k) is None) == (getattr(b, k) is None)
            if getattr(a, k) is not None:
                assert np.array_equal(getattr(a, k), getattr(b, k)), k
    x = np.random.default_rng(1).integers(0, 256, size=(3,) + net.input_shape)
    assert np.array_equal(golden.run(net, x).logits, golden.run(back, x).logits)
    # loading by stem or by the npz name works too
    assert artifact.load(tmp_path / "net").name == net.name
    assert artifact.load(tmp_path / "net.npz").name == net.name


def test_save_is_deterministic(tmp_path):
    net = random_network(parse_format("shift4"))
    artifact.save(net, tmp_path / "a")
    artifact.save(net, tmp_path / "b")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def edit_json(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(version=3), r"schema version 3 is not supported \(this quantrtl reads versions 1, 2\)"),
    (lambda d: d.update(version="1"), r"version '1' is not supported"),
    (lambda d: d.update(schema="other"), r"not a quantrtl artifact"),
    (lambda d: d.pop("layers"), r"missing key 'layers'"),
    (lambda d: d["layers"][0].update(op="conv3d"), r"layer 'conv': unknown op 'conv3d'"),
    (lambda d: d["layers"][0].update(activation="gelu"), r"layer 'conv': unknown activation 'gelu'"),
    (lambda d: d["layers"][0].update(format={"name": "shift9", "family": "shift", "bits": 9}), r"layer 'conv': .*allowed 3..6"),
    (lambda d: d["layers"][0].update(format={"name": "binary", "family": "binary", "bits": 1}), r"layer 'conv': .*invalid code"),
    (lambda d: d["layers"][0].update(stride=[1]), r"layer 'conv': 'stride' must be a list of 2 integers"),
    (lambda d: d["layers"][0].update(out_shape=[3, 5, 5]), r"layer 'conv': out_shape .* geometry gives"),
    (lambda d: d["layers"][2].update(in_shape=[7]), r"layer 'fc': array 'fc/codes' is int64 \(4, 27\), expected integers of shape \(4, 7\)"),
    (lambda d: d["layers"][1]["output"].update(zero_point=3), r"layer 'pool': maxpool must keep the input quantization"),
    (lambda d: d["layers"][0]["output"].update(zero_point=300), r"zero point 300 outside \[0, 255\]"),
    (lambda d: d["input"].update(scale=-1.0), r"scale must be a positive"),
    (lambda d: d["arrays"].update(sha256="0" * 64), r"SHA-256 does not match"),
    (lambda d: d["arrays"].update(file="missing.npz"), r"missing.npz: array file .* not found"),
    (lambda d: d["layers"][0]["arrays"].update(codes="nope"), r"array 'nope' missing"),
])
def test_load_rejects_malformed(tmp_path, edit, match):
    _, path = saved(tmp_path, "fixed3", seed=4)
    edit_json(path, edit)
    with pytest.raises(ArtifactError, match=match):
        artifact.load(path)


def test_load_rejects_missing_and_garbage(tmp_path):
    with pytest.raises(ArtifactError, match="artifact not found"):
        artifact.load(tmp_path / "nothing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a readable JSON artifact"):
        artifact.load(tmp_path / "junk.json")
    _, path = saved(tmp_path)
    (tmp_path / "net.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ArtifactError, match="SHA-256 does not match"):
        artifact.load(path)


@pytest.mark.parametrize("mutate,match", [
    (lambda n: setattr(n.layers[0], "m0", n.layers[0].m0 * 4), r"m0 must lie in"),
    (lambda n: setattr(n.layers[0], "shift", n.layers[0].shift * 0), r"shift must lie in 1..127"),
    (lambda n: setattr(n.layers[0], "bias", n.layers[0].bias[:1]), r"bias shape"),
    (lambda n: setattr(n.layers[0], "codes", n.layers[0].codes.astype(float)), r"codes has dtype float64"),
    (lambda n: setattr(n.layers[0], "weight_scale", n.layers[0].weight_scale * np.nan), r"weight_scale must be positive"),
    (lambda n: setattr(n.layers[0], "bias", n.layers[0].bias + 2**62), r"accumulator needs \d+ bits"),
    (lambda n: setattr(n.layers[2], "name", "conv"), r"layer names are not unique"),
    (lambda n: setattr(n.layers[1], "padding", (2, 2)), r"maxpool padding"),
])
def test_save_validates_and_writes_nothing(tmp_path, mutate, match):
    net = random_network(parse_format("fixed8"))
    mutate(net)
    with pytest.raises(ArtifactError, match=match):
        artifact.save(net, tmp_path / "out" / "net")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_failed_json_write_leaves_no_orphan(tmp_path, monkeypatch):
    net = random_network(parse_format("fixed8"))
    real = artifact.atomic_write

    def fail_on_json(path, data):
        if str(path).endswith(".json"):
            raise OSError("disk full")
        return real(path, data)

    monkeypatch.setattr(artifact, "atomic_write", fail_on_json)
    with pytest.raises(OSError):
        artifact.save(net, tmp_path / "net")
    assert list(tmp_path.iterdir()) == []


def test_storage_bits_counts_everything():
    net = random_network(parse_format("shift4"))
    bits = net.storage_bits()
    weighted = [l for l in net.layers if l.has_weights]
    assert bits["weights"] == sum(l.codes.size * 4 for l in weighted)
    assert bits["total"] == bits["weights"] + bits["bias"] + bits["requant"]
    assert bits["bias"] == sum((int(np.abs(l.bias).max()).bit_length() + 1) * l.bias.size for l in weighted)
    assert net.float_bits() == sum(32 * (l.codes.size + l.bias.size) for l in weighted)
