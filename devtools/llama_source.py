"""llama.cpp from the llama-cpp-python sdist: trimmed to travel, built once for both sides.

The 0.3.36 sdist is 76.6 MB, mostly material no build reads (vocabulary GGUFs under
vendor/llama.cpp/models, docs, media, tests, benches, the other GPU backends). ``trim`` keeps
what CMake reads for the CPU and CUDA backends, libllama, libmtmd, common and the tools tree
(llama-server among them), plus the ``llama_cpp`` Python package, as one xz tarball.

``build`` configures vendor/llama.cpp once with shared libraries and builds libllama (what
llama-cpp-python loads) and llama-server from the same tree and the same flags, so the
benchmark compares two front ends over one build; ``install_python_package`` then lays the
``llama_cpp`` package out as its wheel would, with those libraries in ``llama_cpp/lib``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path, PurePosixPath

VENDOR = PurePosixPath("vendor/llama.cpp")
# Under vendor/llama.cpp: what no CPU or CUDA build reads.
# scripts/ stays: tools/ui builds through scripts/ui-assets.cmake (no UI embedded offline).
DROPPED = ("models", "docs", "media", "benches", "tests", "examples", "pocs", "conversion",
           "gguf-py", "ci", "app", "skills", ".github", "requirements",
           "tools/ui/tests", "tools/ui/e2e", "tools/ui/static", "tools/ui/src")
OTHER_BACKENDS = ("ggml-vulkan", "ggml-sycl", "ggml-metal", "ggml-opencl", "ggml-cann",
                  "ggml-musa", "ggml-hip", "ggml-webgpu", "ggml-hexagon", "ggml-openvino",
                  "ggml-et", "ggml-virtgpu", "ggml-zdnn", "ggml-kompute", "ggml-rpc",
                  "ggml-zendnn")
BUILD_TARGETS = ("llama", "mtmd", "llama-server")


def _kept(relative: PurePosixPath) -> bool:
    parts = relative.parts
    if not parts:
        return True
    if parts[0] in ("llama_cpp", "LICENSE.md", "pyproject.toml", "CMakeLists.txt"):
        return True
    if parts[:2] != VENDOR.parts:
        return parts[0] == "vendor" and len(parts) == 1
    inner = PurePosixPath(*parts[2:])
    text = inner.as_posix()
    if any(text == d or text.startswith(d + "/") for d in DROPPED):
        return False
    return not (len(inner.parts) >= 3 and inner.parts[:2] == ("ggml", "src")
                and inner.parts[2] in OTHER_BACKENDS)


def trim(sdist: Path, destination: Path) -> int:
    """Writes the kept part of the sdist as ``destination`` (tar.xz); returns its size."""
    with tarfile.open(sdist, "r:gz") as source, \
            tarfile.open(destination, "w:xz", preset=6) as out:
        for member in source.getmembers():
            relative = PurePosixPath(*PurePosixPath(member.name).parts[1:])
            if not _kept(relative) or not (member.isfile() or member.isdir()):
                continue
            member.name = f"llama-src/{relative.as_posix()}" if relative.parts else "llama-src"
            handle = source.extractfile(member) if member.isfile() else None
            out.addfile(member, handle)
    return destination.stat().st_size


def unpack(tarball: Path, root: Path) -> Path:
    with tarfile.open(tarball, "r:xz") as archive:
        archive.extractall(root, filter="data")
    return root / "llama-src"


def build(source: Path, build_dir: Path, cuda: bool, jobs: int, log: Path) -> float:
    """Configures and builds libllama, libmtmd and llama-server; returns the seconds it took.
    CUDA builds target compute capability 9.0 only (the H200): every other architecture would
    multiply the kernels compiled."""
    flags = ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON",
             "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
             "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_APP=OFF",
             "-DGGML_NATIVE=ON"]
    if cuda:
        flags += ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90"]
    started = time.perf_counter()
    with log.open("ab") as out:
        subprocess.run(["cmake", "-S", str(source / VENDOR), "-B", str(build_dir), *flags],
                       check=True, stdout=out, stderr=subprocess.STDOUT)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", str(jobs), "--target",
                        *BUILD_TARGETS], check=True, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def libraries(build_dir: Path) -> list[Path]:
    return sorted(p for p in (build_dir / "bin").glob("lib*.so*") if p.is_file())


def llama_server(build_dir: Path) -> Path:
    return build_dir / "bin" / "llama-server"


def install_python_package(source: Path, build_dir: Path, site: Path) -> Path:
    """``site/llama_cpp`` as the wheel lays it out: the Python sources and, in lib/, the
    libraries just built (llama-cpp-python looks there first)."""
    package = site / "llama_cpp"
    if package.exists():
        shutil.rmtree(package)
    shutil.copytree(source / "llama_cpp", package)
    lib = package / "lib"
    lib.mkdir(exist_ok=True)
    for library in libraries(build_dir):
        shutil.copy2(library, lib / library.name, follow_symlinks=True)
    return package


def default_jobs() -> int:
    return os.cpu_count() or 1
