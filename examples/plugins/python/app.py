"""tally: keeps named counts in the plugin's own key-value store.

`kv = true` in plugin.toml puts `hearth:plugin/kv` in the world that
`hearth plugin build` generates, and so `wit_world.imports.kv` in the
bindings componentize-py writes. Every call runs in a fresh instance: the
store is the only thing that outlives it. A call's writes are committed when
it returns (also with an error) and dropped if it traps.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import kv, types

KEY_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "description": "The name of the count",
}

ADD_SCHEMA = {
    "type": "object",
    "properties": {
        "key": KEY_SCHEMA,
        "amount": {
            "type": "integer",
            "description": "What to add; negative to subtract",
        },
    },
    "required": ["key", "amount"],
    "additionalProperties": False,
}

TOTAL_SCHEMA = {
    "type": "object",
    "properties": {"key": KEY_SCHEMA},
    "required": ["key"],
    "additionalProperties": False,
}

COUNTS_SCHEMA = {"type": "object", "properties": {}, "additionalProperties": False}

# Counts live under this prefix, so other keys can join them later.
PREFIX = "count:"


def storage(call):
    """Runs a kv call; a store error becomes a tool failure the caller sees."""
    try:
        return call()
    except Err as e:
        # e.value is kv.Error_TooLarge, Error_QuotaExceeded or Error_Io.
        raise Err(types.ToolError_Failed(f"the store refused: {e.value.value}"))


def read(key: str) -> int:
    value = storage(lambda: kv.get(PREFIX + key))
    return 0 if value is None else int(value.decode())


def add(args: dict) -> dict:
    key = args["key"]
    total = read(key) + args["amount"]
    storage(lambda: kv.set(PREFIX + key, str(total).encode()))
    return {"key": key, "total": total}


def total(args: dict) -> dict:
    return {"key": args["key"], "total": read(args["key"])}


def counts(args: dict) -> dict:
    keys = storage(lambda: kv.list_keys(PREFIX))
    return {"counts": {k[len(PREFIX) :]: read(k[len(PREFIX) :]) for k in keys}}


# Tool name -> (description, JSON Schema of its arguments, function). The
# names are what the model sees; hearth refuses two plugins offering the same
# name at the same priority (the bundled `notes` has `get` and `list`).
TOOLS = {
    "add": ("Adds an amount to a named count; returns the new total", ADD_SCHEMA, add),
    "total": ("Returns a named count (0 if nothing was added to it)", TOTAL_SCHEMA, total),
    "counts": ("Returns every count by name", COUNTS_SCHEMA, counts),
}


class Guest(exports.Guest):
    """What hearth calls. componentize-py finds it by its name, `Guest`."""

    def describe(self) -> types.Description:
        return types.Description(
            tools=[
                types.Tool(
                    name=name,
                    description=description,
                    parameters_schema=json.dumps(schema),
                )
                for name, (description, schema, _) in TOOLS.items()
            ],
            events=[],
        )

    def validate_config(self, config: str) -> None:
        pass

    def invoke(self, tool: str, arguments: str, context: types.CallContext) -> str:
        if tool not in TOOLS:
            raise Err(types.ToolError_UnknownTool(tool))
        # hearth has checked the arguments against the tool's schema.
        _, _, function = TOOLS[tool]
        return json.dumps(function(json.loads(arguments)))

    def on_event(self, event: types.Event) -> types.EventOutcome:
        return types.EventOutcome_Proceed()
