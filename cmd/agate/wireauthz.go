package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/agate-gw/agate/httpapi"
	"github.com/agate-gw/agate/opa"
	"github.com/agate-gw/agate/openfga"
	"github.com/agate-gw/agate/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// authz is relationship authorization (OpenFGA) and policy (OPA).
type authz struct {
	rel     *openfga.Cached
	policy  *opa.Measured
	jobs    []func(context.Context) error
	closers []func() error
	checks  []httpapi.Check
}

// wireAuthz builds both: the remote servers when their URLs are set, else their engines in
// process (OpenFGA's with a memory datastore; OPA's with AGATE_POLICY_DIR or the policies
// built into agate).
func wireAuthz(ctx context.Context, cfg config, log *slog.Logger, reg prometheus.Registerer) (*authz, error) {
	a := &authz{}
	var (
		rel openfga.Authorizer
		err error
	)
	if cfg.OpenFGAURL != "" {
		rel, err = openfga.NewRemote(ctx, openfga.RemoteConfig{
			APIURL: cfg.OpenFGAURL, StoreID: cfg.OpenFGAStore, ModelID: cfg.OpenFGAModel,
			APIToken: cfg.OpenFGAToken, Create: cfg.OpenFGANew,
		}, log)
	} else {
		rel, err = openfga.NewEmbedded(ctx, log)
		if cfg.Kafka != "" {
			log.Warn("OpenFGA runs in this process with a memory datastore while replicas share turns: " +
				"sessions shared on one replica are not shared on the others, and restarts forget shares; set OPENFGA_API_URL")
		}
	}
	if err != nil {
		return nil, err
	}
	a.rel = openfga.WithStale(rel, time.Duration(cfg.OpenFGAStale)*time.Second, log, reg)
	a.closers = append(a.closers, a.rel.Close)
	a.checks = append(a.checks, httpapi.Check{Name: "openfga", Probe: a.rel.Ping})

	var d opa.Decider
	switch {
	case cfg.OPAURL != "":
		if d, err = opa.NewRemote(cfg.OPAURL, nil); err != nil {
			return nil, err
		}
	case cfg.PolicyDir != "":
		e, err := opa.NewEmbedded(ctx, cfg.PolicyDir, log)
		if err != nil {
			return nil, err
		}
		a.jobs = append(a.jobs, e.Run)
		d = e
	default:
		if d, err = opa.NewEmbeddedFS(ctx, policy.FS, "built-in policies", log); err != nil {
			return nil, err
		}
	}
	a.policy = opa.NewMeasured(d, reg)
	return a, nil
}
