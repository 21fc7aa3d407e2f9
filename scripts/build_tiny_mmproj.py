"""Builds a tiny random-weight multimodal projector (an mmproj GGUF) for SmolLM2-135M, offline.

The appliance's vision tests serve SmolLM2-135M with this projector beside it
(`smollm2-135m-vision`), so a chat request with a picture runs the real path end to end on
any machine without a download: decoded, preprocessed and encoded by libmtmd, its embeddings
decoded into the request's KV sequence, tokens generated. The answers are nonsense; two
different pictures still give different tokens at temperature 0, which is what tests assert.

What libmtmd (llama-cpp-python 0.3.36) needs to load it, as a prototype established:
projector type ``mlp`` (LLaVA-1.5: a CLIP ViT, then Linear, GELU, Linear), architecture
``clip`` with ``clip.has_vision_encoder``; every integer key a UINT32, mean and std f32
arrays; at least 2 blocks (a LLaVA graph stops one block before the last); a feed-forward
width that differs from the embedding width; ``mm.2.weight``'s output the text model's
hidden size (576). Image 32 px in patches of 8: one picture is 16 image tokens.

Weights come from a fixed numpy seed, matrices in f16, about 0.9 MB. The recipe version is
stored in the file (``appliance.recipe``); a file with the current one is left alone, so
set-up may run this every time.

Usage: .venv/bin/python scripts/build_tiny_mmproj.py [FILE] [--force]
       (FILE defaults to models/tiny-random-mmproj-smollm2.gguf)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILE = ROOT / "models" / "tiny-random-mmproj-smollm2.gguf"
# Bump when anything below changes what is written, so existing files are rebuilt.
RECIPE = "tiny-random-mmproj-smollm2/1"
RECIPE_KEY = "appliance.recipe"
SEED = 4321
IMAGE_SIZE = 32
PATCH_SIZE = 8
WIDTH = 64
FEED_FORWARD = 128  # must differ from WIDTH: libmtmd reads equal ones as a missing key
BLOCKS = 2
HEADS = 4
TEXT_HIDDEN = 576  # SmolLM2-135M's embedding width: the projector's output
LAYER_NORM_EPS = 1e-6


def tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every tensor, shaped as PyTorch would hold it (the writer reverses the axes into
    ggml's order): linear weights (out, in), the patch convolution (out, channels, kh, kw)."""

    def matrix(*shape: int) -> np.ndarray:
        # Scaled so activations stay near unit size through the blocks: random weights
        # must still give outputs that depend on the picture, not saturate.
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float16)

    def vector(size: int, around: float = 0.0) -> np.ndarray:
        return (around + 0.02 * rng.standard_normal(size)).astype(np.float32)

    patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    out: dict[str, np.ndarray] = {
        "v.patch_embd.weight": matrix(WIDTH, 3, PATCH_SIZE, PATCH_SIZE),
        "v.patch_embd.bias": vector(WIDTH),
        "v.position_embd.weight": matrix(patches, WIDTH),
        "v.pre_ln.weight": vector(WIDTH, 1.0),
        "v.pre_ln.bias": vector(WIDTH),
    }
    for block in range(BLOCKS):
        prefix = f"v.blk.{block}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            out[f"{prefix}.{name}.weight"] = matrix(WIDTH, WIDTH)
            out[f"{prefix}.{name}.bias"] = vector(WIDTH)
        for norm in ("ln1", "ln2"):
            out[f"{prefix}.{norm}.weight"] = vector(WIDTH, 1.0)
            out[f"{prefix}.{norm}.bias"] = vector(WIDTH)
        out[f"{prefix}.ffn_up.weight"] = matrix(FEED_FORWARD, WIDTH)
        out[f"{prefix}.ffn_up.bias"] = vector(FEED_FORWARD)
        out[f"{prefix}.ffn_down.weight"] = matrix(WIDTH, FEED_FORWARD)
        out[f"{prefix}.ffn_down.bias"] = vector(WIDTH)
    out["mm.0.weight"] = matrix(TEXT_HIDDEN, WIDTH)
    out["mm.0.bias"] = vector(TEXT_HIDDEN)
    out["mm.2.weight"] = matrix(TEXT_HIDDEN, TEXT_HIDDEN)
    out["mm.2.bias"] = vector(TEXT_HIDDEN)
    return out


def build(path: Path) -> None:
    writer = gguf.GGUFWriter(str(path), arch="clip")
    writer.add_string(RECIPE_KEY, RECIPE)
    writer.add_name("tiny-random-mmproj-smollm2")
    writer.add_clip_projector_type("mlp")
    writer.add_clip_has_vision_encoder(True)
    writer.add_bool(gguf.Keys.Clip.HAS_LLAVA_PROJECTOR, True)
    writer.add_vision_image_size(IMAGE_SIZE)
    writer.add_vision_patch_size(PATCH_SIZE)
    writer.add_vision_embedding_length(WIDTH)
    writer.add_vision_feed_forward_length(FEED_FORWARD)
    writer.add_vision_block_count(BLOCKS)
    writer.add_vision_head_count(HEADS)
    writer.add_vision_projection_dim(TEXT_HIDDEN)
    writer.add_vision_attention_layernorm_eps(LAYER_NORM_EPS)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)
    for name, data in tensors(np.random.default_rng(SEED)).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def is_current(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        field = gguf.GGUFReader(str(path)).get_field(RECIPE_KEY)
    except (ValueError, OSError):
        return False  # not a GGUF at all, or a truncated one: rebuilt
    return field is not None and field.contents() == RECIPE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args()
    path: Path = args.file.resolve()
    if not args.force and is_current(path):
        print(f"build-tiny-mmproj: {path} is up to date", file=sys.stderr)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and moved into place, so a half-written file is never served.
    handle, scratch = tempfile.mkstemp(prefix=".tiny-mmproj-", suffix=".gguf", dir=path.parent)
    os.close(handle)
    try:
        build(Path(scratch))
        os.chmod(scratch, 0o644)  # mkstemp makes it private; models/ files are readable
        os.replace(scratch, path)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    print(f"build-tiny-mmproj: wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
