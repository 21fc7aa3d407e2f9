"""The Piper engine's own rules, without a model: what text it reads, how it cuts long
sentences, which voices a model has and where it runs."""

from __future__ import annotations

from pathlib import Path

from appliance.engines.speech import (
    CPU,
    CUDA,
    MAX_PHONEMES,
    choose_device,
    piece_limit,
    providers_for,
    speakable,
    split_long,
    voice_names,
)


def test_text_is_read_as_text_only() -> None:
    assert speakable("a\x00b\x1b[31mc\x7f\x85d") == "a b [31mc  d"
    assert speakable("lone \ud800 surrogate") == "lone   surrogate"
    assert speakable("keep\ttabs\nand lines\r") == "keep\ttabs\nand lines\r"
    # Piper reads [[ ... ]] as raw phonemes: broken up, it is read as the brackets it is.
    assert speakable("[[ h@loU ]]") == "[ [ h@loU ] ]"
    assert speakable("héllo 🎉 שלום") == "héllo 🎉 שלום"


def test_long_sentences_are_cut_at_word_breaks() -> None:
    words = list("abcd efgh ijkl")
    assert split_long(words, limit=10) == [list("abcd efgh "), list("ijkl")]
    assert split_long(list("x" * 25), limit=10) == [list("x" * 10)] * 2 + [list("x" * 5)]
    assert split_long([], limit=10) == []
    long = list(("word " * 200).strip())
    pieces = split_long(long)
    assert all(len(p) <= MAX_PHONEMES for p in pieces)
    assert [p for piece in pieces for p in piece] == long


def test_slow_speech_is_cut_into_shorter_pieces() -> None:
    # Audio (and activations) follow phonemes / speed: a piece at 0.25 holds a quarter of the
    # phonemes, so about the audio of a full-length piece at speed 1, never four times it.
    assert piece_limit(1.0) == piece_limit(4.0) == MAX_PHONEMES
    assert piece_limit(0.5) == MAX_PHONEMES // 2
    assert piece_limit(0.25) == MAX_PHONEMES // 4
    for speed in (0.25, 0.3, 0.5, 0.77, 1.0, 2.0, 4.0):
        assert piece_limit(speed) / min(speed, 1.0) <= MAX_PHONEMES
    long = list(("word " * 200).strip())
    assert all(len(p) <= MAX_PHONEMES // 4 for p in split_long(long, piece_limit(0.25)))


def test_voice_names() -> None:
    one = {"num_speakers": 1, "speaker_id_map": {}, "dataset": "joe"}
    assert voice_names(one, Path("en_US-joe-medium.onnx")) == ("joe",)
    assert voice_names({"num_speakers": 1}, Path("en_US-amy-low.onnx")) == ("en_US-amy-low",)
    many = {"num_speakers": 2, "speaker_id_map": {"p1": 0, "p2": 1}, "dataset": "vctk"}
    assert voice_names(many, Path("x.onnx")) == ("p1", "p2")


def test_device_choice() -> None:
    assert choose_device("auto", [CUDA, CPU]) == "cuda"
    assert choose_device("auto", [CPU]) == "cpu"
    assert choose_device("cpu", [CUDA, CPU]) == "cpu"
    assert providers_for("cpu") == [CPU]
    assert providers_for("cuda")[-1] == CPU  # the CPU provider runs what CUDA cannot
