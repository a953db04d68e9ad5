"""Reading an offline W&B run file (``run-*.wandb``) in tests: which metrics and config it holds.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of records,
each a 7-byte record header (CRC32C, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and
bytes of a protobuf ``Record``.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # too little room for a record header: the block ends here
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def summarize(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(history keys, history keys holding histograms, config keys) of a run file."""
    keys, histograms, config = set(), set(), set()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                keys.add(key)
                if '"histogram"' in item.value_json:
                    histograms.add(key)
        elif kind == "config":
            config.update(item.key or "/".join(item.nested_key) for item in record.config.update)
    return keys, histograms, config
