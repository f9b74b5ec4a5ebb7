// Command agate is the Agate gateway. `agate --help` lists its settings.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "agate: %v\n", err)
		os.Exit(1)
	}
}

// run is the whole program: it serves until ctx is done, then shuts down in order.
// Once listening it prints "agate listening on http://ADDR" to stdout.
func run(ctx context.Context, args []string, getenv func(string) string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { usage(stderr) }
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	cmd := "serve"
	if fs.NArg() > 0 {
		cmd = fs.Arg(0)
	}
	if cmd == "version" {
		fmt.Fprintln(stdout, "agate", version)
		return nil
	}
	if cmd != "serve" && cmd != "migrate" && cmd != "executor" {
		usage(stderr)
		return fmt.Errorf("unknown command %q", cmd)
	}

	cfg, err := load(getenv)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	switch cmd {
	case "migrate":
		return migrate(ctx, cfg, log)
	case "executor":
		return executor(ctx, cfg, log, stdout)
	}
	if cfg.Kafka != "" && cfg.PostgresDSN == "" {
		return fmt.Errorf("KAFKA_BOOTSTRAP_SERVERS is set without POSTGRES_DSN: replicas sharing turns through Kafka must share one PostgreSQL store")
	}
	return serve(ctx, cfg, log, stdout)
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated by load
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// serve runs the gateway until ctx is done. Shutdown: readiness fails and streams close,
// the HTTP server drains, running turns get the grace period, then the store closes.
func serve(ctx context.Context, cfg config, log *slog.Logger, stdout io.Writer) error {
	g, err := wire(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := g.close(); err != nil {
			log.Error("close the store", "err", err)
		}
	}()
	if err := g.runner.Recover(ctx); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	srv := &http.Server{
		Handler:           g.api,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("agate started", "addr", ln.Addr().String(), "version", version, "settings", settings(cfg))
	fmt.Fprintf(stdout, "agate listening on http://%s\n", ln.Addr())

	eg, ectx := errgroup.WithContext(ctx)
	// Work that must see the runner's last turns out stops after it.
	actx, stopAfter := context.WithCancel(context.WithoutCancel(ectx))
	defer stopAfter()
	eg.Go(func() error {
		defer stopAfter()
		return g.runner.Run(ectx)
	})
	for _, job := range g.jobs {
		eg.Go(func() error { return job(ectx) })
	}
	for _, job := range g.after {
		eg.Go(func() error { return job(actx) })
	}
	eg.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	eg.Go(func() error {
		<-ectx.Done()
		log.Info("shutting down")
		g.api.Drain()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ectx), cfg.Grace)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			// Requests still running after the grace period are cut off: the state they
			// changed is stored already, and their clients resume or retry.
			log.Warn("requests still running after the grace period; closing their connections", "err", err)
			srv.Close()
		}
		if err := g.api.Wait(sctx); err != nil {
			log.Warn("WebSocket connections still open after the grace period", "err", err)
		}
		return nil
	})
	err = eg.Wait()
	log.Info("stopped")
	return err
}

// settings lists the effective configuration for the start-up log, secrets masked.
func settings(cfg config) map[string]any {
	out := map[string]any{}
	v := reflect.ValueOf(cfg)
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		val := v.Field(i).Interface()
		if f.Tag.Get("secret") == "true" && val != "" {
			val = "************"
		}
		out[strings.ToLower(f.Tag.Get("env"))] = fmt.Sprint(val)
	}
	return out
}
