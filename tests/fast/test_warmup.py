"""The api's warm-up leaves the media encoders nothing to import on the first request.

Pillow imports a format's plugin on its first save and PyAV opens its codecs on first use,
once per process: each is checked in a fresh interpreter, where nothing ran before the
warm-up (in this one, other tests may have encoded already).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# After the app's warm-up over a catalog that serves images and speech, every image format
# and every speech format encodes without importing a module; the script prints what did.
SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from appliance.api.services import Services
    from appliance.api.warmup import warm_request_path
    from appliance.api.wire.images_encoding import encode
    from appliance.api.wire.speech_audio import SPEECH_FORMATS, SpeechEncoder
    from appliance.engines.base import IMAGE, SPEECH, Listing, RGBImage
    from appliance.engines.catalog import Catalog
    from tests.fake_speech import FakeSpeechEngine
    from tests.fakes import FakeImageEngine, FakeKeys, ListLedger

    services = Services(catalog=Catalog([Listing(IMAGE, FakeImageEngine(), ()),
                                         Listing(SPEECH, FakeSpeechEngine(), ())]),
                        ledger=ListLedger(), keys=FakeKeys())
    asyncio.run(warm_request_path(services))
    before = set(sys.modules)
    image = RGBImage(width=64, height=48, pixels=bytes(64 * 48 * 3))
    for file_format in ("png", "jpeg", "webp"):
        for compression in (100, 60):
            encode(image, file_format, compression)
    for speech_format in SPEECH_FORMATS:
        encoder = SpeechEncoder(speech_format)
        encoder.feed(bytes(4800), 22050)
        encoder.finish()
    print(sorted(set(sys.modules) - before))
""")


def test_after_the_warm_up_no_image_or_speech_encoding_imports_a_module() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
