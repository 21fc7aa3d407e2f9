"""Builds a tiny Stable Diffusion pipeline with random weights, offline, and saves it.

The appliance's tests and its default models.toml serve this pipeline (`tiny-random-sd`), so
image generation runs end to end on any machine without a model download. It is a complete
diffusers ``StableDiffusionPipeline`` folder (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/) written by ``save_pretrained``: the appliance loads it through the same
``AutoPipelineForText2Image.from_pretrained`` path as a real model. Its pictures are noise.

Shapes follow SD 1.x at a fraction of the width: the VAE downsamples by 8 with 4 latent
channels, the UNet has cross-attention over a CLIP text encoder, so sizes, batching and
classifier-free guidance behave as they do on the real thing. The tokenizer is a byte-level
CLIP BPE with no merges (one token per character), written here, not downloaded.

Weights come from a fixed torch seed: the same torch version builds the same files. A stamp
file records the recipe version; a folder with the current stamp is left alone, so set-up may
run this every time.

Usage: .venv/bin/python scripts/build_tiny_sd.py [FOLDER] [--force]
       (FOLDER defaults to models/tiny-random-sd)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = ROOT / "models" / "tiny-random-sd"
# Bump when anything below changes what is written, so existing folders are rebuilt.
RECIPE = "tiny-random-sd/1"
STAMP = "appliance-recipe.json"
SEED = 1234
TEXT_WIDTH = 32  # CLIP hidden size = UNet cross-attention width
MAX_TOKENS = 77  # CLIP's context, as in every SD 1.x/2.x tokenizer


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255, in byte order:
    printable Latin-1 bytes stand for themselves, the others are shifted past U+00FF."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    shifted = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + shifted)
            shifted += 1
    return [symbols[b] for b in range(256)]


def tokenizer_vocab() -> dict[str, int]:
    """Specials first (bos 0, eos 1), then every byte symbol alone and at a word's end."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in byte_symbols():
        vocab.setdefault(symbol, len(vocab))
    for symbol in byte_symbols():
        vocab.setdefault(symbol + "</w>", len(vocab))
    return vocab


def build(folder: Path) -> None:
    # Imported here so `--help` and the up-to-date check stay instant.
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(SEED)
    vocab = tokenizer_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=TEXT_WIDTH, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_WIDTH, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=32,  # latents of a 256x256 image: the pipeline's default size
        in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16, 16, 32, 32),  # four levels: 8x downsampling, as SD's VAE
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, sample_size=256)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    (folder / STAMP).write_text(json.dumps({"recipe": RECIPE, "seed": SEED,
                                            "torch": torch.__version__}) + "\n")


def is_current(folder: Path) -> bool:
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return bool(stamp.get("recipe") == RECIPE and (folder / "model_index.json").is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args()
    folder: Path = args.folder.resolve()
    if not args.force and is_current(folder):
        print(f"build-tiny-sd: {folder} is up to date", file=sys.stderr)
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and moved into place, so a half-written folder is never served.
    with tempfile.TemporaryDirectory(prefix=".tiny-sd-", dir=folder.parent) as scratch:
        staged = Path(scratch) / "pipeline"
        build(staged)
        if folder.exists():
            shutil.rmtree(folder)
        staged.rename(folder)
    print(f"build-tiny-sd: wrote {folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
