"""Drives the appliance with instructor (on the openai SDK 2.x) and prints what it observed as
one JSON object on stdout; tests/compat/test_instructor.py asserts on it.

Runs in tests/compat/openai2/.venv, not the main one. Usage:
APPLIANCE_BASE_URL=http://127.0.0.1:PORT/v1 APPLIANCE_KEY=sk-... APPLIANCE_MODEL=gpt-4o-mini \
    python instructor_cases.py
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import instructor
import openai
from pydantic import BaseModel, Field, field_validator

ASK = [{"role": "user", "content": "What is the weather in Rome?"}]
# Every mode instructor offers that constrains the answer by the API rather than by prompt
# text alone (JSON and MD_JSON only ask in words: a 135M model seldom obeys).
MODES = {"tools": instructor.Mode.TOOLS, "tools_strict": instructor.Mode.TOOLS_STRICT,
         "json_schema": instructor.Mode.JSON_SCHEMA,
         "responses_tools": instructor.Mode.RESPONSES_TOOLS}


class Weather(BaseModel):
    city: str = Field(max_length=30)
    celsius: int


def by_mode(client: openai.OpenAI, model: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for name, mode in MODES.items():
        patched = instructor.from_openai(client, mode=mode)
        answer, raw = patched.create_with_completion(
            model=model, response_model=Weather, messages=ASK, max_tokens=100, max_retries=0)
        seen[name] = {"answer": answer.model_dump(), "id": raw.id,
                      "usage": raw.usage.model_dump() if raw.usage else None}
    return seen


def reask(client: openai.OpenAI, model: str) -> dict[str, Any]:
    """A validator that refuses the first answer: instructor sends the answer back with the
    validation error (the call and a tool result naming it) and asks again."""
    answers: list[str] = []

    class Checked(BaseModel):
        city: str = Field(max_length=30)

        @field_validator("city")
        @classmethod
        def refuse_the_first(cls, city: str) -> str:
            answers.append(city)
            if len(answers) == 1:
                raise ValueError("name the city in capital letters")
            return city

    patched = instructor.from_openai(client, mode=instructor.Mode.TOOLS)
    answer = patched.create(model=model, response_model=Checked, messages=ASK,
                            max_tokens=100, max_retries=2)
    return {"attempts": len(answers), "answer": answer.model_dump()}


def partial(client: openai.OpenAI, model: str) -> dict[str, Any]:
    patched = instructor.from_openai(client, mode=instructor.Mode.TOOLS)
    parts = list(patched.create_partial(model=model, response_model=Weather, messages=ASK,
                                        max_tokens=100))
    return {"count": len(parts), "last": parts[-1].model_dump() if parts else None}


async def asynchronous(base_url: str, key: str, model: str) -> dict[str, Any]:
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        patched = instructor.from_openai(client, mode=instructor.Mode.JSON_SCHEMA)
        answer = await patched.create(model=model, response_model=Weather, messages=ASK,
                                      max_tokens=100, max_retries=0)
    return answer.model_dump()


def main() -> None:
    base_url, key = os.environ["APPLIANCE_BASE_URL"], os.environ["APPLIANCE_KEY"]
    model = os.environ["APPLIANCE_MODEL"]
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        observed = {"openai": openai.__version__, "instructor": instructor.__version__,
                    "modes": by_mode(client, model), "reask": reask(client, model),
                    "partial": partial(client, model)}
    observed["async"] = asyncio.run(asynchronous(base_url, key, model))
    print(json.dumps(observed))


if __name__ == "__main__":
    main()
