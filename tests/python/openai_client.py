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

# The server runs with its bundled plugins active, so plugin tools are
# offered beside the client's. Two answers that were once wrong, tried
# TRIES times each with varied seeds.
TRIES = int(os.environ.get("HEARTH_TRIES", "50"))

# json_mode_never_turns_the_answer_into_a_tool_call: in JSON mode the JSON
# is the answer, even when it has a "name" - never a call to a tool nobody
# offered.
for seed in range(TRIES):
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Give a JSON object with key name set to Ada."}],
        response_format={"type": "json_object"},
        temperature=1.0,
        seed=seed,
        max_tokens=40,
    )
    choice = reply.choices[0]
    assert not choice.message.tool_calls, (seed, choice)
    assert choice.finish_reason in ("stop", "length"), (seed, choice)
    assert choice.message.content is not None, (seed, choice)

# required_with_client_tools_forces_a_client_tool_call: with client tools,
# `required` means one of the client's tools, streamed or not - a plugin
# tool call run on the server must not turn the answer into plain text.
get_time = [
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The current time",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    }
]
for seed in range(TRIES):
    kwargs = dict(
        model=model,
        messages=[{"role": "user", "content": "What time is it?"}],
        tools=get_time,
        tool_choice="required",
        temperature=1.0,
        seed=seed,
        max_tokens=60,
    )
    if seed % 2:
        names, finish = [], None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            if chunk.choices:
                names += [d.function.name for d in chunk.choices[0].delta.tool_calls or [] if d.function.name]
                finish = chunk.choices[0].finish_reason or finish
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        names = [c.function.name for c in choice.message.tool_calls or []]
        finish = choice.finish_reason
    assert finish == "tool_calls", (seed, finish, names)
    assert names == ["get_time"], (seed, names)

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
