"""The GPU path, proven in one prepared check: prepare here, stage and run on the GPU machine.

Steps (README, "Running on a GPU"):

  --prepare        here, with registry access: the wheels the GPU machine lacks, the trimmed
                   llama.cpp sources, the model skeletons and the speech clip, split into loads
                   of at most one device call each (.gpu-carry/load-N/, git-ignored); prints
                   the plan, the carried size per call and a time estimate.
  --stage N        on the GPU machine: load N's files into /tmp/appliance-gpu/carry, each
                   checked by sha256 (the machine keeps them only while it stays warm).
  --build          the wheels installed offline into /tmp/appliance-gpu/site and llama.cpp
                   built once (CUDA, sm_90, ninja, every core) for llama-cpp-python and
                   llama-server both; skipped when already done on this machine.
  --run OUT        checks every load is there (names what is missing), builds if needed,
                   writes the random-weight models, boots `appliance serve` on the default
                   models with gpu_layers = "all" and device = "auto", measures, and writes
                   OUT/gpu-check.md and OUT/gpu-check.json; exits 1 if a model did not land
                   on the GPU.
  --dry-run        all of the above on this CPU machine: CPU build, CPU devices, fewer and
                   shorter requests; the wheels are installed for Python 3.12 into a folder
                   that is not run (this machine's Python is another), the venv runs instead.

Usage: scripts/gpu-check --prepare | --stage N [--build] [--run OUT] | --dry-run [OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repo root

from devtools import gpu_carry, llama_source  # noqa: E402
from devtools.gpu_carry import MANIFEST, CarriedFile, mib  # noqa: E402

CARRY = ROOT / ".gpu-carry"
CACHE = CARRY / "cache"
DEVICE_ROOT = Path("/tmp/appliance-gpu")
DRY_ROOT = Path.home() / ".cache" / "appliance" / "gpu-check-dry"
LLAMA_VERSION = "0.3.36"
SDIST = CACHE / f"llama_cpp_python-{LLAMA_VERSION}.tar.gz"
LLAMA_SRC = "llama-src.tar.xz"
MODELS = "models.tar.xz"
# Room left in a call for the tree's own growth between --prepare and the run.
MARGIN = 2 * gpu_carry.MIB
# Into load 1 first: the build can then start in the first call.
FIRST_LOAD = (LLAMA_SRC, MODELS)
GGUFS = ("SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf")
WHISPERS = ("whisper-tiny.en", "whisper-base")
# Carried as they are: tiny-random-sd (5 MB, random already) and the vision fixture's
# projector (0.9 MB). One list for packing and writing, so neither can leave one out.
CARRIED_WHOLE = ("tiny-random-sd", "tiny-random-mmproj-smollm2.gguf")
# Default models the check leaves out, and why (the report says so): the Piper voice is a
# 63 MB ONNX file (no skeleton writer for ONNX yet), and its piper-tts wheel would not fit a
# load beside the others; on the GPU it would run on ONNX Runtime's CUDA provider only if the
# machine's onnxruntime had one (its image ships the CPU build).
NOT_CARRIED = {"speech": "the Piper voice (63 MB ONNX) does not fit a load; not measured"}
SPEECH = ("The appliance loads every model at boot and serves them through one API. "
          "Teams run it on a workstation, on a shared server, or on a laptop.")
# Seconds, for the estimate: read off the dry run's steps here and what llama.cpp's CUDA
# build and a cold machine cost elsewhere; the GPU run prints what each step really took.
# Boot and the whisper requests are long because random whisper weights decode to the token
# limit (warm-up at six temperatures; the check's requests at one) on the CPU fallback.
ESTIMATE_S = {"machine start": 90, "transfer per call": 15, "wheel install": 15,
              "CUDA build (sm_90, -j 16)": 270, "models written": 15, "boot": 120,
              "first vs tenth requests": 100, "chat vs llama-server": 120,
              "mixed load (issue 18)": 30, "in-process baselines": 40}


@dataclass(frozen=True)
class Layout:
    """Where a run keeps its things: the GPU machine's /tmp, or a cache folder here."""

    root: Path

    @property
    def carry(self) -> Path:
        return self.root / "carry"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def build(self) -> Path:
        return self.root / "llama-build"

    @property
    def source(self) -> Path:
        return self.root / "llama-src"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def steps(self) -> Path:
        return self.root / "steps.json"


# --- --prepare ---


def tree_size() -> int:
    """What every call carries besides a load: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    return sum(os.lstat(ROOT / name).st_size for name in listed
               if name and os.path.lexists(ROOT / name))


def fetch_sdist() -> None:
    if SDIST.is_file():
        return
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", "--dest", str(CACHE),
                    f"llama-cpp-python=={LLAMA_VERSION}"], check=True)


def speech_clip(destination: Path) -> None:
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(destination), SPEECH],
                   check=True)


def pack_models(destination: Path) -> None:
    """Skeletons of the GGUFs and whisper weights, whisper's small files, tiny-random-sd
    whole (5 MB of random weights already), and the speech clip: one xz tarball."""
    from devtools import model_skeletons  # reads GGUFs with gguf-py from the sdist

    sys.path.insert(0, str(CACHE / "gguf-py"))
    staging = CACHE / "models-src"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    models = ROOT / "models"
    for name in GGUFS:
        model_skeletons.save(model_skeletons.gguf_skeleton(models / name), models / name,
                             staging / name)
    for name in WHISPERS:
        (staging / name).mkdir()
        for side in (models / name).iterdir():  # config, tokenizer, vocabulary: all but weights
            if side.is_file() and side.name != "model.bin":
                shutil.copy2(side, staging / name / side.name)
        model_skeletons.save(model_skeletons.ct2_skeleton(models / name / "model.bin"),
                             models / name / "model.bin", staging / name / "model.bin")
    for name in CARRIED_WHOLE:
        copy_whole(models / name, staging / name)
    speech_clip(staging / "speech.wav")
    with tarfile.open(destination, "w:xz", preset=6) as archive:
        archive.add(staging, arcname="models-src")


def copy_whole(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)


def carried_names() -> frozenset[str]:
    """Every file or folder under models/ that the check writes on the GPU machine."""
    return frozenset((*GGUFS, *WHISPERS, *CARRIED_WHOLE))


def gguf_py() -> None:
    """llama.cpp's gguf-py, out of the sdist, to read the GGUFs here."""
    target = CACHE / "gguf-py"
    if target.is_dir():
        return
    with tarfile.open(SDIST, "r:gz") as archive:
        members = [m for m in archive.getmembers()
                   if "/vendor/llama.cpp/gguf-py/gguf/" in m.name]
        for member in members:
            member.name = "gguf-py/gguf/" + member.name.split("/gguf-py/gguf/", 1)[1]
        archive.extractall(CACHE, members=members, filter="data")


def prepare() -> int:
    from devtools import gpu_wheels

    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    wanted = gpu_wheels.missing(ROOT / "pyproject.toml")
    print(f"wheels the GPU machine lacks ({len(wanted)}): "
          + ", ".join(f"{n}=={v}" for n, v in wanted), flush=True)
    wheels = gpu_wheels.download(wanted, CACHE / "wheels")
    fetch_sdist()
    gguf_py()
    llama_source.trim(SDIST, CACHE / LLAMA_SRC)
    pack_models(CACHE / MODELS)
    sources = [*wheels, CACHE / LLAMA_SRC, CACHE / MODELS]
    tree = tree_size()
    room = gpu_carry.CALL_LIMIT - tree - MARGIN
    placed = gpu_carry.split_into_loads([gpu_carry.describe(p) for p in sources], room,
                                        first=FIRST_LOAD)
    for old in CARRY.glob("load-*"):
        shutil.rmtree(old)
    by_name = {p.name: p for p in sources}
    for item in placed:
        folder = CARRY / f"load-{item.load}"
        folder.mkdir(exist_ok=True)
        shutil.copy2(by_name[item.name], folder / item.name)
    for load in range(1, gpu_carry.load_count(placed) + 1):
        gpu_carry.write_manifest(CARRY / f"load-{load}" / MANIFEST, placed)
    print(f"prepared in {time.perf_counter() - started:.0f} s", flush=True)
    print_plan(placed, tree)
    return 0


def print_plan(placed: list[CarriedFile], tree: int) -> None:
    count = gpu_carry.load_count(placed)
    print(f"\nthe tree itself: {mib(tree)} in every call; limit {mib(gpu_carry.CALL_LIMIT)}")
    for load in range(1, count + 1):
        files = [f for f in placed if f.load == load]
        total = gpu_carry.load_size(placed, load) + tree
        print(f"load {load}: {len(files)} files, {mib(gpu_carry.load_size(placed, load))} "
              f"(+ tree = {mib(total)} carried)")
        for item in files:
            print(f"    {mib(item.size):>10}  {item.name}")
    print("\ndevice calls (carry, command, timeout):")
    for load in range(1, count + 1):
        last = load == count
        command = f"scripts/gpu-check --stage {load}" + (" --build" if load == 1 else "") + (
            " --run $OUT" if last else "")
        print(f"  {load}. carry [\".gpu-carry/load-{load}\"]  {command}  timeout_s 540")
    run_s = sum(v for k, v in ESTIMATE_S.items() if k != "transfer per call")
    total = run_s + ESTIMATE_S["transfer per call"] * count
    print("\nestimate of the GPU run:")
    for step, seconds in ESTIMATE_S.items():
        print(f"  {seconds:>5} s  {step}" + (f" (x{count})" if step == "transfer per call"
                                            else ""))
    print(f"  {total:>5} s  in all, of 900 s of device time; no call over 600 s when the "
          "build runs in the first")


# --- --stage N ---


def stage(load: int, layout: Layout) -> int:
    folder = CARRY / f"load-{load}"
    if not (folder / MANIFEST).is_file():
        print(f"no {folder.relative_to(ROOT)}/{MANIFEST}: was it carried (carry "
              f"[\".gpu-carry/load-{load}\"]) and prepared (scripts/gpu-check --prepare)?")
        return 2
    manifest = gpu_carry.read_manifest(folder / MANIFEST)
    wrong = gpu_carry.problems([f for f in manifest if f.load == load], folder)
    if wrong:
        print("\n".join(["load arrived damaged:", *wrong]))
        return 2
    layout.carry.mkdir(parents=True, exist_ok=True)
    for item in manifest:
        if item.load == load:
            shutil.copy2(folder / item.name, layout.carry / item.name)
    shutil.copy2(folder / MANIFEST, layout.carry / MANIFEST)
    print(f"load {load} staged: {mib(gpu_carry.load_size(manifest, load))} in {layout.carry}")
    return 0


# --- --build and --run ---


def record(layout: Layout, step: str, value: object) -> None:
    steps = json.loads(layout.steps.read_text()) if layout.steps.is_file() else {}
    steps[step] = value
    layout.steps.write_text(json.dumps(steps, indent=1))


def carried(layout: Layout, names: tuple[str, ...] | None = None) -> list[str]:
    """What of the manifest (or of ``names`` in it) the carry folder lacks."""
    if not (layout.carry / MANIFEST).is_file():
        return ["no load staged yet: run scripts/gpu-check --stage 1 first"]
    manifest = gpu_carry.read_manifest(layout.carry / MANIFEST)
    wanted = [f for f in manifest if names is None or f.name in names]
    return gpu_carry.problems(wanted, layout.carry)


def install_wheels(layout: Layout, dry: bool) -> None:
    from devtools import gpu_wheels

    stamp = layout.root / "wheels.done"
    if stamp.is_file():
        return
    wheels = sorted(layout.carry.glob("*.whl"))
    site = layout.root / "site-cp312" if dry else layout.site
    started = time.perf_counter()
    subprocess.run(gpu_wheels.install_command(wheels, site, foreign=dry), check=True)
    record(layout, "wheel install s", round(time.perf_counter() - started, 1))
    record(layout, "wheels", [w.name for w in wheels])
    stamp.touch()


def build(layout: Layout, dry: bool, forced: bool = False) -> int:
    wrong = carried(layout, (LLAMA_SRC,))
    if wrong:
        print("\n".join(["cannot build:", *wrong]))
        return 2
    stamp = layout.root / "build.done"
    if dry and not forced and not stamp.is_file() and not dry_build_finished(layout):
        # 212 compile steps on this machine's 2 shared cores take far longer than the rest of
        # the dry run; `--dry-run --dry-build` runs them. Without it the venv's
        # llama-cpp-python (the same 0.3.36 sources, PyPI's CPU build) stands in and the
        # llama-server side is skipped, which the report says.
        record(layout, "llama.cpp build", "skipped in the dry run (no --dry-build): the "
               "venv's llama-cpp-python stands in, no llama-server side")
        return 0
    if not stamp.is_file():
        if not layout.source.is_dir():
            llama_source.unpack(layout.carry / LLAMA_SRC, layout.root)
        jobs = 2 if dry else llama_source.default_jobs()
        log = layout.root / "build.log"
        try:
            seconds = llama_source.build(layout.source, layout.build, cuda=not dry, jobs=jobs,
                                         log=log)
        except subprocess.CalledProcessError:
            print(log.read_text(errors="replace")[-6000:])
            raise
        record(layout, "llama.cpp build s", round(seconds, 1))
        record(layout, "llama.cpp build", f"{'CPU' if dry else 'CUDA sm_90'}, ninja -j {jobs}")
        stamp.touch()
    site = layout.root / "site-llama" if dry else layout.site
    llama_source.install_python_package(layout.source, layout.build, site)
    print(f"llama.cpp built: {llama_source.llama_server(layout.build)}", flush=True)
    if (layout.carry / MANIFEST).is_file() and not carried(layout, None):
        install_wheels(layout, dry)
    return 0


def dry_build_finished(layout: Layout) -> bool:
    """A dry-run build left to finish on its own earlier (ninja would do nothing more)."""
    if not llama_source.llama_server(layout.build).is_file():
        return False
    record(layout, "llama.cpp build", "CPU, ninja -j 2, finished before this run (not timed)")
    (layout.root / "build.done").touch()
    return True


def write_models(layout: Layout) -> None:
    from devtools import model_skeletons

    if (layout.root / "models.done").is_file():
        return
    started = time.perf_counter()
    with tarfile.open(layout.carry / MODELS, "r:xz") as archive:
        archive.extractall(layout.root, filter="data")
    source = layout.root / "models-src"
    layout.models.mkdir(exist_ok=True)
    for name in GGUFS:
        model_skeletons.rebuild(source / f"{name}.skeleton.json",
                                source / f"{name}.skeleton.bin", layout.models / name)
    for name in WHISPERS:
        folder = layout.models / name
        folder.mkdir(exist_ok=True)
        for side in (source / name).iterdir():
            if not side.name.startswith("model.bin."):
                shutil.copy2(side, folder / side.name)
        model_skeletons.rebuild(source / name / "model.bin.skeleton.json",
                                source / name / "model.bin.skeleton.bin", folder / "model.bin")
    for name in CARRIED_WHOLE:
        copy_whole(source / name, layout.models / name)
    shutil.copy2(source / "speech.wav", layout.models / "speech.wav")
    record(layout, "models written s", round(time.perf_counter() - started, 1))
    (layout.root / "models.done").touch()


def check_models_toml(layout: Layout) -> str:
    """The repo's models.toml, [[models]] only, paths into the written models, every chat and
    embedding model with gpu_layers = "all", every other with device = "auto", and the
    SmolLM2 chat model with parallel = "auto" (16 slots on a GPU, 4 on a CPU)."""
    text = (ROOT / "models.toml").read_text(encoding="utf-8")
    body = text[text.index("\n[[models]]") + 1:]
    # Kinds whose weights the loads do not carry (NOT_CARRIED) are left out of the check.
    tables = ["[[models]]" + table for table in body.split("[[models]]")[1:]]
    body = "".join(table for table in tables
                   if not any(f'kind = "{kind}"' in table for kind in NOT_CARRIED))
    lines: list[str] = []
    for line in body.splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        for key in ("path", "mmproj"):
            if stripped.startswith(f"{key} = \"models/"):
                name = stripped.split("\"")[1].removeprefix("models/")
                line = f"{key} = {json.dumps(str(layout.models / name))}"
        if stripped == "parallel = 8":
            line = 'parallel = "auto"'
        lines.append(line)
        if stripped in ('kind = "chat"', 'kind = "embedding"'):
            lines.append('gpu_layers = "all"')
        elif stripped.startswith("kind = "):
            lines.append('device = "auto"')
    result = "\n".join(lines) + "\n"
    tomllib.loads(result)  # still TOML
    return result


def run(out: Path, layout: Layout, dry: bool) -> int:
    wrong = carried(layout)
    if wrong:
        print("\n".join(["not every load is staged on this machine (it keeps them only "
                         "while warm):", *wrong]))
        return 2
    if build(layout, dry):
        return 2
    install_wheels(layout, dry)
    write_models(layout)
    layout.work.mkdir(exist_ok=True)
    (layout.work / "models.body.toml").write_text(check_models_toml(layout), encoding="utf-8")
    out.mkdir(parents=True, exist_ok=True)
    paths = [layout.root / "site-llama", ROOT] if dry else [layout.site, ROOT]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths),
           "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(ROOT / "scripts" / "gpu_check_measure.py"),
               "--work", str(layout.work), "--models", str(layout.models),
               "--llama-server", str(llama_source.llama_server(layout.build)),
               "--steps", str(layout.steps), "--out", str(out)] + (["--dry-run"] if dry else [])
    code = subprocess.run(command, env=env, check=False).returncode
    table = out / "gpu-check.md"
    if table.is_file():  # what the check did not run, under its table
        left_out = "".join(f"- {kind}: {why}\n" for kind, why in NOT_CARRIED.items())
        table.write_text(table.read_text(encoding="utf-8")
                         + f"\nLeft out of this check:\n{left_out}", encoding="utf-8")
    return code


def dry_run(out: Path, dry_build: bool) -> int:
    """Everything on this machine: prepare (unless already), stage every load into the dry
    root, build on the CPU, run on CPU devices."""
    layout = Layout(DRY_ROOT)
    if not list(CARRY.glob("load-*")):
        prepare()
    else:
        print_plan(gpu_carry.read_manifest(CARRY / "load-1" / MANIFEST), tree_size())
    for folder in sorted(CARRY.glob("load-*")):
        if stage(int(folder.name.removeprefix("load-")), layout):
            return 2
    if dry_build and build(layout, dry=True, forced=True):
        return 2
    return run(out, layout, dry=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", action="store_true")
    parser.add_argument("--stage", type=int, metavar="N")
    parser.add_argument("--build", action="store_true")
    parser.add_argument("--run", type=Path, metavar="OUT")
    parser.add_argument("--dry-run", nargs="?", const=DRY_ROOT / "out", type=Path,
                        metavar="OUT")
    parser.add_argument("--dry-build", action="store_true",
                        help="with --dry-run: build llama.cpp on the CPU too (slow here)")
    parser.add_argument("--root", type=Path, default=DEVICE_ROOT,
                        help="the GPU machine's run folder (default /tmp/appliance-gpu)")
    args = parser.parse_args()
    if args.prepare:
        return prepare()
    if args.dry_run is not None:
        return dry_run(args.dry_run, args.dry_build)
    layout = Layout(args.root)
    layout.root.mkdir(parents=True, exist_ok=True)
    if args.stage is not None and (code := stage(args.stage, layout)):
        return code
    if args.build and not carried(layout, (LLAMA_SRC,)) and (code := build(layout, False)):
        return code
    if args.run is not None:
        return run(args.run, layout, dry=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
