#!/usr/bin/python3
"""Checks libfaultline's safetensors files against an independent reading of
the format (json + numpy; the safetensors package is not in Debian).

    check_safetensors.py PATH/TO/st_writer

1. st_writer writes a file; this script parses it by hand and checks the
   layout (u64 size, 8-byte aligned space-padded header, contiguous data),
   names, shapes, every value bit for bit, and the metadata.
2. This script writes a file the way other writers do (unpadded header,
   sorted keys, metadata last) and checks that the C reader returns the same
   names, shapes, bits and metadata (st_writer dump)."""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np


def load(path):
    """The whole reader: ~20 lines for the format the Rust crate defines."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header_bytes = raw[8:8 + n]
    header = json.loads(header_bytes)
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    tensors, end = {}, 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        assert e["dtype"] == "F32", (name, e["dtype"])
        b, en = e["data_offsets"]
        assert b == end, f"{name}: begins at {b}, previous tensor ended at {end}"
        count = int(np.prod(e["shape"], dtype=np.int64))
        assert en - b == 4 * count, name
        tensors[name] = np.frombuffer(data[b:en], dtype="<f4").reshape(e["shape"])
        end = en
    assert end == len(data), f"{len(data) - end} trailing bytes"
    return n, header_bytes, list(header), tensors, meta


def expected():
    i = np.arange(240)
    return {
        "enc.0.weight": ((i % 97) * 0.125 - 6.0).astype(np.float32).reshape(16, 3, 5),
        "enc.0.bias": (-(np.arange(16) / 8.0)).astype(np.float32),  # -0.0 first, as in C
        "specials": np.array([1e-30, -0.0, 3.0e38, 0.1, np.nan, 1.4e-45], dtype=np.float32),
        "scalar": np.array(42.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


META = {"format": "pt", "spec": '{"window": 60, "modalities": ["vib", "temp"]}', "unit": "\u00b0C"}


def same_bits(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.astype("<f4").view(np.uint32))


def check_c_writer(writer, tmp):
    path = os.path.join(tmp, "c.safetensors")
    subprocess.run([writer, "write", path], check=True)
    assert sorted(os.listdir(tmp)) == ["c.safetensors"], os.listdir(tmp)
    n, header_bytes, names, tensors, meta = load(path)
    assert n % 8 == 0, f"header size {n} is not a multiple of 8"
    assert header_bytes.rstrip(b" ").endswith(b"}"), "header padding is not spaces"
    want = expected()
    assert names == list(want), names  # file order is insertion order
    for name, arr in want.items():
        assert same_bits(tensors[name], arr), (name, tensors[name], arr)
    assert meta == META, meta
    print(f"C writer: {len(names)} tensors, {len(meta)} metadata keys, header {n} bytes: ok")


def check_c_reader(writer, tmp):
    rng = np.random.default_rng(3)
    tensors = {
        "z.last": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "a.first": np.array([np.inf, -np.inf, np.nan, -0.0, 1e-40], dtype=np.float32),
        "m.scalar": np.array(-7.25, dtype=np.float32),
        "m.empty": np.zeros((3, 0), dtype=np.float32),
    }
    header, buf = {}, b""
    for name in sorted(tensors):  # data in sorted order, header keys unsorted below
        arr = tensors[name]
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [len(buf), len(buf) + arr.nbytes]}
        buf += arr.astype("<f4").tobytes()
    order = ["m.scalar", "z.last", "a.first", "m.empty"]
    meta = {"format": "pt", "note": "written by numpy, \u00e9"}
    text = json.dumps({**{k: header[k] for k in order}, "__metadata__": meta}).encode()
    path = os.path.join(tmp, "py.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + buf)
    out = subprocess.run([writer, "dump", path], check=True, capture_output=True, text=True).stdout
    lines = out.splitlines()
    k = 0
    for name in order:
        arr = tensors[name]
        assert lines[k] == f"tensor {name} {arr.ndim}" + "".join(f" {d}" for d in arr.shape), lines[k]
        bits = " ".join(f"{b:08x}" for b in arr.reshape(-1).view(np.uint32))
        assert lines[k + 1] == bits, (name, lines[k + 1], bits)
        k += 2
    got_meta = {}
    while k < len(lines):
        assert lines[k].startswith("meta ") and lines[k + 1].startswith("value "), lines[k:k + 2]
        got_meta[lines[k][5:]] = lines[k + 1][6:]
        k += 2
    assert got_meta == meta, got_meta
    print(f"C reader: {len(order)} tensors from a numpy-written file: ok")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check_safetensors.py PATH/TO/st_writer")
    with tempfile.TemporaryDirectory() as tmp:
        check_c_writer(sys.argv[1], tmp)
    with tempfile.TemporaryDirectory() as tmp:
        check_c_reader(sys.argv[1], tmp)


if __name__ == "__main__":
    main()
