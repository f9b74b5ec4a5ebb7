package llmtest_test

import (
	"context"
	"fmt"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/llmtest"
)

func ExampleScript() {
	model := llmtest.New(
		llmtest.Text("Hello", ", world"),
		llmtest.Text("Hal").Fail(agate.Errorf(agate.EUpstream, "provider down")),
	)
	req := agate.ModelRequest{Messages: []agate.Message{{Role: agate.RoleUser, Content: "Hi"}}}
	show := func(d agate.Delta) error { fmt.Printf("delta %q\n", d.Text); return nil }

	reply, err := model.Generate(context.Background(), req, show)
	fmt.Println(reply.Text, reply.FinishReason, err)
	reply, err = model.Generate(context.Background(), req, show)
	fmt.Println(reply.Text, agate.ErrorCode(err))
	fmt.Println(model.Calls(), model.Requests()[0].Messages[0].Content)
	// Output:
	// delta "Hello"
	// delta ", world"
	// Hello, world stop <nil>
	// delta "Hal"
	// Hal upstream_error
	// 2 Hi
}
