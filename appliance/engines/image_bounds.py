"""How many images (n) one request may ask of an image model, from their size and steps.

Measured in the model's default images (its default steps at its default size, the first of
``sizes``), so the bound means the same on a GPU and on a CPU: memory grows with n x pixels
(the batch is denoised at once), time with n x steps x pixels. Steps and size are bounded on
their own (the api's steps range, the model's sizes), so one image is always allowed.
"""

from __future__ import annotations

import math

# n = 10 at the default size and steps fits both, as does n = 10 at quality "high".
MAX_BATCH_IMAGES = 10.0  # n x pixels
MAX_WORK_IMAGES = 20.0  # n x steps x pixels


def max_images(default_size: tuple[int, int], default_steps: int, size: tuple[int, int],
               steps: int) -> int:
    default_pixels = default_size[0] * default_size[1]
    pixels = size[0] * size[1]
    by_memory = MAX_BATCH_IMAGES * default_pixels / pixels
    by_work = MAX_WORK_IMAGES * default_steps * default_pixels / (pixels * steps)
    return max(1, math.floor(min(by_memory, by_work)))
