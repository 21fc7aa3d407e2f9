"""Incremental text: whole UTF-8 characters only, stop strings cut even across tokens."""

from __future__ import annotations

from appliance.engines.llm.textstream import TextAssembler


def feed(assembler: TextAssembler, pieces: list[bytes]) -> tuple[list[str], bool]:
    out: list[str] = []
    for piece in pieces:
        result = assembler.push(piece)
        out.append(result.text)
        if result.stopped:
            return out, True
    out.append(assembler.finish())
    return out, False


def test_split_multibyte_character_waits_for_its_last_byte() -> None:
    euro = "€".encode()
    out, stopped = feed(TextAssembler(()), [b"a", euro[:1], euro[1:2], euro[2:], b"b"])
    assert out == ["a", "", "", "€", "b", ""]
    assert not stopped


def test_stop_string_across_tokens_is_cut_and_never_sent() -> None:
    out, stopped = feed(TextAssembler(("STOP",)), [b"hello S", b"TO", b"P world"])
    assert stopped
    assert "".join(out) == "hello "
    assert "S" not in out[0]  # held back while it could still become STOP


def test_held_text_is_released_when_it_cannot_be_a_stop() -> None:
    out, stopped = feed(TextAssembler(("STOP",)), [b"ST", b"AR"])
    assert not stopped
    assert out == ["", "STAR", ""]


def test_earliest_of_several_stops_wins() -> None:
    out, stopped = feed(TextAssembler(("world", "lo")), [b"hello world"])
    assert stopped and out == ["hel"]


def test_finish_flushes_an_incomplete_character_as_replacement() -> None:
    out, _ = feed(TextAssembler(()), ["é".encode()[:1]])
    assert out == ["", "\ufffd"]
