"""An integer adder network (:mod:`addernet.deploy.integer`) as a self-contained C project.

The project holds the runtime (``c_runtime/``: C99, no heap), ``model.c``/``model.h`` written here (const
weights in the runtime's layouts, the layer table, a static arena whose size is planned here from when each map
is last read), a host ``main.c`` and a Makefile (host build, or ``TARGET=cortex-m4``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from addernet.deploy.integer import Layer, Program

RUNTIME = Path(__file__).parent / "c_runtime"
KINDS = {"lut": "AN_LUT", "conv": "AN_CONV", "adder": "AN_ADDER", "maxpool": "AN_MAXPOOL", "head": "AN_HEAD"}


def plan_arena(program: Program, align: int = 4) -> tuple[list[int], int]:
    """An arena offset for every map, and the arena's size: a map holds its bytes from the layer that writes it
    to the last layer that reads it; a new map takes the lowest free place that fits (first fit)."""
    last_read = {}
    for n, layer in enumerate(program.layers):
        for i in (layer.src, layer.residual):
            if i is not None and i >= 0:
                last_read[i] = n
    offsets, live, size = [0] * len(program.maps), [], 0
    for n, layer in enumerate(program.layers):
        if layer.dst < 0:
            continue
        live = [(start, end, i) for start, end, i in live if last_read.get(i, -1) >= n]  # read here: still live
        c, h, w = program.maps[layer.dst].shape
        need, place = -(-c * h * w // align) * align, 0
        for start, end, _ in sorted(live):
            if place + need <= start:
                break
            place = max(place, end)
        offsets[layer.dst] = place
        live.append((place, place + need, layer.dst))
        size = max(size, place + need)
    return offsets, size


def _scratch_words(program: Program) -> int:
    """The runtime's scratch, in 32-bit words: a window layer's sums at two positions (a word per output channel,
    in whole groups of four) followed by two gathered windows (k*k*C bytes each, in whole words); the head's sums
    (one per channel)."""
    words = 1
    for layer in program.layers:
        channels = program.maps[layer.src].shape[0] if layer.src >= 0 else program.image_shape[0]
        if layer.kind in ("conv", "adder"):
            outputs = program.maps[layer.dst].shape[0] if layer.dst >= 0 else program.num_classes
            sums, window_bytes = 2 * _round_up_to_4(outputs), _round_up_to_4(layer.kernel ** 2 * channels)
            words = max(words, sums + 2 * window_bytes // 4)
        elif layer.kind == "head":
            words = max(words, channels)
    return words


def _array(ctype: str, name: str, values: torch.Tensor) -> str:
    flat = values.flatten().tolist()
    if ctype == "float":
        items = [f"{float.hex(float(v))}f" if v == v else "0.0f" for v in values.float().flatten().double().tolist()]
    else:
        items = [str(int(v)) for v in flat]
    rows = [", ".join(items[i:i + 16]) for i in range(0, len(items), 16)]
    return (f"static const {ctype} {name}[{len(items)}] AN_WORD_ALIGNED = {{\n    "
            + ",\n    ".join(rows) + "\n};\n")


def _round_up_to_4(n: int) -> int:
    """n rounded up to a multiple of 4: filters to whole groups, bytes to whole 32-bit words"""
    return -(-n // 4) * 4


def _c_weights(layer: Layer, zero_point: int) -> torch.Tensor | None:
    """A layer's weights as the runtime reads them (addernet.h): window layers' filters padded to a multiple of
    four (copies of the last, whose sums are dropped); an adder layer's window padded to whole words with the
    input's zero point (|z - z| = 0 against the zero-point bytes after a gathered window), and the four filters
    of a group interleaved word by word, so that one input word meets four filters' words in a row."""
    w = layer.weight
    if w is None or layer.kind not in ("conv", "adder"):
        return w
    o = w.shape[0]
    w = torch.cat([w, w[-1:].expand(-o % 4, -1, -1, -1)], 0).reshape(o + -o % 4, -1)
    if layer.kind == "conv":
        return w
    w = torch.cat([w, w.new_full((w.shape[0], -w.shape[1] % 4), zero_point)], 1)
    return w.reshape(w.shape[0] // 4, 4, -1, 4).transpose(1, 2).contiguous()


def _layer_arrays(n: int, layer: Layer, zero_point: int) -> tuple[str, str, str, str, int]:
    """C arrays of a layer, the names its table entry points at, and their bytes."""
    code, weight, m, c, size = "", "0", "0", "0", 0
    w = _c_weights(layer, zero_point)
    if w is not None:
        ctype = "int8_t" if layer.kind in ("conv", "head") else "uint8_t"
        weight = f"weight{n}"
        code += _array(ctype, weight, w)
        size += w.numel()
    if layer.m is not None:
        m, c = f"m{n}", f"c{n}"
        code += _array("float", m, layer.m) + _array("float", c, layer.c)
        size += 4 * (layer.m.numel() + layer.c.numel())
    return code, weight, m, c, size


def write_c_project(program: Program, out: Path, class_names: list[str] | None = None) -> dict:
    """Write the C project into ``out`` (created); returns its sizes: weights and arena bytes."""
    if not (RUNTIME / "addernet.c").is_file():
        raise FileNotFoundError(f"the C runtime is missing from {RUNTIME}: reinstall the package")
    out.mkdir(parents=True, exist_ok=True)
    for path in RUNTIME.rglob("*"):
        if path.is_file():
            target = out / path.relative_to(RUNTIME)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    offsets, arena = plan_arena(program)
    scratch_words = _scratch_words(program)
    arrays, entries, weight_bytes = [], [], 0
    for n, layer in enumerate(program.layers):
        zero_point = program.maps[layer.src].zero_point if layer.src >= 0 else 0
        code, weight, m, c, size = _layer_arrays(n, layer, zero_point)
        arrays.append(code)
        weight_bytes += size
        residual = -1 if layer.residual is None else layer.residual
        k = float.hex(float(torch.tensor(layer.k, dtype=torch.float32)))  # the float32 value run() multiplies by
        entries.append(f"    {{{KINDS[layer.kind]}, {layer.kernel}, {layer.stride}, {layer.padding}, "
                       f"{int(layer.relu)}, {layer.src}, {layer.dst}, {residual}, {weight}, {m}, {c}, {k}f}},")
    maps = [f"    {{{mp.shape[0]}, {mp.shape[1]}, {mp.shape[2]}, {mp.zero_point}, {offsets[i]}}},"
            for i, mp in enumerate(program.maps)]
    c_, h, w = program.image_shape
    names = class_names or [str(i) for i in range(program.num_classes)]
    (out / "model.h").write_text(
        f"/* {program.model_name}: written by src/export.py format=c */\n#ifndef ADDERNET_MODEL_H\n"
        f"#define ADDERNET_MODEL_H\n#include \"addernet.h\"\n\n#define ADDERNET_IN_C {c_}\n#define ADDERNET_IN_H {h}\n"
        f"#define ADDERNET_IN_W {w}\n#define ADDERNET_IMAGE_BYTES {c_ * h * w}\n"
        f"#define ADDERNET_CLASSES {program.num_classes}\n#define ADDERNET_ARENA_BYTES {arena}\n\n"
        f"extern const an_model addernet_model;\nextern const char *const addernet_class_names[{len(names)}];\n"
        f"\n#endif\n")
    quoted = ", ".join('"' + n.replace("\\", "\\\\").replace('"', '\\"') + '"' for n in names)
    (out / "model.c").write_text(
        f"/* {program.model_name}: written by src/export.py format=c */\n#include \"model.h\"\n\n" + "".join(arrays)
        + "\nstatic const an_map maps[] = {\n" + "\n".join(maps) + "\n};\n\n"
        + "static const an_layer layers[] = {\n" + "\n".join(entries) + "\n};\n\n"
        + "static uint8_t arena[ADDERNET_ARENA_BYTES] AN_WORD_ALIGNED;\n"
        + f"static int32_t scratch[{scratch_words}];\n\n"
        + f"const char *const addernet_class_names[{len(names)}] = {{{quoted}}};\n\n"
        + f"const an_model addernet_model = {{layers, {len(program.layers)}, maps, {program.num_classes}, arena, "
          f"scratch}};\n")
    return {"weight_bytes": weight_bytes, "arena_bytes": arena, "scratch_bytes": 4 * scratch_words}
