"""Honest storage size of an artifact: every stored bit, after lossless coding.

Deep Compression's last stage and Focused Quantization's: the weight codes (and, for
a pruned layer, the relative indices of the nonzero weights) are Huffman coded.  For
each layer every layout is sized and the smallest is kept:

* **raw**: the uncoded codes (when a Huffman table costs more than it saves);
* **dense**: every weight's code, Huffman coded;
* **sparse** (formats with a zero code): relative-index entries (``model.sparse``, with
  fillers), codes and indices Huffman coded as two streams, plus each row's entry count
  (without which the decoder cannot tell where a row ends; ``sparse.stream_bits``).

Every Huffman stream also pays for its table: canonical code lengths, 5 bits per
symbol of the alphabet.  Formats add their own fixed streams (unified: one magnitude
per block, a sign bit per weight of a kept block) and per-layer parameters
(codebooks, means, basis scales: ``WeightFormat.storage``).  Biases and requantization
constants are counted as :meth:`QuantizedNetwork.storage_bits` counts them.
"""
from __future__ import annotations

import numpy as np

from quantrtl.model.numbers.huffman import code_lengths
from quantrtl.model.numbers.sparse import COUNT_WIDTH_BITS, count_bits, encode_matrix, zero_code

__all__ = ["huffman_bits", "layer_size", "coded_size", "LENGTH_BITS"]

#: Bits per alphabet symbol to store a canonical Huffman table (code lengths up to 31).
LENGTH_BITS = 5


def huffman_bits(symbols, alphabet: int) -> int:
    """Coded bits of ``symbols`` plus the table for an alphabet of ``alphabet`` symbols."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if symbols.size == 0:
        return 0
    lengths = code_lengths(symbols.tolist())
    vals, counts = np.unique(symbols, return_counts=True)
    return int(sum(lengths[int(v)] * int(n) for v, n in zip(vals, counts))) + alphabet * LENGTH_BITS


def layer_size(layer, index_bits: int = 4) -> dict:
    """Stored bits of one weight layer's codes and parameters, best layout."""
    fmt, codes = layer.format, layer.codes
    params = fmt.storage(codes)["params"]
    raw = fmt.storage(codes)["codes"]
    best = {"layout": "raw", "codes": raw, "index": 0}  # uncoded, when coding does not pay
    streams = fmt.coded_streams(codes)
    if streams is not None:  # the format sizes its own streams
        if streams < raw:
            best = {"layout": "blocks", "codes": streams, "index": 0}
        best["params"] = params
        best["total"] = best["codes"] + params
        return best
    alphabet = 1 << fmt.bits
    dense = huffman_bits(codes, alphabet)
    if dense < raw:
        best = {"layout": "dense", "codes": dense, "index": 0}
    if zero_code(fmt) is not None:
        rows = encode_matrix(codes, fmt, index_bits)
        ent_codes = np.concatenate([r.codes for r in rows]) if rows else np.zeros(0)
        runs = np.concatenate([r.runs for r in rows]) if rows else np.zeros(0)
        sparse_codes = huffman_bits(ent_codes, alphabet)
        counts = COUNT_WIDTH_BITS + len(rows) * count_bits(rows)  # where each row's entries end
        sparse_index = huffman_bits(runs, 1 << index_bits) + counts
        if sparse_codes + sparse_index < best["codes"]:
            best = {"layout": "sparse", "codes": sparse_codes, "index": sparse_index, "counts": counts}
    best["params"] = params
    best["total"] = best["codes"] + best["index"] + params
    return best


def coded_size(net, index_bits: int = 4) -> dict:
    """Per layer sizes and the network total (weights, indices, parameters, bias, requant)."""
    raw = net.storage_bits()
    layers = {l.name: layer_size(l, index_bits) for l in net.layers if l.has_weights}
    weights = sum(v["total"] for v in layers.values())
    total = weights + raw["bias"] + raw["requant"]
    return {"layers": layers, "weights": weights, "bias": raw["bias"], "requant": raw["requant"], "total": total,
            "index_bits": index_bits}
