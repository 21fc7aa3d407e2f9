"""The GPU check's carry: loads that fit a device call, sha256 checks naming what is missing,
and skeletons that rebuild files of the original's size and layout (devtools/gpu_carry.py,
devtools/model_skeletons.py). No GPU, no models: small files written here; and
that every model file the check's models.toml names is one it writes (scripts/gpu_check.py)."""

from __future__ import annotations

import importlib.util
import struct
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from devtools import gpu_carry, model_skeletons
from devtools.gpu_carry import CarriedFile

ROOT = Path(__file__).resolve().parents[2]


def gpu_check_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_every_model_file_the_checks_models_toml_names_is_written_on_the_gpu_machine(
    tmp_path: Path,
) -> None:
    # The check once carried the vision fixture's projector but never wrote it out, and
    # would have failed to boot on the one lent machine.
    script = gpu_check_script()
    layout = script.Layout(tmp_path)
    config = tomllib.loads(script.check_models_toml(layout))
    named = [Path(model[key]) for model in config["models"]
             for key in ("path", "mmproj") if key in model]
    assert named and all(path.parent == layout.models for path in named), named
    missing = {path.name for path in named} - script.carried_names()
    assert not missing, f"named by the check's models.toml, never written: {sorted(missing)}"


def files(*sizes: int) -> list[CarriedFile]:
    return [CarriedFile(f"f{i}", size, f"{i:064x}") for i, size in enumerate(sizes)]


def test_loads_never_exceed_the_room_and_pack_the_largest_first() -> None:
    placed = gpu_carry.split_into_loads(files(40, 35, 20, 5, 5, 3), room=60)
    assert gpu_carry.load_count(placed) == 2
    for load in (1, 2):
        assert gpu_carry.load_size(placed, load) <= 60
    assert {f.name for f in placed if f.load == 1} == {"f0", "f2"}  # 40 + 20
    assert sorted(f.name for f in placed) == [f"f{i}" for i in range(6)]


def test_files_named_first_go_into_load_one_before_larger_ones() -> None:
    placed = gpu_carry.split_into_loads(files(50, 8, 4), room=60, first=("f2",))
    by_name = {f.name: f.load for f in placed}
    assert by_name["f2"] == 1 and by_name["f0"] == 1 and by_name["f1"] == 2


def test_a_file_larger_than_a_call_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="f1 is"):
        gpu_carry.split_into_loads(files(10, 70), room=60)


def test_problems_name_the_load_of_each_missing_or_changed_file(tmp_path: Path) -> None:
    for name, data in (("a.whl", b"aaaa"), ("b.tar.xz", b"bbbb"), ("c.whl", b"cccc")):
        (tmp_path / name).write_bytes(data)
    manifest = [CarriedFile(f.name, f.size, f.sha256, load)
                for f, load in zip([gpu_carry.describe(tmp_path / n)
                                    for n in ("a.whl", "b.tar.xz", "c.whl")], (1, 1, 2),
                                   strict=True)]
    gpu_carry.write_manifest(tmp_path / "manifest.json", manifest)
    assert gpu_carry.read_manifest(tmp_path / "manifest.json") == manifest
    assert gpu_carry.problems(manifest, tmp_path) == []
    (tmp_path / "c.whl").unlink()
    (tmp_path / "a.whl").write_bytes(b"aaab")
    assert gpu_carry.problems(manifest, tmp_path) == [
        "load 1: a.whl has another sha256 than the manifest's",
        "load 2: c.whl is missing"]


def write_ct2(path: Path) -> None:
    """A two-variable CTranslate2 model.bin (version 6): float16 weights, int32 ids."""
    def string(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    weight = struct.pack("<8e", *[0.5] * 8)
    ids = struct.pack("<2i", 7, 9)
    path.write_bytes(b"".join([
        struct.pack("<I", 6), string("TestSpec"), struct.pack("<I", 1), struct.pack("<I", 2),
        string("layer/weight"), struct.pack("<B", 2), struct.pack("<2I", 2, 4),
        struct.pack("<B", 4), struct.pack("<I", len(weight)), weight,
        string("ids"), struct.pack("<B", 1), struct.pack("<I", 2), struct.pack("<B", 3),
        struct.pack("<I", len(ids)), ids,
        struct.pack("<I", 1), string("alias"), string("layer/weight")]))


def test_a_ct2_skeleton_keeps_every_byte_but_the_float_weights(tmp_path: Path) -> None:
    original = tmp_path / "model.bin"
    write_ct2(original)
    skeleton = model_skeletons.ct2_skeleton(original)
    holes = [s for s in skeleton.segments if isinstance(s, model_skeletons.Hole)]
    assert [(h.length, h.fill) for h in holes] == [(16, "float16")]
    index, blob = model_skeletons.save(skeleton, original, tmp_path / "model.bin")
    assert blob.stat().st_size == original.stat().st_size - 16
    rebuilt = tmp_path / "rebuilt.bin"
    assert model_skeletons.rebuild(index, blob, rebuilt) == original.stat().st_size
    before, after = original.read_bytes(), rebuilt.read_bytes()
    start = before.index(struct.pack("<8e", *[0.5] * 8))
    assert before[:start] == after[:start] and before[start + 16:] == after[start + 16:]
    assert after[start:start + 16] != before[start:start + 16]


def test_quantized_blocks_get_finite_small_scales(tmp_path: Path) -> None:
    hole = model_skeletons.Hole(20 * 64, "blocks", 20, (0, 2))  # Q4_1: d, m, 16 quant bytes
    skeleton = model_skeletons.Skeleton("gguf", 8 + hole.length,
                                        (model_skeletons.Literal(8), hole))
    original = tmp_path / "tiny.gguf"
    original.write_bytes(b"GGUFhead" + bytes(hole.length))
    index, blob = model_skeletons.save(skeleton, original, original)
    rebuilt = tmp_path / "rebuilt.gguf"
    model_skeletons.rebuild(index, blob, rebuilt)
    data = rebuilt.read_bytes()
    assert data[:8] == b"GGUFhead"
    for block in range(64):
        d, m = struct.unpack_from("<2e", data, 8 + 20 * block)
        assert 0.99e-3 <= d <= 1.01e-2 and 0.99e-3 <= m <= 1.01e-2  # fp16 rounding
