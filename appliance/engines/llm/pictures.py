"""A picture from a request, decoded with Pillow into the RGB pixels a projector reads.

Runs in the engine's prompt threads, never on the event loop. The api checked the format and
bounded the size the header claims (bytes, pixels); decoding here keeps to that claim, so a
file whose header lies about its size is refused, not decoded to gigapixels.

What is sent to the projector:
- a GIF's (or animated WebP's) first frame;
- EXIF orientation applied (a phone's portrait photo is upright, as browsers show it);
- converted to 8-bit RGB, transparency flattened onto black (Pillow's convert);
- ``detail``: "low" shrinks the picture so its longer side is at most 512 px (aspect kept),
  cheaper to preprocess and, for projectors that tile large pictures (LLaVA-NeXT, MiniCPM-V,
  SmolVLM), fewer image tokens; "high" and "auto" send it as it is: the projector resizes it
  to its own input size (or tiles it) as its model was trained.

The picture's identity is the sha256 of exactly what is sent (pixels and size), so prefix
reuse knows a picture by content, not by how it was encoded.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from appliance.engines.base import ImageInput
from appliance.errors import InvalidRequest

LOW_DETAIL_SIDE = 512


@dataclass(frozen=True)
class Picture:
    rgb: bytes  # width * height * 3 bytes, rows top to bottom
    width: int
    height: int

    @property
    def digest(self) -> bytes:
        """The picture's content hash: its size and pixels."""
        hasher = hashlib.sha256(f"{self.width}x{self.height}:".encode())
        hasher.update(self.rgb)
        return hasher.digest()


def decode_picture(image: ImageInput) -> Picture:
    """The picture as the projector gets it (see the module docstring). Raises InvalidRequest
    naming the image's part (``image.param``) for bytes Pillow cannot decode or whose size is
    not the claimed one."""
    param = image.param
    try:
        with warnings.catch_warnings():
            # Pillow warns of decompression bombs; the api's pixel bound is the one that holds.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(image.data)) as opened:
                if opened.size != (image.width, image.height):
                    raise InvalidRequest(
                        f"The image's size is {opened.width}x{opened.height}, not the "
                        f"{image.width}x{image.height} its header claimed.", param=param,
                        code="invalid_image")
                opened.seek(0)  # the first frame of an animation
                upright = ImageOps.exif_transpose(opened)
                rgb = upright.convert("RGB")
    except InvalidRequest:
        raise
    except Exception as exc:  # hostile bytes fail Pillow's plugins in many ways
        raise InvalidRequest(f"The image could not be decoded: {exc}", param=param,
                             code="invalid_image") from None
    if image.detail == "low" and max(rgb.size) > LOW_DETAIL_SIDE:
        rgb.thumbnail((LOW_DETAIL_SIDE, LOW_DETAIL_SIDE), Image.Resampling.BICUBIC)
    return Picture(rgb.tobytes(), rgb.width, rgb.height)
