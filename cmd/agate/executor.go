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
	"github.com/agate-gw/agate/turn"
)

// executor runs tools for the gateways (`agate executor`): as a member of
// KAFKA_EXECUTOR_GROUP it consumes tool.requests, runs the built-in tool each request
// names (its own catalogue: AGATE_TOOLS_DIR or the built-in one), and publishes the result
// to tool.results, where the replica whose turn waits picks it up. A request is committed
// only once its result is published: an executor that dies mid-request leaves it to the
// next one (the gateway takes the first result of a call and drops repeats).
func executor(ctx context.Context, cfg config, log *slog.Logger, stdout io.Writer) error {
	if cfg.Kafka == "" {
		return fmt.Errorf("agate executor needs KAFKA_BOOTSTRAP_SERVERS")
	}
	gate, err := wireTools(cfg, nil, nil, nil, log)
	if err != nil {
		return err
	}
	kcfg := busConfig(cfg, "agate-executor-"+replicaName())
	requests, results := kcfg.Topic(agate.TopicToolRequests), kcfg.Topic(agate.TopicToolResults)
	prod, err := kafka.NewProducer(kcfg)
	if err != nil {
		return err
	}
	defer prod.Close()
	if !ensureTopics(ctx, kcfg, cfg.KafkaParts, []string{requests, results, kafka.DLQ(requests)}, log) {
		return nil
	}
	handle := func(ctx context.Context, r kafka.Record) error {
		var req agate.ToolRequest
		if err := json.Unmarshal(r.Value, &req); err != nil || req.ToolName == "" {
			return kafka.Poison(fmt.Errorf("not a tool request: %v", err))
		}
		if !req.Deadline.IsZero() && time.Now().After(req.Deadline) {
			log.Info("tool request past its deadline; nobody waits for it", "tool", req.ToolName, "request_id", req.RequestID)
			return nil
		}
		out := agate.ToolResult{RequestID: req.RequestID, SessionID: req.SessionID, ToolName: req.ToolName, Status: turn.ToolOK}
		res, err := gate.reg.Execute(ctx, req.ToolName, req.Args)
		switch {
		case ctx.Err() != nil:
			return ctx.Err() // stopping: left for the next executor
		case err != nil:
			out.Status, out.Text = turn.ToolError, agate.ErrorMessage(err)
		default:
			out.Text, out.Truncated = res.Text, res.Truncated
			if res.IsError {
				out.Status = turn.ToolError
			}
		}
		value, _ := json.Marshal(out) // a ToolResult always encodes
		return prod.Publish(ctx, kafka.Record{Topic: results, Key: []byte(req.SessionID.String()), Value: value})
	}
	c, err := kafka.NewConsumer(kcfg, cfg.ExecutorGroup, []string{requests}, handle, prod, log)
	if err != nil {
		return err
	}
	defer c.Close()
	log.Info("agate executor started", "tools", gate.reg.Names(), "group", cfg.ExecutorGroup)
	fmt.Fprintln(stdout, "agate executor ready")
	return c.Run(ctx)
}
