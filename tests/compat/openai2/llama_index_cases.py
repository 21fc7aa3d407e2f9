"""Drives the appliance with LlamaIndex's OpenAI classes (on the openai SDK 2.x) and prints what
it observed as one JSON object on stdout; tests/compat/test_llama_index.py asserts on it.

LlamaIndex's ``OpenAI`` looks its model name up in a table of OpenAI's models (for the
context window) and refuses any other name, so it reaches local models by their aliases
(README, "Client libraries"). Runs in tests/compat/openai2/.venv. Usage:
APPLIANCE_BASE_URL=http://127.0.0.1:PORT/v1 APPLIANCE_KEY=sk-... python llama_index_cases.py
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.embeddings.openai import OpenAIEmbedding
from llama_index.llms.openai import OpenAI, OpenAIResponses
from pydantic import BaseModel, Field

QUESTION = "What is the capital of France?"


class Weather(BaseModel):
    """The weather in a city."""

    city: str = Field(max_length=30)
    celsius: int


def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"sunny, 21 C in {city}"


def text(llm: OpenAI) -> dict[str, Any]:
    chat = llm.chat([ChatMessage(role="user", content=QUESTION)])
    streamed = "".join(part.delta or "" for part in
                       llm.stream_chat([ChatMessage(role="user", content=QUESTION)]))
    usage = chat.raw.usage if chat.raw is not None else None
    return {"complete": llm.complete(QUESTION).text, "chat": chat.message.content,
            "stream": streamed, "usage": usage.model_dump() if usage else None}


def structured(llm: OpenAI) -> dict[str, Any]:
    predicted = llm.structured_predict(Weather, PromptTemplate("What is the weather in {city}?"),
                                       city="Rome")
    wrapped = llm.as_structured_llm(Weather).complete("What is the weather in Rome?").raw
    return {"predict": predicted.model_dump(), "structured_llm": wrapped.model_dump()}


def tool_round_trip(llm: OpenAI) -> dict[str, Any]:
    """An agent's step by hand: a required call, its result sent back, the model's answer."""
    tool = FunctionTool.from_defaults(fn=get_weather)
    history = [ChatMessage(role="user", content="What is the weather in Rome?")]
    called = llm.chat_with_tools([tool], chat_history=history, tool_required=True,
                                 allow_parallel_tool_calls=False)
    calls = llm.get_tool_calls_from_response(called, error_on_no_tool_call=True)
    history.append(called.message)
    for call in calls:
        history.append(ChatMessage(role="tool", content=get_weather(**call.tool_kwargs),
                                   additional_kwargs={"tool_call_id": call.tool_id,
                                                      "name": call.tool_name}))
    answer = llm.chat(history)
    return {"calls": [{"name": c.tool_name, "args": c.tool_kwargs} for c in calls],
            "answer": answer.message.content}


def embeddings(base_url: str, key: str) -> dict[str, Any]:
    model = OpenAIEmbedding(model="text-embedding-3-small", api_base=base_url, api_key=key,
                            max_retries=0)
    batch = model.get_text_embedding_batch(["first text", "second text", "third"])
    query = model.get_query_embedding("first text")
    return {"batch": [len(vector) for vector in batch], "query": len(query),
            "same_as_batch": query == batch[0]}


def responses(base_url: str, key: str) -> dict[str, Any]:
    llm = OpenAIResponses(model="gpt-4o-mini", api_base=base_url, api_key=key, max_retries=0,
                          max_output_tokens=16, temperature=0)
    whole = llm.complete(QUESTION).text
    streamed = "".join(part.delta or "" for part in llm.stream_complete(QUESTION))
    return {"complete": whole, "stream": streamed}


def reasoning(base_url: str, key: str) -> dict[str, Any]:
    """``o4-mini``, SmolLM2 as a reasoning model: LlamaIndex sends an o-series model
    ``reasoning_effort`` and ``max_completion_tokens`` and reads the reasoning as a block."""
    # LlamaIndex sends an o-series model temperature 1 whatever it is given; greedy comes
    # through additional_kwargs (sampling freely, SmolLM2 sometimes leaves the answer empty).
    llm = OpenAI(model="o4-mini", api_base=base_url, api_key=key, max_retries=0,
                 reasoning_effort="low", max_tokens=60, additional_kwargs={"temperature": 0})
    answer = llm.chat([ChatMessage(role="user", content="What is 2 + 2?")])
    usage = answer.raw.usage if answer.raw is not None else None
    return {"blocks": [type(block).__name__ for block in answer.message.blocks],
            "reasoning_tokens": usage.completion_tokens_details.reasoning_tokens
            if usage and usage.completion_tokens_details else None}


async def asynchronous(llm: OpenAI) -> dict[str, Any]:
    answer = await llm.acomplete(QUESTION)
    parts = [part.delta async for part in await llm.astream_complete(QUESTION)]
    return {"complete": answer.text, "stream": "".join(part or "" for part in parts)}


def main() -> None:
    base_url, key = os.environ["APPLIANCE_BASE_URL"], os.environ["APPLIANCE_KEY"]

    def llm(max_tokens: int, **settings: Any) -> OpenAI:
        return OpenAI(model="gpt-4o-mini", api_base=base_url, api_key=key, max_retries=0,
                      max_tokens=max_tokens, **settings)

    observed = {"text": text(llm(12, temperature=0)), "structured": structured(llm(100)),
                "tools": tool_round_trip(llm(100)), "embeddings": embeddings(base_url, key),
                "responses": responses(base_url, key), "reasoning": reasoning(base_url, key),
                "async": asyncio.run(asynchronous(llm(12, temperature=0)))}
    print(json.dumps(observed))


if __name__ == "__main__":
    main()
