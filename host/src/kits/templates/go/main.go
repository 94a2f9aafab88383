// {{name}}: a hearth plugin in Go (experimental).
//
// `hearth plugin build` generates hearth_gen.go from plugin.toml before
// every build: the types of the contract (Tool, Description, ToolError, ...),
// the exports, which call the four functions below, and the imports the
// manifest grants (Log, ConfigGet, ConfigGetAll; KvGet, ... with `kv = true`;
// CallTool with [dependencies]).
package main

import "encoding/json"

// The arguments of `greet`: exactly one string, `name`. The host checks
// every call against this schema before invoke runs.
const greetSchema = `{"type":"object","properties":{"name":{"type":"string"}},"required":["name"],"additionalProperties":false}`

func describe() Description {
	return Description{Tools: []Tool{{
		Name:             "greet",
		Description:      "Greets someone by name",
		ParametersSchema: greetSchema,
	}}}
}

func validateConfig(config string) error { return nil }

func invoke(tool, arguments string, ctx CallContext) (string, *ToolError) {
	switch tool {
	case "greet":
		var args struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal([]byte(arguments), &args); err != nil {
			return "", &ToolError{Kind: InvalidArguments, Message: err.Error()}
		}
		out, _ := json.Marshal(map[string]string{"greeting": "Hello, " + args.Name + "!"})
		return string(out), nil
	}
	return "", &ToolError{Kind: UnknownTool, Message: tool}
}

func onEvent(event Event) EventOutcome { return EventOutcome{Kind: Proceed} }

// A reactor: the host calls the exports; main never runs.
func main() {}
