"""The measuring half of scripts/gpu-check: boot, placement, latencies, throughput, report.

Run by scripts/gpu_check.py once the wheels, llama.cpp and the models are in place, with them
on PYTHONPATH. It boots `appliance serve` on the check's models.toml and reports:

- where each model landed: llama.cpp's offload count (each GGUF loaded once in a child with
  llama.cpp's log on, as the appliance loads it: n_gpu_layers "all"), the slots "auto" chose,
  CTranslate2's device and compute type and torch's device and dtype from the boot log, GPU
  memory after boot (nvidia-smi) and /ready;
- the first request's latency against the tenth, per model (ten in a row, one at a time);
- chat: aggregate tok/s and TTFT p50/p99 at concurrency 1, 16 and 64, the appliance and
  llama-server (built from the same sources, the same slots and context per slot) both up,
  each level run on one then the other, alternating which goes first (bench_concurrency's
  requests: streamed, temperature 0, max_tokens, usage); then, on the first chat model,
  issue 18's mixed load (bench_mixed: a ~1,500-token prompt every fourth request among
  streams; gap p50/p99, short TTFT, aggregate, pure-decode gap, verdicts) on the same pair;
- whisper's real-time factor and the image model's seconds per step, over HTTP against the
  same library in this process on the same device (after the server is stopped).

Writes gpu-check.md (one table) and gpu-check.json (everything) into --out; exits 1 when a
model did not land on the GPU (on a dry run: when one did not serve).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_concurrency, bench_chat
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

import bench_mixed
import httpx2
import openai
from bench_chat import ModelSpec
from bench_concurrency import Level, run_level

from devtools.server_harness import (
    APPLIANCE,
    create_key,
    free_port,
    spawn,
    stop_process,
    wait_ready,
)

LEVELS = (1, 16, 64)
BOOT_TIMEOUT_S = 600.0
SERIES = 10  # requests in a row per model: the first against the tenth
# Random whisper weights decode nonsense to the 448-token limit, and at temperature 0 the
# appliance retries at five more temperatures (whisper's fallback, since the log-probability
# of nonsense is low): one temperature keeps it to one decode, over HTTP and in-process alike.
WHISPER_TEMPERATURE = 0.2
DRY_SERIES = 3  # on the dry run's 2 shared cores a random-weight whisper request takes ~15 s
# A GGUF loaded as engines/llm/model.py loads it (n_gpu_layers "all" = 1 << 30), with
# llama.cpp's log left on (the appliance keeps it quiet), for its "offloaded N/M" line.
PROBE = """
import sys, llama_cpp
from llama_cpp import _internals, _logger
from appliance.config import GPU_LAYERS_ALL
from appliance.engines.llm.model import default_slots
_logger.set_verbose(True)
params = llama_cpp.llama_model_default_params()
params.n_gpu_layers = 1 << 30
model = _internals.LlamaModel(path_model=sys.argv[1], params=params, verbose=True)
print("SLOTS", default_slots(GPU_LAYERS_ALL), "GPU_OFFLOAD",
      int(llama_cpp.llama_supports_gpu_offload()), flush=True)
"""


@dataclass
class Placement:
    model: str
    kind: str
    where: str = "?"  # "cuda ..." / "cpu ..." as read
    on_gpu: bool = False
    detail: str = ""


@dataclass
class Report:
    dry_run: bool
    steps: dict[str, Any]
    boot_s: float = float("nan")
    ready: dict[str, Any] = field(default_factory=dict)
    placements: list[Placement] = field(default_factory=list)
    gpu_memory: str = "n/a"
    series: dict[str, list[float]] = field(default_factory=dict)
    series_length: int = SERIES
    chat: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    mixed: list[str] = field(default_factory=list)  # bench_mixed's printed table and verdicts
    whisper: dict[str, dict[str, float]] = field(default_factory=dict)
    image: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def nvidia_smi(query: str) -> str:
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi"
    done = subprocess.run(["nvidia-smi", f"--query-{query}", "--format=csv,noheader"],
                          capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip()


def models_of(config_text: str) -> list[dict[str, Any]]:
    import tomllib
    models: list[dict[str, Any]] = tomllib.loads(config_text)["models"]
    return models


def offload(path: str, env_root: Path) -> tuple[str, bool, int]:
    """llama.cpp's own line for a GGUF loaded as the appliance loads it; the slot count."""
    done = subprocess.run([sys.executable, "-c", PROBE, path], capture_output=True, text=True,
                          check=False, cwd=env_root, timeout=300)
    text = done.stdout + done.stderr
    found = re.search(r"offloaded (\d+)/(\d+) layers to GPU", text)
    slots = re.search(r"SLOTS (\d+) GPU_OFFLOAD (\d)", text)
    slot_count = int(slots.group(1)) if slots else 0
    if found is not None:  # a GPU build says it in one line
        on, total = int(found.group(1)), int(found.group(2))
        return f"{on}/{total} layers offloaded", on == total and on > 0, slot_count
    # a CPU build only lists each layer's device
    devices = re.findall(r"layer +\d+ assigned to device (\w+)", text)
    if not devices:
        return f"no layer placement in llama.cpp's log (exit {done.returncode})", False, 0
    on = sum(device != "CPU" for device in devices)
    names = "/".join(sorted(set(devices)))
    return f"{on}/{len(devices)} layers off the CPU ({names})", on == len(devices), slot_count


def placements(models: list[dict[str, Any]], log: str, work: Path) -> list[Placement]:
    found: list[Placement] = []
    for model in models:
        item = Placement(model["id"], model["kind"])
        if model["kind"] in ("chat", "embedding"):
            line, item.on_gpu, slots = offload(model["path"], work)
            item.where = ("cuda" if item.on_gpu else "cpu") + f": {line}"
            if model["kind"] == "chat":
                item.detail = f"slots {model.get('parallel', 'auto')} (auto: {slots})"
        elif model["kind"] == "transcription":
            match = re.search(rf"whisper {re.escape(model['id'])} on (\w+) \((\w+)\)", log)
            fallback = re.search(rf"whisper {re.escape(model['id'])}: (.*)", log)
            if match:
                item.where = f"{match.group(1)} {match.group(2)}"
                item.on_gpu = match.group(1) == "cuda"
            if fallback:
                item.detail = fallback.group(1)[:300]
        elif model["kind"] == "image":
            match = re.search(rf"image model {re.escape(model['id'])}: (\S+) on (\w+) (\w+)",
                              log)
            if match:
                item.where = f"{match.group(2)} {match.group(3)}"
                item.on_gpu = match.group(2) == "cuda"
                item.detail = match.group(1)
        found.append(item)
    return found


def one_call(client: httpx2.Client, model: dict[str, Any], speech: Path) -> None:
    kind, name = model["kind"], model["id"]
    if kind == "chat":
        reply = client.post("/v1/chat/completions", json={
            "model": name, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}]})
    elif kind == "embedding":
        reply = client.post("/v1/embeddings", json={"model": name, "input": "a sentence"})
    elif kind == "transcription":
        with speech.open("rb") as audio:
            reply = client.post("/v1/audio/transcriptions",
                                data={"model": name, "temperature": str(WHISPER_TEMPERATURE)},
                                files={"file": ("speech.wav", audio, "audio/wav")})
    else:
        reply = client.post("/v1/images/generations", json={
            "model": name, "prompt": "a lighthouse", "size": "256x256",
            "response_format": "b64_json"})
    reply.raise_for_status()


def series(report: Report, models: list[dict[str, Any]], base: str, key: str,
           speech: Path, length: int) -> None:
    with httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {key}"},
                       timeout=300.0) as client:
        for model in models:
            times: list[float] = []
            try:
                for _ in range(length):
                    started = time.perf_counter()
                    one_call(client, model, speech)
                    times.append(time.perf_counter() - started)
            except httpx2.HTTPError as exc:
                report.errors.append(f"{model['id']}: {exc}")
            report.series[model["id"]] = times
            print(f"  {model['id']:<24} first {times[0] if times else float('nan'):.3f} s"
                  f"  #{length} {times[-1] if len(times) == length else float('nan'):.3f} s",
                  flush=True)


def level_summary(level: Level) -> dict[str, Any]:
    return {"concurrency": level.concurrency, "requests": len(level.results),
            "ok": len(level.ok), "tokens": level.tokens, "wall_s": round(level.wall_s, 3),
            "aggregate_tps": round(level.aggregate_tps, 1),
            "ttft_p50_s": round(level.ttft(50), 4), "ttft_p99_s": round(level.ttft(99), 4),
            "errors": sorted({r.error for r in level.results if r.error})[:3]}


async def interleaved(sides: dict[str, tuple[str, str]], spec: ModelSpec, levels: tuple[int, ...],
                      per_level: dict[int, int], max_tokens: int
                      ) -> dict[str, list[dict[str, Any]]]:
    clients = {side: openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=300)
               for side, (url, key) in sides.items()}
    out: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    try:
        for client in clients.values():  # warm-up, uncounted
            await run_level(client, spec, True, 1, 2, 8)
        for index, concurrency in enumerate(levels):
            order = list(clients) if index % 2 == 0 else list(reversed(clients))
            for side in order:
                level = await run_level(clients[side], spec, True, concurrency,
                                        per_level[concurrency], max_tokens)
                out[side].append(level_summary(level))
                print(f"  {spec.model_id:<22} {side:<12} c={concurrency:<3} "
                      f"{level.aggregate_tps:8.1f} tok/s  ttft p50 {level.ttft(50):.3f} s",
                      flush=True)
    finally:
        for client in clients.values():
            await client.close()
    return out


def chat_bench(report: Report, models: list[dict[str, Any]], appliance_url: str, key: str,
               llama_server: Path, work: Path, dry: bool) -> None:
    import os
    max_tokens = 8 if dry else 128
    per_level = {c: c if dry else 2 * c for c in LEVELS}
    for model in models:
        if model["kind"] != "chat":
            continue
        slots = model.get("parallel")
        slots = slots if isinstance(slots, int) else (4 if dry else 16)
        spec = ModelSpec(model["id"], model["id"], Path(model["path"]),
                         model.get("chat_template"), tuple(model.get("stop", ())))
        sides = {"appliance": (appliance_url + "/v1", key)}
        process = None
        if llama_server.is_file():
            port = free_port()
            folder = work / f"llama-server-{model['id']}"
            folder.mkdir(exist_ok=True)
            argv = [str(llama_server), "-m", model["path"], "-c",
                    str(model["context_length"] * slots), "-np", str(slots), "--no-kv-unified",
                    "-fa", "on", "-ngl", "999", "-t", str(os.cpu_count()),
                    "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
            if spec.chat_template is not None:
                (folder / "template.jinja").write_text(spec.chat_template, encoding="utf-8")
                argv += ["--jinja", "--chat-template-file", str(folder / "template.jinja")]
            process = spawn(argv, folder)
            try:
                wait_ready(process, f"http://127.0.0.1:{port}/health", folder / "server.log",
                           BOOT_TIMEOUT_S, 0.2, tail_lines=30)
                sides["llama-server"] = (f"http://127.0.0.1:{port}/v1", "none")
            except RuntimeError as exc:
                report.errors.append(f"llama-server for {model['id']}: {str(exc)[-800:]}")
                process = None
        else:
            report.errors.append(f"no llama-server at {llama_server}: appliance side only")
        try:
            report.chat[model["id"]] = asyncio.run(
                interleaved(sides, spec, LEVELS, per_level, max_tokens))
            if "llama-server" in sides and not report.mixed:
                try:  # the one GPU run must still reach whisper and the image model
                    report.mixed = mixed_load(sides, spec, dry)
                except Exception as exc:
                    report.mixed = [f"mixed load failed: {exc!r}"[:800]]
                    report.errors.append(report.mixed[0])
        finally:
            if process is not None:
                stop_process(process)


def mixed_load(sides: dict[str, tuple[str, str]], spec: ModelSpec, dry: bool) -> list[str]:
    """Issue 18's mixed load on the two servers already up; the lines bench_mixed prints."""
    plan = (bench_mixed.Plan(1, 0, 2, 4, 2, 8, 8, ()) if dry  # the plumbing, on 2 CPU cores
            else bench_mixed.Plan(2, 0, 4, 16, 8, 64, 64, ()))
    servers = {
        side: bench_mixed.Server(side, url, key, spec.model_id, None, Path(), 0.0)
        for side, (url, key) in ((bench_mixed.APPLIANCE_SIDE, sides["appliance"]),
                                 (bench_mixed.LLAMA_SIDE, sides["llama-server"]))}
    results = asyncio.run(bench_mixed.measure(servers, plan, bench_mixed.Prompts(
        random.randrange(2**32)), mixed=True, short=False))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        verdicts = bench_mixed.print_mixed(results, plan)
    lines = [*printed.getvalue().strip("\n").splitlines(), *verdicts]
    print("\n".join(lines), flush=True)
    return lines


def whisper_baselines(report: Report, models: list[dict[str, Any]], speech: Path) -> None:
    from faster_whisper import WhisperModel, decode_audio

    from appliance.engines.whisper import BEAM_SIZE, VAD_FILTER

    audio = decode_audio(str(speech), sampling_rate=16000)
    seconds = audio.shape[0] / 16000
    for model in models:
        if model["kind"] != "transcription":
            continue
        placed = next(p for p in report.placements if p.model == model["id"])
        device, _, compute = placed.where.partition(" ")
        if device not in ("cuda", "cpu"):
            report.errors.append(f"{model['id']}: no placement in the boot log, no baseline")
            continue
        whisper = WhisperModel(model["path"], device=device, compute_type=compute,
                               local_files_only=True)
        times = []
        for _ in range(1 if report.dry_run else 3):
            started = time.perf_counter()
            segments, _ = whisper.transcribe(audio, beam_size=BEAM_SIZE,
                                             temperature=WHISPER_TEMPERATURE,
                                             vad_filter=VAD_FILTER)
            for _ in segments:
                pass
            times.append(time.perf_counter() - started)
        http = report.series.get(model["id"], [])
        report.whisper[model["id"]] = {
            "audio_s": round(seconds, 2),
            "rtf_inprocess": round(statistics.median(times) / seconds, 4),
            "rtf_http": round(statistics.median(http) / seconds, 4) if http else float("nan")}


def image_baseline(report: Report, models: list[dict[str, Any]]) -> None:
    import torch
    from diffusers import AutoPipelineForText2Image

    from appliance.config import ImageModelConfig
    from appliance.engines.diffusion_device import (
        choose_placement,
        pipeline_class_name,
        save_memory,
    )

    for model in models:
        if model["kind"] != "image":
            continue
        folder = Path(model["path"])
        placement = choose_placement(ImageModelConfig(id=model["id"], path=folder),
                                     pipeline_class_name(folder))
        pipe = AutoPipelineForText2Image.from_pretrained(  # type: ignore[no-untyped-call]
            str(folder), dtype=placement.dtype, local_files_only=True)
        pipe.to(placement.device)
        pipe.set_progress_bar_config(disable=True)
        save_memory(pipe, placement)
        steps = int(model.get("steps", 4))
        times = []
        for _ in range(4):
            started = time.perf_counter()
            with torch.inference_mode():
                pipe("a lighthouse", height=256, width=256, num_inference_steps=steps,
                     output_type="np")
            if placement.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        http = report.series.get(model["id"], [])
        report.image = {"model": model["id"], "steps": steps, "placement": placement.label,
                        "s_per_step_inprocess": round(statistics.median(times[1:]) / steps, 4),
                        "s_per_step_http": round(statistics.median(http) / steps, 4)
                        if http else float("nan")}


def fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(report: Report) -> str:
    lines = ["# GPU check" + (" (dry run on the CPU)" if report.dry_run else ""), "",
             f"boot to /ready: {report.boot_s:.1f} s; GPU memory after boot: "
             f"{report.gpu_memory}", "",
             f"| model | kind | landed | on GPU | first s | #{report.series_length} s | detail |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in report.placements:
        times = report.series.get(p.model, [])
        lines.append(f"| {p.model} | {p.kind} | {p.where} | {'yes' if p.on_gpu else 'no'} | "
                     f"{fmt(times[0]) if times else '-'} | "
                     f"{fmt(times[-1]) if len(times) == report.series_length else '-'} | "
                     f"{p.detail.replace('|', '/')} |")
    lines += ["", "| chat model | side | c | ok | aggregate tok/s | TTFT p50 s | TTFT p99 s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for model, sides in report.chat.items():
        for side, levels in sides.items():
            for level in levels:
                lines.append(f"| {model} | {side} | {level['concurrency']} | "
                             f"{level['ok']}/{level['requests']} | {level['aggregate_tps']} | "
                             f"{level['ttft_p50_s']} | {level['ttft_p99_s']} |")
    lines += ["", "| whisper | audio s | RTF in-process | RTF over HTTP |",
              "| --- | --- | --- | --- |"]
    for model, numbers in report.whisper.items():
        lines.append(f"| {model} | {numbers['audio_s']} | {numbers['rtf_inprocess']} | "
                     f"{numbers['rtf_http']} |")
    if report.mixed:
        lines += ["", "mixed load (bench_mixed):", "", "```", *report.mixed, "```"]
    if report.image:
        lines += ["", "| image | placement | steps | s/step in-process | s/step over HTTP |",
                  "| --- | --- | --- | --- | --- |",
                  f"| {report.image['model']} | {report.image['placement']} | "
                  f"{report.image['steps']} | {report.image['s_per_step_inprocess']} | "
                  f"{report.image['s_per_step_http']} |"]
    lines += ["", "steps: " + ", ".join(f"{k}: {v}" for k, v in report.steps.items()
                                        if k != "wheels")]
    if report.errors:
        lines += ["", "errors:", *(f"- {e}" for e in report.errors)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--llama-server", type=Path, required=True)
    parser.add_argument("--steps", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    from devtools.server_harness import write_config

    steps = json.loads(args.steps.read_text()) if args.steps.is_file() else {}
    report = Report(args.dry_run, steps, series_length=DRY_SERIES if args.dry_run else SERIES)
    body = (args.work / "models.body.toml").read_text(encoding="utf-8")
    shutil.rmtree(args.work / "data", ignore_errors=True)  # a fresh ledger, keys and state
    port = free_port()
    config = write_config(args.work, port, body)
    models = models_of(body)
    key = create_key(config, "gpu-check")
    process = spawn([*APPLIANCE, "serve", "--config", str(config)], args.work)
    base = f"http://127.0.0.1:{port}"
    try:
        report.boot_s = wait_ready(process, base + "/ready", args.work / "server.log",
                                   BOOT_TIMEOUT_S, 0.2, tail_lines=60)
        print(f"booted in {report.boot_s:.1f} s", flush=True)
        report.ready = httpx2.get(base + "/ready", timeout=10).json()
        report.gpu_memory = nvidia_smi("gpu=memory.used,memory.total") + " | per process: " + \
            nvidia_smi("compute-apps=pid,used_memory")
        log = (args.work / "server.log").read_text(errors="replace")
        report.placements = placements(models, log, args.work)
        for p in report.placements:
            print(f"  {p.model:<24} {p.where}  {p.detail}", flush=True)
        series(report, models, base, key, args.models / "speech.wav", report.series_length)
        chat_bench(report, models, base, key, args.llama_server, args.work, args.dry_run)
    finally:
        stop_process(process)
    # torch before CTranslate2: CTranslate2's OpenMP threads keep spinning after their work
    # and would take the cores from torch's.
    image_baseline(report, models)
    whisper_baselines(report, models, args.models / "speech.wav")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(
        json.dumps(asdict(report), indent=1, default=str), encoding="utf-8")
    table = markdown(report)
    (args.out / "gpu-check.md").write_text(table, encoding="utf-8")
    print("\n" + table)
    served = all(len(report.series.get(m["id"], [])) == report.series_length for m in models)
    if args.dry_run:
        return 0 if served else 1
    off_gpu = [p.model for p in report.placements if not p.on_gpu]
    if off_gpu:
        print(f"not on the GPU: {', '.join(off_gpu)}")
    return 1 if off_gpu or not served else 0


if __name__ == "__main__":
    sys.exit(main())
