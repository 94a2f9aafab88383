
// LlmMessage is one chat message.
type LlmMessage struct {
	Role    string // system, user, assistant or tool
	Content string
}

// LlmRequest is a completion request.
type LlmRequest struct {
	Messages    []LlmMessage
	MaxTokens   uint32   // the most tokens to generate
	Temperature *float32 // nil for the host's default
}

// LlmCompletion is what the model answered.
type LlmCompletion struct {
	Text             string
	PromptTokens     uint32
	CompletionTokens uint32
}

// LlmErrorKind says why a completion failed.
type LlmErrorKind uint8

// The kinds of completion errors.
const (
	LlmBudgetExceeded LlmErrorKind = iota // the call's token budget does not cover the request
	LlmUnavailable                        // no model is available right now
	LlmInvalid                            // the request was malformed
)

// LlmError is a failed completion.
type LlmError struct {
	Kind    LlmErrorKind
	Message string
}

func (e *LlmError) Error() string { return e.Message }

//go:wasmimport hearth:plugin/llm@0.1.0 complete
func hearthLlmComplete(mp unsafe.Pointer, mn uint32, maxTokens uint32, hasTemperature uint32,
	temperature float32, ret unsafe.Pointer)

// LlmComplete asks the host's model for a completion, within the call's
// token budget (plugin.toml's llm-tokens, prompt and answer together).
// A failure is an *LlmError.
func LlmComplete(request LlmRequest) (LlmCompletion, error) {
	messages := hearthAlloc(uint32(16*len(request.Messages)), 4)
	for i, m := range request.Messages {
		base := at(messages, uintptr(16*i))
		putString(base, 0, m.Role)
		putString(base, 8, m.Content)
	}
	var hasTemperature uint32
	var temperature float32
	if request.Temperature != nil {
		hasTemperature, temperature = 1, *request.Temperature
	}
	ret := hearthAlloc(20, 4)
	hearthLlmComplete(messages, uint32(len(request.Messages)), request.MaxTokens,
		hasTemperature, temperature, ret)
	if get8(ret, 0) != 0 {
		return LlmCompletion{}, &LlmError{Kind: LlmErrorKind(get8(ret, 4)), Message: getString(ret, 8)}
	}
	return LlmCompletion{
		Text:             getString(ret, 4),
		PromptTokens:     get32(ret, 12),
		CompletionTokens: get32(ret, 16),
	}, nil
}
