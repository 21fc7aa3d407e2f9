"""A finished transcript in each of OpenAI's response formats: json, text, srt, vtt and
verbose_json, with the content types OpenAI sends them with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

from appliance.engines.base import Segment, TranscriptionStarted


@dataclass(frozen=True)
class Transcript:
    task: str
    started: TranscriptionStarted
    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.segments).strip()


def duration_usage_json(seconds: float) -> dict[str, Any]:
    """OpenAI's ``usage`` object of a transcription: the seconds of audio it heard."""
    return {"type": "duration", "seconds": round(seconds, 3)}


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(segments: tuple[Segment, ...]) -> str:
    return "".join(f"{number}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n"
                   f"{s.text.strip()}\n\n" for number, s in enumerate(segments, start=1))


def vtt(segments: tuple[Segment, ...]) -> str:
    cues = "".join(f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}"
                   "\n\n" for s in segments)
    return f"WEBVTT\n\n{cues}"


def _segment_json(segment: Segment) -> dict[str, Any]:
    return {"id": segment.id, "seek": segment.seek, "start": segment.start, "end": segment.end,
            "text": segment.text, "tokens": list(segment.tokens),
            "temperature": segment.temperature, "avg_logprob": segment.avg_logprob,
            "compression_ratio": segment.compression_ratio,
            "no_speech_prob": segment.no_speech_prob}


def verbose_json(transcript: Transcript, granularities: tuple[str, ...]) -> dict[str, Any]:
    # A translation's language is its output's, always English (OpenAI's spec says so).
    language = "english" if transcript.task == "translate" else transcript.started.language
    body: dict[str, Any] = {"task": transcript.task, "language": language,
                            "duration": transcript.started.duration, "text": transcript.text}
    if "segment" in granularities:
        body["segments"] = [_segment_json(s) for s in transcript.segments]
    if "word" in granularities and transcript.task == "transcribe":
        body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end}
                         for s in transcript.segments for w in s.words]
    if transcript.task == "transcribe":
        body["usage"] = duration_usage_json(transcript.started.duration)
    return body


def render(transcript: Transcript, response_format: str,
           granularities: tuple[str, ...]) -> Response:
    if response_format == "text":
        return PlainTextResponse(transcript.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(srt(transcript.segments))
    if response_format == "vtt":
        return PlainTextResponse(vtt(transcript.segments))
    if response_format == "verbose_json":
        return JSONResponse(verbose_json(transcript, granularities))
    if transcript.task == "translate":
        return JSONResponse({"text": transcript.text})  # OpenAI's translation JSON: text only
    return JSONResponse({"text": transcript.text,
                         "usage": duration_usage_json(transcript.started.duration)})
