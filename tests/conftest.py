"""Shared fixtures (explicit; nothing star-imported)."""
import os

import pytest
from hypothesis import settings

# CI replays the same examples every run (a red CI blocks landing); developers explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


@pytest.fixture(scope="session")
def quantized(tmp_path_factory):
    """``quantized(name)`` → cached :class:`quantrtl.flows.QuantizeResult` of the digits model
    with the default fine-tuning, its artifact in a session temp folder."""
    from quantrtl import flows

    cache = {}
    out = tmp_path_factory.mktemp("artifacts")

    def get(name: str):
        if name not in cache:
            cache[name] = flows.quantize_flow(name, out)
        return cache[name]

    return get
