
//go:wasmimport hearth:plugin/tools@0.1.0 call
func hearthToolsCall(np unsafe.Pointer, nn uint32, ap unsafe.Pointer, an uint32, ret unsafe.Pointer)

// CallTool calls `namespace.tool` of a plugin this one depends on, with JSON
// arguments; it returns the JSON result.
func CallTool(qualifiedName, arguments string) (string, *ToolError) {
	np, nn := lowerString(qualifiedName)
	ap, an := lowerString(arguments)
	ret := hearthAlloc(16, 4)
	hearthToolsCall(np, nn, ap, an, ret)
	if get8(ret, 0) != 0 {
		return "", &ToolError{Kind: ToolErrorKind(get8(ret, 4)), Message: getString(ret, 8)}
	}
	return getString(ret, 4), nil
}
