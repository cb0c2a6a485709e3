"""Shared fixtures (explicit; nothing star-imported)."""
import os

import pytest
from hypothesis import settings

# CI replays the same examples every run (a red CI blocks landing); developers explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests run first (each module's tests kept together and in order,
    so module fixtures are made once): the two xdist workers then finish on short tests
    together, instead of one running a long test alone at the end."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)


@pytest.fixture(scope="session", autouse=True)
def quantize_cache(tmp_path_factory, worker_id):
    """The quantize cache of this test session (shared by the xdist workers): a run starts
    empty, never reads or writes the repository's build/cache."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if worker_id != "master" else base) / "quantize-cache"
    os.environ["QUANTRTL_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def object_cache(tmp_path_factory, worker_id):
    """One compiler cache for the session's Verilator builds (shared by the xdist workers:
    ccache is safe for concurrent use); the simulator runtime compiles once per run."""
    from quantrtl.sim.runner import OBJECT_CACHE_VARIABLE

    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if worker_id != "master" else base) / "ccache"
    os.environ[OBJECT_CACHE_VARIABLE] = str(folder)
    return folder


@pytest.fixture(scope="session")
def quantized(tmp_path_factory, worker_id):
    """``quantized(name)`` → :class:`quantrtl.flows.QuantizeResult` of the digits model with
    the default fine-tuning, its artifact in a session folder.

    One artifact per quantizer for the whole run: under pytest-xdist the workers share the
    folder, and a file lock makes the first worker that needs a quantizer make it while the
    others wait and then read its result."""
    import json
    from dataclasses import asdict

    from filelock import FileLock

    from quantrtl import flows

    base = tmp_path_factory.getbasetemp()
    out = (base.parent if worker_id != "master" else base) / "artifacts"
    out.mkdir(exist_ok=True)
    cache = {}

    def get(name: str):
        if name not in cache:
            done = out / f"{name}.result.json"
            with FileLock(str(out / f"{name}.lock")):
                if not done.is_file():
                    r = flows.quantize_flow(name, out)
                    done.write_text(json.dumps(asdict(r)))
                cache[name] = flows.QuantizeResult(**json.loads(done.read_text()))
        return cache[name]

    return get
