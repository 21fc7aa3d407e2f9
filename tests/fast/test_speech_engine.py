"""The Piper engine's own rules, without a model: what text it reads, how it cuts long
sentences, which voices a model has and where it runs."""

from __future__ import annotations

from pathlib import Path

from appliance.engines.speech import (
    CPU,
    CUDA,
    MAX_PHONEMES,
    choose_device,
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
