// units: converts quantities between units, exactly, by asking calc.
//
// `[dependencies] calc = "^0.1"` in plugin.toml puts `hearth:plugin/tools`
// in the world `hearth plugin build` generates, so this module can import
// it; without the dependency the import does not exist and the build fails.
// calc runs in its own sandbox with its own permissions, and computes with
// rationals: 10 mi is exactly 50292/3125 km.

import tools from "hearth:plugin/tools@0.1.0";
import { UNITS, dimensionOf, expression } from "./units.js";

const ALL_UNITS = Object.values(UNITS).flat();

const CONVERT_SCHEMA = {
  type: "object",
  properties: {
    value: { type: "number", description: "The quantity to convert" },
    from: { type: "string", enum: ALL_UNITS, description: "Its unit" },
    to: { type: "string", enum: ALL_UNITS, description: "The unit wanted, of the same dimension" },
  },
  required: ["value", "from", "to"],
  additionalProperties: false,
};

const UNITS_SCHEMA = { type: "object", properties: {}, additionalProperties: false };

function convert({ value, from, to }) {
  let text;
  try {
    text = expression(value, from, to);
  } catch (e) {
    // Mismatched dimensions: the caller's mistake, said as a tool error.
    throw { tag: "invalid-arguments", val: e.message };
  }
  let answer;
  try {
    answer = JSON.parse(tools.call("calc.eval", JSON.stringify({ expression: text })));
  } catch (e) {
    // A failed import call throws an Error whose `payload` is calc's
    // tool-error (`{ tag: "failed", val: "division by zero" }`, …).
    const why = e.payload ? `${e.payload.tag}: ${e.payload.val}` : String(e);
    throw { tag: "unavailable", val: `calc could not evaluate ${text}: ${why}` };
  }
  return { value: answer.value, exact: answer.exact, unit: to, dimension: dimensionOf(to), expression: text };
}

function units() {
  return { units: UNITS };
}

// Tool name -> its description (for the model), the JSON Schema of its
// arguments, and the function that runs it.
const TOOLS = {
  convert: {
    description:
      "Converts a quantity between units of length, mass, time, volume or temperature, exactly. " +
      "Returns the value, the exact fraction and the expression calc evaluated.",
    schema: CONVERT_SCHEMA,
    run: convert,
  },
  units: { description: "Lists the units `convert` knows, by dimension", schema: UNITS_SCHEMA, run: units },
};

// What hearth calls. componentize-qjs finds it by its name, `guest`.
export const guest = {
  describe() {
    return {
      tools: Object.entries(TOOLS).map(([name, tool]) => ({
        name,
        description: tool.description,
        parametersSchema: JSON.stringify(tool.schema),
      })),
      events: [],
    };
  },

  validateConfig(config) {},

  invoke(tool, args, context) {
    const entry = TOOLS[tool];
    if (!entry) {
      throw { tag: "unknown-tool", val: tool };
    }
    return JSON.stringify(entry.run(JSON.parse(args)));
  },

  onEvent(event) {
    return { tag: "proceed" };
  },
};
