"""Model files without their weights, and same-shaped files with random weights made from them.

A GPU machine that can receive only 64 MiB per call cannot receive the default models (94 MB
SmolLM2, 242 MB Gemma 3, 75 + 144 MB whisper). What decides where a model lands and how fast it
runs is its architecture, tensor shapes and tensor types, not the values of its weights; so
the check carries a *skeleton* of each file: every byte that is not weight data (GGUF's header
with the whole tokenizer and chat template, CTranslate2's variable names, shapes and types,
the aliases) plus, for each run of weight data, its length and what it holds. ``rebuild``
writes a file of the same size and layout with random weights of that type: llama.cpp and
CTranslate2 load it exactly as they load the original (same offload, same kernels, same
memory), and only the words it produces are nonsense.

Random values are drawn so that nothing overflows: floats from N(0, 0.02), and quantized blocks
get random quants with their fp16 scales drawn small (random bytes there could be NaN or Inf).

A skeleton is two files: ``NAME.skeleton.json`` (the segments) and ``NAME.skeleton.bin``
(the literal bytes, concatenated). Reading GGUFs uses llama.cpp's own ``gguf`` package (from
the llama-cpp-python sources); rebuilding needs only numpy.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# ggml type id -> offsets of the fp16 scale fields inside one block (ggml-common.h's layouts).
# Only the types present in the default models and their near kin; others are refused at
# --prepare, never guessed.
BLOCK_SCALES: dict[int, tuple[int, ...]] = {
    2: (0,),        # Q4_0: d, qs[16]
    3: (0, 2),      # Q4_1: d, m, qs[16]
    6: (0,),        # Q5_0: d, qh[4], qs[16]
    7: (0, 2),      # Q5_1: d, m, qh[4], qs[16]
    8: (0,),        # Q8_0: d, qs[32]
    10: (80, 82),   # Q2_K: scales[16], qs[64], d, dmin
    11: (108,),     # Q3_K: hmask[32], qs[64], scales[12], d
    12: (0, 2),     # Q4_K: d, dmin, scales[12], qs[128]
    13: (0, 2),     # Q5_K: d, dmin, scales[12], qh[32], qs[128]
    14: (208,),     # Q6_K: ql[128], qh[64], scales[16], d
}
GGML_FLOATS: dict[int, str] = {0: "float32", 1: "float16", 30: "bfloat16"}
# CTranslate2's variable type ids (specs/model_spec.py's dtype order).
CT2_TYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
CT2_FLOATS = frozenset({"float32", "float16", "bfloat16"})
WEIGHT_STD = 0.02
SCALE_RANGE = (1e-3, 1e-2)
CHUNK = 1 << 24  # bytes generated at a time: bounded memory for any model size


@dataclass(frozen=True)
class Hole:
    """A run of weight data: ``length`` bytes of ``fill`` ("float32", "float16", "bfloat16",
    "zeros", or "blocks" of ``block_bytes`` with fp16 scales at ``scales``)."""

    length: int
    fill: str
    block_bytes: int = 0
    scales: tuple[int, ...] = ()


@dataclass(frozen=True)
class Literal:
    length: int


Segment = Literal | Hole


@dataclass(frozen=True)
class Skeleton:
    kind: str  # "gguf" or "ct2"
    size: int  # the original file's size; the rebuilt file has the same
    segments: tuple[Segment, ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, "segments": [
            {"literal": s.length} if isinstance(s, Literal) else
            {"hole": s.length, "fill": s.fill, "block_bytes": s.block_bytes,
             "scales": list(s.scales)} for s in self.segments]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Skeleton:
        segments: list[Segment] = []
        for item in data["segments"]:
            if "literal" in item:
                segments.append(Literal(int(item["literal"])))
            else:
                segments.append(Hole(int(item["hole"]), str(item["fill"]),
                                     int(item["block_bytes"]),
                                     tuple(int(x) for x in item["scales"])))
        return cls(str(data["kind"]), int(data["size"]), tuple(segments))


def _segments_from_holes(size: int, holes: list[tuple[int, Hole]]) -> tuple[Segment, ...]:
    """Literal runs between the holes (given as (offset, hole), any order)."""
    segments: list[Segment] = []
    at = 0
    for offset, hole in sorted(holes, key=lambda pair: pair[0]):
        if offset < at:
            raise ValueError(f"overlapping weight data at byte {offset}")
        if offset > at:
            segments.append(Literal(offset - at))
        segments.append(hole)
        at = offset + hole.length
    if at < size:
        segments.append(Literal(size - at))
    return tuple(segments)


def gguf_skeleton(path: Path) -> Skeleton:
    # llama.cpp's gguf-py: --prepare puts the llama-cpp-python sources' copy first on sys.path;
    # the pinned dev dependency (the vision fixture's writer) type-checks it.
    import gguf

    reader = gguf.GGUFReader(str(path))
    holes: list[tuple[int, Hole]] = []
    for tensor in reader.tensors:
        type_id = int(tensor.tensor_type)
        length = int(tensor.n_bytes)
        if type_id in GGML_FLOATS:
            holes.append((int(tensor.data_offset), Hole(length, GGML_FLOATS[type_id])))
        elif type_id in BLOCK_SCALES:
            _, block_bytes = gguf.GGML_QUANT_SIZES[tensor.tensor_type]
            holes.append((int(tensor.data_offset),
                          Hole(length, "blocks", int(block_bytes), BLOCK_SCALES[type_id])))
        else:
            raise ValueError(f"{path.name}: tensor {tensor.name} has type "
                             f"{tensor.tensor_type.name}, which no generator here fills")
    return Skeleton("gguf", path.stat().st_size, _segments_from_holes(path.stat().st_size, holes))


def _read_ct2_string(handle: BinaryIO) -> None:
    (length,) = struct.unpack("<H", handle.read(2))
    handle.seek(length, 1)


def ct2_skeleton(path: Path) -> Skeleton:
    """CTranslate2's model.bin (binary version 6): header, then per variable its name, rank,
    dims, type id, byte count and data, then the aliases."""
    holes: list[tuple[int, Hole]] = []
    with path.open("rb") as handle:
        (version,) = struct.unpack("<I", handle.read(4))
        if version != 6:
            raise ValueError(f"{path}: CTranslate2 binary version {version}, expected 6")
        _read_ct2_string(handle)  # the spec's name
        handle.read(4)  # its revision
        (count,) = struct.unpack("<I", handle.read(4))
        for _ in range(count):
            _read_ct2_string(handle)
            (rank,) = struct.unpack("<B", handle.read(1))
            handle.read(4 * rank)
            (type_id,) = struct.unpack("<B", handle.read(1))
            (length,) = struct.unpack("<I", handle.read(4))
            dtype = CT2_TYPES[type_id]
            if dtype in CT2_FLOATS:
                holes.append((handle.tell(), Hole(length, dtype)))
            elif length > 1 << 16:  # large integer tensors (quantized weights): zeros
                holes.append((handle.tell(), Hole(length, "zeros")))
            handle.seek(length, 1)  # small integer variables stay literal
    size = path.stat().st_size
    return Skeleton("ct2", size, _segments_from_holes(size, holes))


def save(skeleton: Skeleton, source: Path, destination: Path) -> tuple[Path, Path]:
    """Writes NAME.skeleton.json and NAME.skeleton.bin (the literal bytes of ``source``)."""
    index = destination.with_name(destination.name + ".skeleton.json")
    blob = destination.with_name(destination.name + ".skeleton.bin")
    with source.open("rb") as original, blob.open("wb") as literals:
        for segment in skeleton.segments:
            if isinstance(segment, Literal):
                literals.write(original.read(segment.length))
            else:
                original.seek(segment.length, 1)
    index.write_text(json.dumps(skeleton.to_json()), encoding="utf-8")
    return index, blob


def _floats(rng: np.random.Generator, count: int, fill: str) -> bytes:
    values = rng.normal(0.0, WEIGHT_STD, count).astype(np.float32)
    if fill == "float32":
        return values.tobytes()
    if fill == "float16":
        return values.astype(np.float16).tobytes()
    return (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()  # bfloat16: the top half


def _blocks(rng: np.random.Generator, count: int, hole: Hole) -> bytes:
    data = rng.integers(0, 256, size=(count, hole.block_bytes), dtype=np.uint8)
    low, high = SCALE_RANGE
    for at in hole.scales:
        scales = rng.uniform(low, high, count).astype(np.float16)
        data[:, at:at + 2] = scales.view(np.uint8).reshape(count, 2)
    return data.tobytes()


def _fill(rng: np.random.Generator, hole: Hole) -> Iterator[bytes]:
    width = {"float32": 4, "float16": 2, "bfloat16": 2}.get(hole.fill, 1)
    unit = hole.block_bytes if hole.fill == "blocks" else width
    if hole.length % unit:
        raise ValueError(f"{hole.length} bytes of {hole.fill} is not a whole number of {unit}")
    step = max(unit, CHUNK - CHUNK % unit)
    for start in range(0, hole.length, step):
        length = min(step, hole.length - start)
        if hole.fill == "zeros":
            yield bytes(length)
        elif hole.fill == "blocks":
            yield _blocks(rng, length // unit, hole)
        elif hole.fill in ("float32", "float16", "bfloat16"):
            yield _floats(rng, length // unit, hole.fill)
        else:
            raise ValueError(f"unknown fill {hole.fill!r}")


def rebuild(index: Path, blob: Path, destination: Path, seed: int = 0) -> int:
    """Writes the random-weight file a skeleton describes; returns its size."""
    skeleton = Skeleton.from_json(json.loads(index.read_text(encoding="utf-8")))
    rng = np.random.default_rng(seed)
    written = 0
    with blob.open("rb") as literals, destination.open("wb") as out:
        for segment in skeleton.segments:
            if isinstance(segment, Literal):
                written += out.write(literals.read(segment.length))
            else:
                for piece in _fill(rng, segment):
                    written += out.write(piece)
    if written != skeleton.size:
        raise ValueError(f"{destination}: wrote {written} bytes, the skeleton says "
                         f"{skeleton.size}")
    return written
