"""Which Python wheels the GPU machine lacks, and getting exactly those.

The GPU machine (the device tool's ``nvidia-h200``) reaches no registry; its python3 is 3.12
with its own torch 2.11 (cu130), numpy, transformers, onnxruntime and more (KINDS.md lists
them). ``missing`` walks the appliance's requirements (and the benchmark client's: openai and
httpx2) through this venv's installed metadata, evaluating markers for Python 3.12 on Linux,
and keeps what the machine does not have, at the version tested here. What the machine has is
used as it is, whatever its version (torch 2.11 for the pinned 2.13: the appliance calls
nothing newer); llama-cpp-python is built there from source instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

# Read off KINDS.md ("Python packages already there", 2026-11-17), names normalized; kept as
# one block of words so it diffs against that list line by line.
_DEVICE_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc
anyio attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama
contourpy coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler
cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py
mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja
numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark
pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml
regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy
seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
"""
DEVICE_HAS = frozenset(_DEVICE_LIST.split())
BUILT_THERE = frozenset({"llama-cpp-python"})
# Packages only the kinds the check leaves out need (scripts/gpu_check.py NOT_CARRIED): the
# speech engine imports piper lazily, so a check without the voice runs without them.
LEFT_OUT = frozenset({"piper-tts"})
BENCH_CLIENT = ("openai", "httpx2")
# pip matches manylinux tags exactly: every glibc level a wheel of these may carry.
PLATFORMS = (*(f"manylinux_2_{n}_x86_64" for n in range(17, 40)),
             "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64")
TARGET_PYTHON = "3.12"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _target_environment() -> dict[str, str]:
    environment = {key: str(value) for key, value in default_environment().items()}
    environment.update(python_version=TARGET_PYTHON, python_full_version=f"{TARGET_PYTHON}.3",
                       sys_platform="linux", platform_system="Linux",
                       platform_machine="x86_64", implementation_name="cpython",
                       platform_python_implementation="CPython", extra="")
    return environment


def missing(pyproject: Path) -> list[tuple[str, str]]:
    """(name, version) of every package the appliance (its pyproject's dependencies) and the
    bench client need that the GPU machine lacks, sorted; versions are those installed here.
    The dependencies of what is built there (llama-cpp-python) are walked too."""
    environment = _target_environment()
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    roots = [Requirement(r) for r in declared]
    roots = [r for r in roots if r.marker is None or r.marker.evaluate(environment)]
    todo = [normalize(r.name) for r in roots] + list(BENCH_CLIENT)
    seen: set[str] = set()
    wanted: list[tuple[str, str]] = []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in DEVICE_HAS or name in LEFT_OUT:
            continue
        distribution = metadata.distribution(name)
        if name not in BUILT_THERE:
            wanted.append((name, distribution.version))
        for text in distribution.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(normalize(requirement.name))
    return sorted(wanted)


def download(packages: list[tuple[str, str]], folder: Path) -> list[Path]:
    """The cp312 manylinux wheels of ``packages`` into ``folder`` (pip's cache makes a second
    --prepare cheap); returns them."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--python-version", TARGET_PYTHON,
                    "--implementation", "cp", *platforms, "--dest", str(folder),
                    *(f"{name}=={version}" for name, version in packages)], check=True)
    found = []
    for name, version in packages:
        stem = normalize(name).replace("-", "_")
        matches = [p for p in folder.glob("*.whl")
                   if normalize(p.name.split("-")[0]).replace("-", "_") == stem
                   and p.name.split("-")[1] == version]
        if len(matches) != 1:
            raise RuntimeError(f"expected one wheel of {name}=={version} in {folder}, found "
                               f"{[p.name for p in matches]}")
        found.append(matches[0])
    return found


def install_command(wheels: list[Path], site: Path, foreign: bool) -> list[str]:
    """pip's offline install into ``site``. ``foreign``: for Python 3.12 on x86-64 Linux from
    another interpreter (the dry run proves the set installs), else for this interpreter."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
               "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site)]
    if foreign:
        command += ["--only-binary=:all:", "--python-version", TARGET_PYTHON,
                    "--implementation", "cp",
                    *(arg for platform in PLATFORMS for arg in ("--platform", platform))]
    return command + [str(w) for w in wheels]
