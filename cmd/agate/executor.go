package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/kafka"
	"github.com/agate-gw/agate/tool"
	"github.com/agate-gw/agate/turn"
	"github.com/google/uuid"
)

// executor runs tools for the gateways (`agate executor`): as a member of
// KAFKA_EXECUTOR_GROUP it consumes tool.requests, runs the built-in tool each request
// names (its own catalogue: AGATE_TOOLS_DIR or the built-in one), at most 2×AGATE_WORKERS
// at once, each until its request's deadline, and publishes the result to tool.results,
// where the replica whose turn waits picks it up. A request is committed only once its
// result is published: an executor that dies mid-request leaves it to the next one (the
// gateway takes the first result of a call and drops repeats).
func executor(ctx context.Context, cfg config, log *slog.Logger, stdout io.Writer) error {
	if cfg.Kafka == "" {
		return fmt.Errorf("agate executor needs KAFKA_BOOTSTRAP_SERVERS")
	}
	gate, err := wireTools(cfg, nil, nil, nil, log)
	if err != nil {
		return err
	}
	kcfg := busConfig(cfg, "agate-executor-"+replicaName())
	kcfg.MaxInFlight = max(2*cfg.Workers, 4)
	kcfg.RevokeWait = tool.MaxTimeout // a moved partition waits for the calls it runs
	requests, results := kcfg.Topic(agate.TopicToolRequests), kcfg.Topic(agate.TopicToolResults)
	prod, err := kafka.NewProducer(kcfg)
	if err != nil {
		return err
	}
	defer prod.Close()
	if !ensureTopics(ctx, kcfg, cfg.KafkaParts, []string{requests, results, kafka.DLQ(requests)}, log) {
		return nil
	}
	handle := func(ctx context.Context, r kafka.Record, done func(error)) {
		var req agate.ToolRequest
		if err := json.Unmarshal(r.Value, &req); err != nil || req.ToolName == "" || req.RequestID == uuid.Nil {
			done(kafka.Poison(fmt.Errorf("not a tool request: %v", err)))
			return
		}
		trace := r.Headers["traceparent"]
		if !req.Deadline.IsZero() && time.Now().After(req.Deadline) {
			log.Info("tool request past its deadline; nobody waits for it", "tool", req.ToolName, "request_id", req.RequestID, "traceparent", trace)
			done(nil)
			return
		}
		go func() {
			out := agate.ToolResult{RequestID: req.RequestID, SessionID: req.SessionID, ToolName: req.ToolName, Status: turn.ToolOK}
			tctx, cancel := context.WithDeadline(ctx, req.Deadline) // no longer than someone waits
			if req.Deadline.IsZero() {
				tctx, cancel = context.WithCancel(ctx)
			}
			res, err := gate.reg.Execute(tctx, req.ToolName, req.Args)
			cancel()
			switch {
			case ctx.Err() != nil:
				done(ctx.Err()) // stopping (or the partition moved): another executor runs it
				return
			case err != nil:
				out.Status, out.Text = turn.ToolError, agate.ErrorMessage(err)
			default:
				out.Text, out.Truncated = res.Text, res.Truncated
				if res.IsError {
					out.Status = turn.ToolError
				}
			}
			done(publishResult(context.WithoutCancel(ctx), prod, results, out, trace, log))
		}()
	}
	c, err := kafka.NewAsyncConsumer(kcfg, cfg.ExecutorGroup, []string{requests}, handle, prod, log)
	if err != nil {
		return err
	}
	defer c.Close()
	log.Info("agate executor started", "tools", gate.reg.Names(), "group", cfg.ExecutorGroup)
	fmt.Fprintln(stdout, "agate executor ready")
	return c.Run(ctx)
}

// publishResult publishes a tool's result, trying again a few times: the tool ran, and is
// not run again for a publish that failed once.
func publishResult(ctx context.Context, prod *kafka.Producer, topic string, out agate.ToolResult, traceparent string, log *slog.Logger) error {
	value, _ := json.Marshal(out) // a ToolResult always encodes
	rec := kafka.Record{Topic: topic, Key: []byte(out.RequestID.String()), Value: value}
	if traceparent != "" {
		rec.Headers = map[string]string{"traceparent": traceparent} // the result belongs to the call's trace
	}
	var err error
	for attempt, wait := 0, 200*time.Millisecond; attempt < 5; attempt, wait = attempt+1, 2*wait {
		if err = prod.Publish(ctx, rec); err == nil {
			return nil
		}
		log.Warn("publish a tool result; retrying", "tool", out.ToolName, "request_id", out.RequestID, "err", err)
		time.Sleep(wait)
	}
	return err
}
