package kafka

import (
	"context"
	"errors"
	"fmt"

	"github.com/agate-gw/agate"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// EnsureTopics creates those of names (full names, see Config.Topic) that do not exist yet, with
// the given number of partitions and a replication factor of min(3, number of brokers). Topics
// that exist are left alone, and nothing is asked to be created when all exist (a client that
// may not create topics works with topics made beforehand); their partition count is not
// checked. Each request to the cluster waits at most Config.ProduceTimeout.
//
// When the cluster cannot be reached in time the error wraps agate.EUnavailable; when ctx is
// cancelled it wraps ctx.Err(); a topic the cluster refuses to create (not authorized, invalid
// name or settings) gives an error without a code that names the topic.
func EnsureTopics(ctx context.Context, cfg Config, partitions int, names ...string) error {
	if len(names) == 0 {
		return nil
	}
	if partitions <= 0 || partitions > 1<<31-1 {
		return fmt.Errorf("kafka ensure topics: invalid partition count %d", partitions)
	}
	cfg = cfg.withDefaults()
	opts, err := cfg.clientOpts()
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return fmt.Errorf("kafka ensure topics: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)

	mctx, cancel := context.WithTimeout(ctx, cfg.ProduceTimeout)
	md, err := adm.Metadata(mctx, names...)
	cancel()
	if err != nil {
		return adminError(ctx, "kafka ensure topics: metadata", err)
	}
	var missing []string
	for _, name := range names {
		if t, ok := md.Topics[name]; !ok || t.Err != nil || len(t.Partitions) == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	replicas := int16(min(3, len(md.Brokers)))
	if replicas < 1 {
		replicas = -1 // the broker's default
	}

	cctx, cancel := context.WithTimeout(ctx, cfg.ProduceTimeout)
	defer cancel()
	created, err := adm.CreateTopics(cctx, int32(partitions), replicas, nil, missing...)
	if err != nil {
		return adminError(ctx, "kafka ensure topics: create", err)
	}
	var errs []error
	for _, r := range created.Sorted() {
		if r.Err == nil || errors.Is(r.Err, kerr.TopicAlreadyExists) {
			continue
		}
		err := r.Err
		if r.ErrMessage != "" {
			err = fmt.Errorf("%w (%s)", r.Err, r.ErrMessage)
		}
		errs = append(errs, adminError(ctx, "kafka create topic "+r.Topic, err))
	}
	return errors.Join(errs...)
}

// adminError wraps err like Publish does: EUnavailable when the cluster could not be reached or
// could not serve the request right now, no code when ctx ended or the cluster refused.
func adminError(ctx context.Context, what string, err error) error {
	var auth *kadm.AuthError
	refused := errors.As(err, &auth)
	err = fmt.Errorf("%s: %w", what, err)
	if ctx.Err() == nil && !refused && unavailable(err) {
		return agate.Wrap(agate.EUnavailable, err, "Kafka is unavailable.")
	}
	return err
}
