"""models.toml -> frozen, typed configuration.

Owns reading the file once, validating every key (an unknown key, a wrong type, a missing model
file, a duplicate id or alias is a ConfigError naming the file, the model and the key) and
resolving relative paths against the file's folder. A few server knobs may be overridden by
environment variables (APPLIANCE_HOST, APPLIANCE_PORT, APPLIANCE_DATA_DIR) or CLI flags.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal, overload

from appliance.errors import ConfigError

ModelKind = Literal["chat", "embedding", "transcription", "image", "speech"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
POOLING_KINDS: tuple[str, ...] = ("mean", "cls", "last")
GPU_LAYERS_ALL = -1
# Where a chat completion carries a reasoning model's thinking ([server] reasoning_field):
# "reasoning_content" (DeepSeek's API, llama-server, Open WebUI, LiteLLM read it), "reasoning"
# (vLLM since early 2026, Ollama, pydantic-ai), or "both", so that each client finds its own.
ReasoningField = Literal["both", "reasoning_content", "reasoning"]
REASONING_FIELDS: tuple[ReasoningField, ...] = ("both", "reasoning_content", "reasoning")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("data")
    ledger_path: Path = Path("data/ledger.sqlite")
    keys_path: Path = Path("data/keys.sqlite")
    currency: str = "USD"
    log_level: str = "info"
    image_url_ttl_s: float = 3600.0  # how long a `response_format: "url"` image is served
    # Stored responses, conversations and stored chat completions (OpenAI keeps 30 days).
    response_retention_days: float = 30.0
    # What one key may keep of that state (appliance/store/usage.py): a write past either is
    # refused and keeps nothing.
    max_stored_mb_per_key: int = 256
    max_conversation_items: int = 10_000
    log_format: str = "text"  # "text" for people, "json" for log collectors
    metrics_public: bool = False  # False: /metrics needs an admin key
    shutdown_grace_s: float = 30.0  # in-flight requests get this long after SIGTERM
    cors_origins: tuple[str, ...] = ()  # empty: no CORS headers at all
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    max_body_mb: int = 8  # JSON request bodies; larger ones are a 413 (audio: max_upload_mb)
    # The HTTP edge (appliance/api/connections.py): what clients may hold open, and for how long.
    max_connections: int = 512  # open connections served; the next get a 503, past 2x: closed
    header_timeout_s: float = 10.0  # a request's headers must be complete within this
    body_timeout_s: float = 30.0  # longest pause between two pieces of a request body
    public_url: str | None = None  # base of image URLs; None: the socket the request came in on
    trusted_proxies: tuple[str, ...] = ()  # addresses whose X-Forwarded-For/-Proto count
    reasoning_field: ReasoningField = "both"  # see ReasoningField
    # Remote image URLs in chat/Responses image parts (api/image_fetch.py): fetched only from
    # these hosts (empty: never; a server fetching URLs its clients name is an SSRF risk),
    # at most remote_image_max_mb each, each fetch within remote_image_timeout_s.
    remote_image_hosts: tuple[str, ...] = ()
    remote_image_max_mb: int = 5
    remote_image_timeout_s: float = 10.0


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The keys every kind of model takes; each kind's own keys are in its subclass below.
    A key that another kind takes is an error for this one, not silently unused."""

    kind: ClassVar[ModelKind]
    # What `path` must name: a file (GGUF) or a folder, and the words an error uses for it.
    path_is_folder: ClassVar[bool] = False
    path_names: ClassVar[str] = "GGUF file"
    id: str
    path: Path
    aliases: tuple[str, ...] = ()
    price_per_request: float = 0.0
    threads: int | None = None
    owned_by: str = "appliance"
    # requests waiting for a slot or worker; more are a 503 with retry-after, as is waiting
    # longer than queue_timeout_s (before any work is done)
    queue_limit: int = 64
    queue_timeout_s: float = 120.0


@dataclass(frozen=True, kw_only=True)
class _LlamaModelConfig(ModelConfig):
    """Keys of the GGUF models llama.cpp runs (chat and embedding)."""

    context_length: int = 4096
    gpu_layers: int = GPU_LAYERS_ALL


@dataclass(frozen=True, kw_only=True)
class ChatModelConfig(_LlamaModelConfig):
    kind: ClassVar[ModelKind] = "chat"
    parallel: int | None = None  # None: chosen by the engine for the device
    chat_template: str | None = None
    stop: tuple[str, ...] = ()
    prompt_cache_mb: int = 256
    generation_timeout_s: float | None = None  # generating longer ends as "length"
    # The step budget (engines/llm/step_budget.py): None is "auto" (the device's default),
    # 0 turns it off (a step reads as many prompt tokens as the batch holds).
    max_step_ms: float | None = None
    # The multimodal projector (a GGUF "mmproj" file) beside the model: user turns may then
    # hold pictures (engines/llm/vision.py). None: a text-only model.
    mmproj: Path | None = None
    # Reasoning models (engines/llm/reasoning.py): "auto" reads the family off the template
    # and vocabulary, "none" never reasons, "think" / "harmony" name the family.
    reasoning: str = "auto"
    reasoning_tags: tuple[str, str] = ("<think>", "</think>")  # the think family's block
    # Thinking budget in tokens per reasoning_effort; an effort left out keeps its default.
    reasoning_budget: tuple[tuple[str, int], ...] = (("low", 512), ("medium", 2048),
                                                     ("high", 8192))


@dataclass(frozen=True, kw_only=True)
class EmbeddingModelConfig(_LlamaModelConfig):
    kind: ClassVar[ModelKind] = "embedding"
    pooling: str = "mean"  # how token vectors become one
    max_request_tokens: int = 300_000  # all inputs of one request together


@dataclass(frozen=True, kw_only=True)
class _WorkerModelConfig(ModelConfig):
    """Keys of the models served from a folder by a pool of workers (whisper, diffusers)."""

    path_is_folder: ClassVar[bool] = True
    device: str = "auto"  # auto: CUDA when torch/CTranslate2 sees a GPU, else CPU
    compute_type: str = "auto"  # whisper: float16 on CUDA, int8 on CPU; images: the dtype
    workers: int = 2  # requests of this model worked on at once


@dataclass(frozen=True, kw_only=True)
class TranscriptionModelConfig(_WorkerModelConfig):
    kind: ClassVar[ModelKind] = "transcription"
    path_names: ClassVar[str] = "CTranslate2 whisper folder"
    max_upload_mb: int = 25  # largest accepted audio file
    max_audio_s: float = 1800.0  # longest accepted audio, in seconds


@dataclass(frozen=True, kw_only=True)
class ImageModelConfig(_WorkerModelConfig):
    kind: ClassVar[ModelKind] = "image"
    path_names: ClassVar[str] = "diffusers pipeline folder"
    # defaults a request may override, and the sizes it may ask for
    steps: int | None = None
    guidance: float | None = None
    sizes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SpeechModelConfig(ModelConfig):
    """A Piper voice: ``path`` names its .onnx file, whose .onnx.json config lies beside it."""

    kind: ClassVar[ModelKind] = "speech"
    path_names: ClassVar[str] = "Piper voice (.onnx file)"
    device: str = "auto"  # auto: ONNX Runtime's CUDA provider when it has one, else the CPU
    workers: int = 1  # requests synthesised at once (each sentence uses `threads` threads)
    # Request voice name -> the model's own voice (OpenAI's alloy, ash, ... map here); the
    # model's own voice names are always accepted as they are. Pairs, sorted by name.
    voices: tuple[tuple[str, str], ...] = ()


AnyModelConfig = ChatModelConfig | EmbeddingModelConfig | TranscriptionModelConfig \
    | ImageModelConfig | SpeechModelConfig
# models.toml's `kind` -> its configuration; read-only (no module-level mutable state).
MODEL_CONFIGS: Mapping[str, type[AnyModelConfig]] = MappingProxyType({
    cls.kind: cls for cls in (ChatModelConfig, EmbeddingModelConfig, TranscriptionModelConfig,
                              ImageModelConfig, SpeechModelConfig)})
MODEL_KINDS: tuple[str, ...] = tuple(MODEL_CONFIGS)


@dataclass(frozen=True)
class ApplianceConfig:
    source: Path
    server: ServerConfig
    models: tuple[AnyModelConfig, ...] = field(default_factory=tuple)


class _Where:
    """Says where a value sits, so every error names the file, the model and the key."""

    def __init__(self, source: Path, table: str):
        self.source = source
        self.table = table

    def fail(self, key: str | None, problem: str) -> ConfigError:
        at = f"{self.table}.{key}" if key else self.table
        return ConfigError(f"{self.source}: {at}: {problem}")


def _take(
    where: _Where, table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any
) -> Any:
    if key not in table:
        return default
    value = table[key]
    # bool is an int in Python; a port of `true` is still a mistake.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise where.fail(key, f"expected {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise where.fail(key, f"expected {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _reject_unknown(where: _Where, table: Mapping[str, Any], known: AbstractSet[str]) -> None:
    for key in table:
        if key not in known:
            raise where.fail(key, f"unknown key (known keys: {', '.join(sorted(known))})")


_SERVER_KEYS = {"host", "port", "data_dir", "ledger_path", "keys_path", "currency", "log_level",
                "image_url_ttl_s", "log_format", "metrics_public", "shutdown_grace_s",
                "cors_origins", "tls_certfile", "tls_keyfile", "max_body_mb",
                "max_connections", "header_timeout_s", "body_timeout_s", "public_url",
                "trusted_proxies", "response_retention_days", "max_stored_mb_per_key",
                "max_conversation_items", "reasoning_field", "remote_image_hosts",
                "remote_image_max_mb", "remote_image_timeout_s"}
LOG_FORMATS: tuple[str, ...] = ("text", "json")


def _keys(cls: type[ModelConfig]) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


# The keys of every kind (`kind` itself is the table's one key that is no field), and, for a
# key that not every kind takes, the kinds that do: both read from the dataclasses above.
_MODEL_KEYS = frozenset({"kind"}).union(*(_keys(cls) for cls in MODEL_CONFIGS.values()))
_KIND_ONLY_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    key: kinds for key in sorted(_MODEL_KEYS - _keys(ModelConfig) - {"kind"})
    if len(kinds := tuple(k for k, cls in MODEL_CONFIGS.items() if key in _keys(cls)))
    < len(MODEL_CONFIGS)})


def _server(source: Path, raw: Mapping[str, Any], env: Mapping[str, str]) -> ServerConfig:
    where = _Where(source, "server")
    _reject_unknown(where, raw, _SERVER_KEYS)
    base = source.parent
    host = env.get("APPLIANCE_HOST") or _take(where, raw, "host", str, "127.0.0.1")
    port_text = env.get("APPLIANCE_PORT")
    port = int(port_text) if port_text else _take(where, raw, "port", int, 8000)
    if not 0 < port < 65536:
        raise where.fail("port", f"{port} is not a TCP port")
    data_dir_text = env.get("APPLIANCE_DATA_DIR") or _take(where, raw, "data_dir", str, "data")
    data_dir = (base / data_dir_text).resolve()
    ledger = _take(where, raw, "ledger_path", str, None)
    keys = _take(where, raw, "keys_path", str, None)
    ttl_text = env.get("APPLIANCE_IMAGE_URL_TTL_S")
    try:
        ttl = float(ttl_text) if ttl_text else _take(where, raw, "image_url_ttl_s",
                                                      (int, float), 3600.0)
    except ValueError:
        raise where.fail("image_url_ttl_s", f"APPLIANCE_IMAGE_URL_TTL_S={ttl_text!r} is not "
                         "a number of seconds") from None
    if not ttl > 0:
        raise where.fail("image_url_ttl_s", f"{ttl} is not a positive number of seconds")
    return ServerConfig(
        host=host,
        port=port,
        data_dir=data_dir,
        ledger_path=(data_dir / ledger) if ledger else data_dir / "ledger.sqlite",
        keys_path=(data_dir / keys) if keys else data_dir / "keys.sqlite",
        currency=_take(where, raw, "currency", str, "USD"),
        log_level=_take(where, raw, "log_level", str, "info"),
        image_url_ttl_s=float(ttl),
        response_retention_days=_retention_days(where, raw),
        max_stored_mb_per_key=_positive(where, raw, "max_stored_mb_per_key", 256),
        max_conversation_items=_positive(where, raw, "max_conversation_items", 10_000),
        reasoning_field=_reasoning_field(where, raw),
        **_remote_images(where, raw),
        **_exposure(where, raw, base),
        **_edge(where, raw),
    )


def _reasoning_field(where: _Where, raw: Mapping[str, Any]) -> ReasoningField:
    name = _take(where, raw, "reasoning_field", str, "both")
    for known in REASONING_FIELDS:
        if name == known:
            return known
    raise where.fail("reasoning_field", f"{name!r} is not one of {', '.join(REASONING_FIELDS)}")


def _remote_images(where: _Where, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The [server] keys of remote image URLs: the hosts fetched from, a size cap, a timeout."""
    hosts = _take(where, raw, "remote_image_hosts", list, [])
    for host in hosts:
        # Host names only: a scheme, a path or a port would never match a URL's host.
        malformed = not isinstance(host, str) or not host or (
            any(c in host for c in "/:@ ") and not _is_ip(host))
        if malformed:
            raise where.fail("remote_image_hosts", f"{host!r} is not a host name or address "
                             "such as \"images.example.com\" or \"192.168.1.20\"")
    return {
        "remote_image_hosts": tuple(host.lower() for host in hosts),
        "remote_image_max_mb": _positive(where, raw, "remote_image_max_mb", 5),
        "remote_image_timeout_s": _seconds(where, raw, "remote_image_timeout_s", 10.0),
    }


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _retention_days(where: _Where, raw: Mapping[str, Any]) -> float:
    days = _take(where, raw, "response_retention_days", (int, float), 30.0)
    # Finite: TOML has `inf`, and "forever" is no retention an operator can reason about.
    if not (days > 0 and math.isfinite(days)):
        raise where.fail("response_retention_days", f"{days} is not a positive number of days")
    return float(days)


def _edge(where: _Where, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The [server] keys of the HTTP edge: connection cap, timeouts, public URL, proxies."""
    public_url = _take(where, raw, "public_url", str, None)
    if public_url is not None:
        parts = urllib.parse.urlsplit(public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
                or parts.fragment:
            raise where.fail("public_url", f"{public_url!r} is not an http(s) URL such as "
                             "\"https://ai.example.com\" (a path is allowed, no query)")
    proxies = _take(where, raw, "trusted_proxies", list, [])
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy if isinstance(proxy, str) else "?", strict=False)
        except ValueError:
            raise where.fail("trusted_proxies", f"{proxy!r} is not an IP address or network "
                             "such as \"10.0.0.5\" or \"10.0.0.0/24\"") from None
    return {
        "max_connections": _positive(where, raw, "max_connections", 512),
        "header_timeout_s": _seconds(where, raw, "header_timeout_s", 10.0),
        "body_timeout_s": _seconds(where, raw, "body_timeout_s", 30.0),
        "public_url": None if public_url is None else public_url.rstrip("/"),
        "trusted_proxies": tuple(proxies),
    }


def _exposure(where: _Where, raw: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """The [server] keys about how the service faces its network: logs, metrics, shutdown,
    CORS and TLS."""
    log_format = _take(where, raw, "log_format", str, "text")
    if log_format not in LOG_FORMATS:
        raise where.fail("log_format", f"{log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    grace = float(_take(where, raw, "shutdown_grace_s", (int, float), 30.0))
    if not grace >= 0:
        raise where.fail("shutdown_grace_s", f"{grace} is not a number of seconds >= 0")
    origins = _take(where, raw, "cors_origins", list, [])
    if not all(isinstance(origin, str) and origin for origin in origins):
        raise where.fail("cors_origins", "expected a list of origins such as "
                         "\"http://192.168.1.20:3000\" (or \"*\")")
    tls: dict[str, Path | None] = {}
    for key in ("tls_certfile", "tls_keyfile"):
        text = _take(where, raw, key, str, None)
        path = (base / text).resolve() if text else None
        if path is not None and not path.is_file():
            raise where.fail(key, f"{path} is not a file")
        tls[key] = path
    if (tls["tls_certfile"] is None) != (tls["tls_keyfile"] is None):
        raise where.fail("tls_certfile", "TLS needs both tls_certfile and tls_keyfile")
    return {
        "log_format": log_format,
        "metrics_public": _take(where, raw, "metrics_public", bool, False),
        "shutdown_grace_s": grace,
        "cors_origins": tuple(origins),
        "max_body_mb": _positive(where, raw, "max_body_mb", 8),
        **tls,
    }


def _model(source: Path, index: int, raw: Any) -> AnyModelConfig:
    where = _Where(source, f"models[{index}]")
    if not isinstance(raw, dict):
        raise where.fail(None, "each [[models]] entry must be a table")
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not model_id.strip():
        raise where.fail("id", "every model needs a non-empty string id")
    where = _Where(source, f"models[{index}] (id {model_id!r})")
    _reject_unknown(where, raw, _MODEL_KEYS)
    kind = _take(where, raw, "kind", str, "chat")
    if kind not in MODEL_CONFIGS:
        raise where.fail("kind", f"{kind!r} is not one of {', '.join(MODEL_KINDS)}")
    for key in raw:
        if key in _KIND_ONLY_KEYS and kind not in _KIND_ONLY_KEYS[key]:
            raise where.fail(key, f"applies only to models of kind "
                             f"{' or '.join(_KIND_ONLY_KEYS[key])}, not {kind!r}")
    cls = MODEL_CONFIGS[kind]
    path = _model_path(where, source, raw, cls)
    aliases = _string_list(where, raw, "aliases")
    price = _take(where, raw, "price_per_request", (int, float), 0.0)
    # Spend is summed in billionths of the currency; a trillion (ledger.MAX_AMOUNT, a layer
    # above this one) keeps those in 64 bits. TOML also writes inf and nan: no sum survives.
    if not 0 <= price <= 1e12:
        raise where.fail("price_per_request", "must be from 0 to 1e12")
    threads = _take(where, raw, "threads", int, None)
    if threads is not None and threads < 1:
        raise where.fail("threads", "must be at least 1")
    return cls(
        id=model_id,
        path=path,
        aliases=aliases,
        price_per_request=float(price),
        threads=threads,
        queue_limit=_positive(where, raw, "queue_limit", 64),
        queue_timeout_s=_seconds(where, raw, "queue_timeout_s", 120.0),
        owned_by=_take(where, raw, "owned_by", str, "appliance"),
        **_KIND_KEYS[kind](where, raw),
    )


def _llama_keys(where: _Where, raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"context_length": _positive(where, raw, "context_length", 4096),
            "gpu_layers": _gpu_layers(where, raw)}


def _chat_keys(where: _Where, raw: Mapping[str, Any]) -> dict[str, Any]:
    llama = _llama_keys(where, raw)
    parallel = _take(where, raw, "parallel", (int, str), "auto")
    if parallel == "auto":
        parallel = None
    elif not isinstance(parallel, int) or parallel < 1:
        raise where.fail("parallel", f"expected \"auto\" or a slot count >= 1, got {parallel!r}")
    return {**llama, "parallel": parallel,
            "chat_template": _take(where, raw, "chat_template", str, None),
            "stop": _string_list(where, raw, "stop"),
            "prompt_cache_mb": _non_negative(where, raw, "prompt_cache_mb", 256),
            "generation_timeout_s": _seconds(where, raw, "generation_timeout_s", None),
            "max_step_ms": _step_budget(where, raw),
            "mmproj": _mmproj_path(where, raw),
            **_reasoning_keys(where, raw, llama["context_length"])}


def _step_budget(where: _Where, raw: Mapping[str, Any]) -> float | None:
    value = _take(where, raw, "max_step_ms", (int, float, str), "auto")
    if value == "auto":
        return None
    if isinstance(value, (str, bool)) or not 0 <= value <= 60_000:
        raise where.fail("max_step_ms", f"expected \"auto\", 0 (off) or milliseconds up to "
                         f"60000, got {value!r}")
    return float(value)


def _mmproj_path(where: _Where, raw: Mapping[str, Any]) -> Path | None:
    text = _take(where, raw, "mmproj", str, None)
    if text is None:
        return None
    if not text.strip():
        raise where.fail("mmproj", "expected the path of the model's projector GGUF")
    path: Path = (where.source.parent / text).resolve()
    if not path.is_file():
        raise where.fail("mmproj", f"projector GGUF file {path} does not exist "
                         "(scripts/build-tiny-mmproj builds the test fixture's)")
    return path


REASONING_SETTINGS: tuple[str, ...] = ("auto", "none", "think", "harmony")
_BUDGET_EFFORTS: tuple[str, ...] = ("low", "medium", "high")


def _reasoning_keys(where: _Where, raw: Mapping[str, Any], context_length: int
                    ) -> dict[str, Any]:
    setting = _take(where, raw, "reasoning", str, "auto")
    if setting not in REASONING_SETTINGS:
        raise where.fail("reasoning", f"{setting!r} is not one of "
                         f"{', '.join(REASONING_SETTINGS)}")
    tags = _take(where, raw, "reasoning_tags", list, ["<think>", "</think>"])
    if len(tags) != 2 or not all(isinstance(tag, str) and tag.strip() for tag in tags) \
            or tags[0] == tags[1]:
        raise where.fail("reasoning_tags", "expected two different non-empty tags, the "
                         "open and the close, such as [\"<think>\", \"</think>\"]")
    given = _take(where, raw, "reasoning_budget", dict, {})
    budgets = {"low": 512, "medium": 2048, "high": 8192}
    for effort, tokens in given.items():
        if effort not in _BUDGET_EFFORTS:
            raise where.fail("reasoning_budget", f"{effort!r} is not one of "
                             f"{', '.join(_BUDGET_EFFORTS)}")
        if isinstance(tokens, bool) or not isinstance(tokens, int) \
                or not 0 <= tokens <= context_length:
            raise where.fail("reasoning_budget", f"{effort} = {tokens!r}: expected a number "
                             f"of tokens from 0 to context_length ({context_length})")
        budgets[effort] = tokens
    # A default beyond the context is the context: a budget can never be reached past it.
    pairs = tuple((effort, min(budgets[effort], context_length)) for effort in _BUDGET_EFFORTS)
    return {"reasoning": setting, "reasoning_tags": (tags[0], tags[1]),
            "reasoning_budget": pairs}


def _embedding_keys(where: _Where, raw: Mapping[str, Any]) -> dict[str, Any]:
    llama = _llama_keys(where, raw)
    pooling = _take(where, raw, "pooling", str, "mean")
    if pooling not in POOLING_KINDS:
        raise where.fail("pooling", f"{pooling!r} is not one of {', '.join(POOLING_KINDS)}")
    return {**llama, "pooling": pooling,
            "max_request_tokens": _positive(where, raw, "max_request_tokens", 300_000)}


def _worker_keys(where: _Where, raw: Mapping[str, Any], workers: int) -> dict[str, Any]:
    device = _take(where, raw, "device", str, "auto")
    if device not in DEVICES:
        raise where.fail("device", f"{device!r} is not one of {', '.join(DEVICES)}")
    return {"device": device, "compute_type": _take(where, raw, "compute_type", str, "auto"),
            "workers": _positive(where, raw, "workers", workers)}


def _transcription_keys(where: _Where, raw: Mapping[str, Any]) -> dict[str, Any]:
    return {**_worker_keys(where, raw, workers=2),
            "max_upload_mb": _positive(where, raw, "max_upload_mb", 25),
            "max_audio_s": _seconds(where, raw, "max_audio_s", 1800.0)}


def _image_keys(where: _Where, raw: Mapping[str, Any]) -> dict[str, Any]:
    worker = _worker_keys(where, raw, workers=1)
    guidance = _take(where, raw, "guidance", (int, float), None)
    if guidance is not None and guidance < 0:
        raise where.fail("guidance", "must not be negative")
    steps = _take(where, raw, "steps", int, None)
    if steps is not None and steps < 1:
        raise where.fail("steps", "must be at least 1")
    return {**worker, "steps": steps, "guidance": None if guidance is None else float(guidance),
            "sizes": _sizes(where, raw)}


def _speech_keys(where: _Where, raw: Mapping[str, Any]) -> dict[str, Any]:
    device = _take(where, raw, "device", str, "auto")
    if device not in DEVICES:
        raise where.fail("device", f"{device!r} is not one of {', '.join(DEVICES)}")
    voices = _take(where, raw, "voices", dict, {})
    for name, voice in voices.items():
        if not (name and isinstance(voice, str) and voice):
            raise where.fail("voices", "expected a table of voice name = \"model voice\", "
                             f"got {name!r} = {voice!r}")
    return {"device": device, "workers": _positive(where, raw, "workers", 1),
            "voices": tuple(sorted(voices.items()))}


# Each kind's own keys, read and checked; the keys they may set are the fields of its class.
_KIND_KEYS: Mapping[str, Callable[[_Where, Mapping[str, Any]], dict[str, Any]]] = \
    MappingProxyType({ChatModelConfig.kind: _chat_keys,
                      EmbeddingModelConfig.kind: _embedding_keys,
                      TranscriptionModelConfig.kind: _transcription_keys,
                      ImageModelConfig.kind: _image_keys,
                      SpeechModelConfig.kind: _speech_keys})


def _model_path(where: _Where, source: Path, raw: Mapping[str, Any],
                cls: type[ModelConfig]) -> Path:
    what = cls.path_names
    path_text = _take(where, raw, "path", str, None)
    if path_text is None:
        raise where.fail("path", f"missing: the model's {what}")
    path: Path = (source.parent / path_text).resolve()
    if not (path.is_dir() if cls.path_is_folder else path.is_file()):
        raise where.fail("path", f"{what} {path} does not exist (run scripts/fetch-models for "
                         "the defaults)")
    return path


def _sizes(where: _Where, raw: Mapping[str, Any]) -> tuple[str, ...]:
    sizes = _string_list(where, raw, "sizes")
    for size in sizes:
        width, _, height = size.partition("x")
        if not (_dimension(width) and _dimension(height)):
            raise where.fail("sizes", f"{size!r} is not WIDTHxHEIGHT, e.g. \"512x512\"")
    return sizes


def _dimension(text: str) -> bool:
    """A positive whole number of pixels in ASCII digits (str.isdigit() takes '²')."""
    return text.isascii() and text.isdigit() and len(text) <= 6 and int(text) > 0


def _string_list(where: _Where, raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    values = _take(where, raw, key, list, [])
    if not all(isinstance(v, str) and v for v in values):
        raise where.fail(key, "expected a list of non-empty strings")
    return tuple(values)


@overload
def _seconds(where: _Where, raw: Mapping[str, Any], key: str, default: float) -> float: ...


@overload
def _seconds(where: _Where, raw: Mapping[str, Any], key: str, default: None) -> float | None: ...


def _seconds(where: _Where, raw: Mapping[str, Any], key: str,
             default: float | None) -> float | None:
    value = _take(where, raw, key, (int, float), default)
    if value is None:
        return None
    if not value > 0:
        raise where.fail(key, "must be a positive number of seconds")
    return float(value)


def _positive(where: _Where, raw: Mapping[str, Any], key: str, default: int) -> int:
    value: int = _take(where, raw, key, int, default)
    if value < 1:
        raise where.fail(key, "must be at least 1")
    return value


def _non_negative(where: _Where, raw: Mapping[str, Any], key: str, default: int) -> int:
    value: int = _take(where, raw, key, int, default)
    if value < 0:
        raise where.fail(key, "must not be negative")
    return value


def _gpu_layers(where: _Where, raw: Mapping[str, Any]) -> int:
    value = _take(where, raw, "gpu_layers", (int, str), "all")
    if value == "all":
        return GPU_LAYERS_ALL
    if isinstance(value, int) and value >= 0:
        return value
    raise where.fail("gpu_layers", f"expected \"all\" or a layer count >= 0, got {value!r}")


def _check_names_unique(source: Path, models: tuple[AnyModelConfig, ...]) -> None:
    owner: dict[str, str] = {}
    for index, model in enumerate(models):
        for key, name in [("id", model.id)] + [("aliases", a) for a in model.aliases]:
            if name in owner:
                raise _Where(source, f"models[{index}] (id {model.id!r})").fail(
                    key, f"name {name!r} is already used by model {owner[name]!r}"
                )
            owner[name] = model.id


def load_config(path: Path, env: Mapping[str, str] | None = None) -> ApplianceConfig:
    """Reads and validates models.toml; raises ConfigError naming file, model and key."""
    env = os.environ if env is None else env
    source = path.resolve()
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{source}: no such configuration file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    for key in raw:
        if key not in ("server", "models"):
            raise ConfigError(f"{source}: {key}: unknown top-level key (expected server, models)")
    server_raw = raw.get("server", {})
    if not isinstance(server_raw, dict):
        raise ConfigError(f"{source}: server: must be a table")
    models_raw = raw.get("models", [])
    if not isinstance(models_raw, list):
        raise ConfigError(f"{source}: models: must be an array of tables ([[models]])")
    models = tuple(_model(source, i, m) for i, m in enumerate(models_raw))
    if not models:
        raise ConfigError(f"{source}: models: no [[models]] configured")
    _check_names_unique(source, models)
    return ApplianceConfig(source=source, server=_server(source, server_raw, env), models=models)


def with_overrides(
    config: ApplianceConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
) -> ApplianceConfig:
    """Applies CLI flags; a new data dir moves the ledger and keys with it unless set apart."""
    server = config.server
    if data_dir is not None:
        data_dir = data_dir.resolve()
        server = replace(
            server,
            data_dir=data_dir,
            ledger_path=_rebase(server.ledger_path, server.data_dir, data_dir),
            keys_path=_rebase(server.keys_path, server.data_dir, data_dir),
        )
    if host is not None:
        server = replace(server, host=host)
    if port is not None:
        server = replace(server, port=port)
    return replace(config, server=server)


def _rebase(path: Path, old_dir: Path, new_dir: Path) -> Path:
    try:
        return new_dir / path.relative_to(old_dir)
    except ValueError:
        return path
