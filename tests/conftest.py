"""Shared fixtures (explicit; nothing star-imported)."""
import pytest


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
