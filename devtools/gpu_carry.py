"""What travels to the GPU machine: the carried files, split into loads that fit one call.

A device call carries the working tree plus named ignored folders, 64 MiB in all, and a
staged file survives only while the machine stays warm. So ``--prepare`` packs everything the
GPU run needs (wheels, the trimmed llama.cpp sources, model skeletons) into numbered loads,
``.gpu-carry/load-N/``, each at most the room a call has once the tracked tree is counted,
and writes one manifest (every file's load, size and sha256) into each load. Staging a load
copies its files into the run folder after checking each one's sha256; the run checks the
whole manifest first and names exactly which file of which load is missing or wrong.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
CALL_LIMIT = 64 * MIB  # the device tool's limit on what one call carries, tree included
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CarriedFile:
    name: str  # a plain file name: loads are flat folders
    size: int
    sha256: str
    load: int = 0  # 1-based once split


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe(path: Path) -> CarriedFile:
    return CarriedFile(path.name, path.stat().st_size, sha256_of(path))


def split_into_loads(files: Iterable[CarriedFile], room: int,
                     first: Collection[str] = ()) -> list[CarriedFile]:
    """First-fit decreasing: the largest file first into the first load with room, so the
    count of loads (device calls) stays near the least. The files named in ``first`` go into
    load 1 before any other (what the first call needs to start the build). A file larger
    than ``room`` cannot travel and is refused by name."""
    loads: list[int] = []  # bytes used per load
    placed: list[CarriedFile] = []
    ordered = sorted(files, key=lambda f: (f.name not in first, -f.size, f.name))
    if sum(f.size for f in ordered if f.name in first) > room:
        raise ValueError(f"{', '.join(sorted(first))} together exceed a call's {mib(room)}")
    for item in ordered:
        if item.size > room:
            raise ValueError(f"{item.name} is {mib(item.size)}, more than the {mib(room)} a "
                             "device call has room for")
        for index, used in enumerate(loads):
            if used + item.size <= room:
                loads[index] += item.size
                placed.append(CarriedFile(item.name, item.size, item.sha256, index + 1))
                break
        else:
            loads.append(item.size)
            placed.append(CarriedFile(item.name, item.size, item.sha256, len(loads)))
    return sorted(placed, key=lambda f: (f.load, f.name))


def load_count(files: Sequence[CarriedFile]) -> int:
    return max((f.load for f in files), default=0)


def load_size(files: Sequence[CarriedFile], load: int) -> int:
    return sum(f.size for f in files if f.load == load)


def write_manifest(path: Path, files: Sequence[CarriedFile]) -> None:
    path.write_text(json.dumps([f.__dict__ for f in files], indent=1) + "\n", encoding="utf-8")


def read_manifest(path: Path) -> list[CarriedFile]:
    return [CarriedFile(str(item["name"]), int(item["size"]), str(item["sha256"]),
                        int(item["load"]))
            for item in json.loads(path.read_text(encoding="utf-8"))]


def problems(files: Sequence[CarriedFile], folder: Path) -> list[str]:
    """Each file of the manifest that ``folder`` lacks or holds with other bytes, with the
    load to stage again; empty when all is there."""
    found: list[str] = []
    for item in files:
        path = folder / item.name
        if not path.is_file():
            found.append(f"load {item.load}: {item.name} is missing")
        elif path.stat().st_size != item.size:
            found.append(f"load {item.load}: {item.name} has {path.stat().st_size} bytes, "
                         f"expected {item.size}")
        elif sha256_of(path) != item.sha256:
            found.append(f"load {item.load}: {item.name} has another sha256 than the manifest's")
    return found


def mib(size: float) -> str:
    return f"{size / MIB:.1f} MiB"
