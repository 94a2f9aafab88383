"""hearth's API as the official OpenAI Python client sees it.

Run by host/tests/openai_python.rs against a live `hearth serve`, with
OPENAI_BASE_URL and OPENAI_API_KEY set. Exits non-zero on any mismatch.
"""

import json
import os

import openai

client = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"])
model = client.models.list().data[0].id

# A plain chat.
reply = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    temperature=0,
    max_tokens=40,
)
text = reply.choices[0].message.content
assert "Paris" in text, text
assert reply.choices[0].finish_reason == "stop", reply
assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

# A streamed chat: the pieces add up to the same answer.
pieces = []
finish = None
for chunk in client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    temperature=0,
    max_tokens=40,
    stream=True,
):
    if chunk.choices:
        delta = chunk.choices[0].delta
        if delta.content:
            pieces.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
assert "".join(pieces) == text, ("".join(pieces), text)
assert finish == "stop", finish

# A tool call, named by tool_choice: arguments arrive as JSON text.
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 30}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]
reply = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    temperature=0,
)
choice = reply.choices[0]
assert choice.finish_reason == "tool_calls", choice
call = choice.message.tool_calls[0]
assert call.function.name == "get_weather", call
assert isinstance(json.loads(call.function.arguments)["city"], str), call

# The same call streamed: index-keyed tool-call deltas.
calls = {}
for chunk in client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    temperature=0,
    stream=True,
):
    for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        entry = calls.setdefault(d.index, {"name": "", "arguments": ""})
        if d.function.name:
            entry["name"] += d.function.name
        if d.function.arguments:
            entry["arguments"] += d.function.arguments
assert calls[0]["name"] == "get_weather", calls
json.loads(calls[0]["arguments"])

# Errors come back as the client's typed exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("unknown model accepted")
except openai.NotFoundError:
    pass
try:
    openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="wrong").models.list()
    raise AssertionError("wrong key accepted")
except openai.AuthenticationError:
    pass

print("ok")
