"""models.toml's speech models: their own keys, read and checked like every kind's."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import SpeechModelConfig, load_config
from appliance.errors import ConfigError


def write(tmp_path: Path, extra: str) -> Path:
    voice = tmp_path / "voice.onnx"
    voice.write_bytes(b"onnx")
    config = tmp_path / "models.toml"
    config.write_text(f'[[models]]\nid = "tts"\nkind = "speech"\npath = "voice.onnx"\n{extra}\n')
    return config


def test_speech_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'workers = 2\ndevice = "cpu"\nthreads = 1\n'
                                         'aliases = ["tts-1"]\n'
                                         'voices = { nova = "joe", alloy = "joe" }'))
    [model] = config.models
    assert isinstance(model, SpeechModelConfig)
    assert (model.workers, model.device, model.threads, model.aliases) == (2, "cpu", 1,
                                                                          ("tts-1",))
    assert model.voices == (("alloy", "joe"), ("nova", "joe"))  # sorted pairs


@pytest.mark.parametrize(("extra", "says"), [
    ('voices = { alloy = 1 }', "voices"),
    ('voices = ["joe"]', "voices"),
    ('device = "tpu"', "device"),
    ("workers = 0", "workers"),
    ("max_upload_mb = 5", "applies only to models of kind transcription"),
    ('compute_type = "int8"', "applies only"),
])
def test_bad_speech_keys_name_the_key(tmp_path: Path, extra: str, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, extra))
    assert says in str(raised.value)
