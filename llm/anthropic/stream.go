package anthropic

import (
	"encoding/json"
	"errors"
	"io"
	"strings"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/internal/sse"
)

// Wire format of the stream: one JSON object per event, with the fields of every type.

type event struct {
	Type         string        `json:"type"`
	Message      *messageStart `json:"message"`       // message_start
	Index        int           `json:"index"`         // content_block_*
	ContentBlock *contentBlock `json:"content_block"` // content_block_start
	Delta        *delta        `json:"delta"`         // content_block_delta, message_delta
	Usage        *usage        `json:"usage"`         // message_delta
	Error        *apiError     `json:"error"`         // error
}

type messageStart struct {
	Model string `json:"model"`
	Usage *usage `json:"usage"`
}

type contentBlock struct {
	Type  string          `json:"type"` // text, tool_use, thinking, server_tool_use, …
	Text  string          `json:"text"`
	ID    string          `json:"id"`
	Name  string          `json:"name"`
	Input json.RawMessage `json:"input"` // only in non-streaming replies
}

type delta struct {
	Type        string  `json:"type"` // text_delta, input_json_delta, thinking_delta, …
	Text        string  `json:"text"`
	PartialJSON string  `json:"partial_json"`
	StopReason  *string `json:"stop_reason"` // message_delta
}

// usage holds token counts; in message_delta they are cumulative, and absent ones are nil.
type usage struct {
	InputTokens              *int `json:"input_tokens"`
	OutputTokens             *int `json:"output_tokens"`
	CacheCreationInputTokens *int `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     *int `json:"cache_read_input_tokens"`
}

type apiError struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// stream is the state of one Generate call.
type stream struct {
	*call
	emit    func(agate.Delta) error
	reply   agate.Reply
	text    strings.Builder
	calls   []agate.ToolCall // by tool-call ordinal; Arguments as received
	blocks  map[int]int      // content block index → tool-call ordinal
	usage   usage
	sawStop bool // a message_delta had a stop_reason
}

// readSSE reads the event stream until message_stop.
func (s *stream) readSSE(r io.Reader) (agate.Reply, error) {
	dec := sse.NewDecoder(r, maxEventSize)
	for {
		ev, err := dec.Next()
		if err != nil {
			if errors.Is(err, sse.ErrTooLarge) {
				return s.result(agate.Wrap(agate.EUpstream, err, "Anthropic sent a stream event over 1 MiB; the reply was abandoned."))
			}
			return s.result(s.endOfStream(err))
		}
		var e event
		if err := json.Unmarshal([]byte(ev.Data), &e); err != nil {
			if ev.Type == "error" { // a plain-text error event, from a proxy
				return s.result(s.eventError(apiError{Message: ev.Data}))
			}
			return s.result(agate.Wrap(agate.EUpstream, err, "Anthropic sent a malformed stream event."))
		}
		if e.Type == "" {
			e.Type = ev.Type
		}
		done, err := s.add(&e)
		if err != nil || done {
			return s.result(err)
		}
	}
}

// add takes in one event and emits what it holds. It reports whether the message is done.
// Unknown event, block and delta types are skipped, as Anthropic asks of clients.
func (s *stream) add(e *event) (bool, error) {
	switch e.Type {
	case "message_start":
		if e.Message != nil {
			if e.Message.Model != "" {
				s.reply.Model = e.Message.Model
			}
			s.addUsage(e.Message.Usage)
		}
	case "content_block_start":
		if e.ContentBlock != nil {
			return false, s.startBlock(e.Index, e.ContentBlock)
		}
	case "content_block_delta":
		if e.Delta == nil {
			break
		}
		switch e.Delta.Type {
		case "text_delta":
			return false, s.addText(e.Delta.Text)
		case "input_json_delta":
			if i, ok := s.blocks[e.Index]; ok {
				return false, s.addArguments(i, e.Delta.PartialJSON)
			}
		}
	case "message_delta":
		if e.Delta != nil && e.Delta.StopReason != nil && *e.Delta.StopReason != "" {
			s.reply.FinishReason = finishReason(*e.Delta.StopReason)
			s.sawStop = true
		}
		s.addUsage(e.Usage)
	case "content_block_stop":
		// A tool called without input streams no input_json_delta: say "{}" so that a
		// streamed call parses as JSON like the assembled one.
		if i, ok := s.blocks[e.Index]; ok && s.calls[i].Arguments == "" {
			return false, s.addArguments(i, "{}")
		}
	case "message_stop":
		return true, nil
	case "error":
		var ae apiError
		if e.Error != nil {
			ae = *e.Error
		}
		return false, s.eventError(ae)
	}
	return false, nil // ping and the unknown
}

// startBlock takes in a content block's start. A tool_use block is a new tool call; other
// blocks than text (thinking, server tools) are not part of the canonical reply.
func (s *stream) startBlock(index int, b *contentBlock) error {
	switch b.Type {
	case "text":
		return s.addText(b.Text)
	case "tool_use":
		i := len(s.calls)
		s.blocks[index] = i
		s.calls = append(s.calls, agate.ToolCall{ID: b.ID, Name: b.Name})
		return s.emit(agate.Delta{ToolCall: &agate.ToolCallDelta{Index: i, ID: b.ID, Name: b.Name}})
	}
	return nil
}

func (s *stream) addText(t string) error {
	if t == "" {
		return nil
	}
	s.text.WriteString(t)
	return s.emit(agate.Delta{Text: t})
}

func (s *stream) addArguments(i int, partial string) error {
	if partial == "" {
		return nil
	}
	s.calls[i].Arguments += partial
	return s.emit(agate.Delta{ToolCall: &agate.ToolCallDelta{Index: i, Arguments: partial}})
}

func (s *stream) addUsage(u *usage) {
	if u == nil {
		return
	}
	for _, f := range []struct{ dst, src **int }{
		{&s.usage.InputTokens, &u.InputTokens},
		{&s.usage.OutputTokens, &u.OutputTokens},
		{&s.usage.CacheCreationInputTokens, &u.CacheCreationInputTokens},
		{&s.usage.CacheReadInputTokens, &u.CacheReadInputTokens},
	} {
		if *f.src != nil {
			*f.dst = *f.src
		}
	}
}

// finishReason maps a stop_reason to the canonical finish reasons; one it does not know is
// passed on as it is.
func finishReason(r string) string {
	switch r {
	case "end_turn", "stop_sequence":
		return agate.FinishStop
	case "max_tokens", "model_context_window_exceeded":
		return agate.FinishLength
	case "tool_use":
		return agate.FinishToolCalls
	case "refusal":
		return agate.FinishFilter
	}
	return r
}

// readJSON reads a non-streaming reply, which a proxy that ignores "stream" may send: a
// message or an error.
func (s *stream) readJSON(r io.Reader) (agate.Reply, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxJSONSize+1))
	if err != nil {
		return s.result(s.endOfStream(err))
	}
	if len(data) > maxJSONSize {
		return s.result(agate.Errorf(agate.EUpstream, "Anthropic's reply is over 16 MiB; it was abandoned."))
	}
	var m struct {
		Type       string         `json:"type"`
		Model      string         `json:"model"`
		Content    []contentBlock `json:"content"`
		StopReason string         `json:"stop_reason"`
		Usage      *usage         `json:"usage"`
		Error      *apiError      `json:"error"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return s.result(agate.Wrap(agate.EUpstream, err, "Anthropic sent a reply that is not valid JSON."))
	}
	if m.Error != nil {
		return s.result(s.eventError(*m.Error))
	}
	if m.Type != "message" {
		return s.result(agate.Errorf(agate.EUpstream, "Anthropic sent a reply that is not a message."))
	}
	if m.Model != "" {
		s.reply.Model = m.Model
	}
	s.addUsage(m.Usage)
	for i := range m.Content {
		b := &m.Content[i]
		if err := s.startBlock(i, b); err != nil {
			return s.result(err)
		}
		if j, ok := s.blocks[i]; ok && isObject(b.Input) && string(b.Input) != "{}" {
			if err := s.addArguments(j, string(b.Input)); err != nil {
				return s.result(err)
			}
		}
	}
	s.reply.FinishReason = finishReason(m.StopReason)
	return s.result(nil)
}

// result returns the reply so far with err.
func (s *stream) result(err error) (agate.Reply, error) {
	s.reply.Text = s.text.String()
	s.reply.ToolCalls = nil
	for _, tc := range s.calls {
		if tc.Arguments == "" {
			tc.Arguments = "{}"
		}
		s.reply.ToolCalls = append(s.reply.ToolCalls, tc)
	}
	n := func(p *int) int {
		if p == nil {
			return 0
		}
		return *p
	}
	u := s.usage
	s.reply.Usage.PromptTokens = n(u.InputTokens) + n(u.CacheCreationInputTokens) + n(u.CacheReadInputTokens)
	s.reply.Usage.CompletionTokens = n(u.OutputTokens)
	s.reply.Usage.TotalTokens = s.reply.Usage.PromptTokens + s.reply.Usage.CompletionTokens
	return s.reply, err
}
