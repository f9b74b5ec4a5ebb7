package openfga

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	openfgav1 "github.com/openfga/api/proto/openfga/v1"
	"github.com/openfga/openfga/pkg/server"
	"github.com/openfga/openfga/pkg/storage"
	"github.com/openfga/openfga/pkg/storage/cache/keys"
	"github.com/openfga/openfga/pkg/storage/memory"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agate-gw/agate"
)

// Tunables of the embedded engine's check cache (OpenFGA's check-query cache).
const (
	checkCacheTTL   = 10 * time.Second
	checkCacheLimit = 100_000 // entries; one Check stores one per sub-problem it solves
)

// Engine is OpenFGA's server (pkg/server) running in process on its memory datastore, with
// one store holding the model of conf/authz.fga. Tuples live as long as the Engine: it is
// the authorization of a single gateway process (development, tests, one replica).
//
// Checks use OpenFGA's check-query cache. Every Write and Delete invalidates it entirely and
// waits for in-flight checks, so a Check that starts after Write or Delete returned sees
// the change. Its methods may be called concurrently.
type Engine struct {
	srv          *server.Server
	cache        *epochCache
	store, model string

	// mu is held for reading by each Check and for writing by Write, Delete and Close: a
	// check never runs across a change, so no answer computed before a change is cached
	// as valid after it.
	mu     sync.RWMutex
	closed bool
}

// NewEmbedded starts OpenFGA's server in process with its memory datastore, creates a
// store and writes the model of conf/authz.fga. Close stops it. The server logs to log at
// Info and above.
func NewEmbedded(ctx context.Context, log *slog.Logger) (*Engine, error) {
	m, err := model()
	if err != nil {
		return nil, err
	}
	lru, err := storage.NewInMemoryLRUCache(storage.WithMaxCacheSize[any](checkCacheLimit))
	if err != nil {
		return nil, fmt.Errorf("openfga check cache: %w", err)
	}
	cache := &epochCache{InMemoryCache: lru}
	srv, err := server.NewServerWithOpts(
		server.WithDatastore(memory.New()),
		server.WithLogger(zapLogger(log)),
		server.WithCheckQueryCacheEnabled(true),
		server.WithCheckQueryCacheTTL(checkCacheTTL),
		server.WithCheckCacheLimit(checkCacheLimit),
		server.WithCheckCache(cache),
	)
	if err != nil {
		lru.Stop()
		return nil, fmt.Errorf("openfga embedded server: %w", err)
	}
	e := &Engine{srv: srv, cache: cache}
	st, err := srv.CreateStore(ctx, &openfgav1.CreateStoreRequest{Name: "agate"})
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("openfga create store: %w", err)
	}
	e.store = st.GetId()
	wm, err := srv.WriteAuthorizationModel(ctx, &openfgav1.WriteAuthorizationModelRequest{
		StoreId:         e.store,
		TypeDefinitions: m.GetTypeDefinitions(),
		SchemaVersion:   m.GetSchemaVersion(),
		Conditions:      m.GetConditions(),
	})
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("openfga write model: %w", err)
	}
	e.model = wm.GetAuthorizationModelId()
	return e, nil
}

// Check reports whether t.User has t.Relation to t.Object. An object no tuple mentions is
// not an error: the answer is false. A malformed tuple, or a type or relation the model
// does not define, is an EInvalid error; a check the engine cannot finish (its context
// ends, the engine is closed) is an EUnavailable error.
func (e *Engine) Check(ctx context.Context, t agate.Tuple, contextual ...agate.Tuple) (bool, error) {
	if err := validate(t); err != nil {
		return false, err
	}
	var ctxTuples *openfgav1.ContextualTupleKeys
	if len(contextual) > 0 {
		ctxTuples = &openfgav1.ContextualTupleKeys{}
		for _, c := range contextual {
			if err := validate(c); err != nil {
				return false, err
			}
			ctxTuples.TupleKeys = append(ctxTuples.TupleKeys, &openfgav1.TupleKey{User: c.User, Relation: c.Relation, Object: c.Object})
		}
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return false, agate.Errorf(agate.EUnavailable, "authorization service unavailable")
	}
	res, err := e.srv.Check(ctx, &openfgav1.CheckRequest{
		StoreId:              e.store,
		AuthorizationModelId: e.model,
		TupleKey:             &openfgav1.CheckRequestTupleKey{User: t.User, Relation: t.Relation, Object: t.Object},
		ContextualTuples:     ctxTuples,
	})
	if err != nil {
		return false, serverError(fmt.Errorf("openfga check %s#%s@%s: %w", t.Object, t.Relation, t.User, err))
	}
	return res.GetAllowed(), nil
}

// Write stores tuples. A tuple that exists already is not an error. Up to 100 tuples are
// written atomically; a longer list is written 100 at a time, and on error a prefix of it
// may have been written (writing it again is safe). Errors are EInvalid (a malformed
// tuple, or one the model does not allow) or EUnavailable.
func (e *Engine) Write(ctx context.Context, tuples ...agate.Tuple) error {
	return e.change(ctx, tuples, false)
}

// Delete removes tuples. A tuple that does not exist is not an error. Batches and errors
// are as for Write.
func (e *Engine) Delete(ctx context.Context, tuples ...agate.Tuple) error {
	return e.change(ctx, tuples, true)
}

func (e *Engine) change(ctx context.Context, tuples []agate.Tuple, del bool) error {
	chunks, err := batches(tuples)
	if err != nil || len(chunks) == 0 {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return agate.Errorf(agate.EUnavailable, "authorization service unavailable")
	}
	// Bumped even when a write fails: it may have failed after changing something.
	defer e.cache.invalidate()
	for _, chunk := range chunks {
		req := &openfgav1.WriteRequest{StoreId: e.store, AuthorizationModelId: e.model}
		verb := "write"
		if del {
			verb = "delete"
			req.Deletes = &openfgav1.WriteRequestDeletes{OnMissing: "ignore"}
			for _, t := range chunk {
				req.Deletes.TupleKeys = append(req.Deletes.TupleKeys,
					&openfgav1.TupleKeyWithoutCondition{User: t.User, Relation: t.Relation, Object: t.Object})
			}
		} else {
			req.Writes = &openfgav1.WriteRequestWrites{OnDuplicate: "ignore"}
			for _, t := range chunk {
				req.Writes.TupleKeys = append(req.Writes.TupleKeys,
					&openfgav1.TupleKey{User: t.User, Relation: t.Relation, Object: t.Object})
			}
		}
		if _, err := e.srv.Write(ctx, req); err != nil {
			return serverError(fmt.Errorf("openfga %s %d tuples (first %s#%s@%s): %w",
				verb, len(chunk), chunk[0].Object, chunk[0].Relation, chunk[0].User, err))
		}
	}
	return nil
}

// Close stops the server and drops every tuple. Calls after the first do nothing; Check,
// Write and Delete then return EUnavailable errors.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.closed {
		e.closed = true
		e.srv.Close() // stops the check cache too
	}
	return nil
}

// serverError gives err, from the embedded server, its code: EInvalid when OpenFGA
// rejected the request as invalid, EUnavailable otherwise.
func serverError(err error) error {
	if invalidRequest(err) {
		return agate.Wrap(agate.EInvalid, err, "invalid authorization request")
	}
	return agate.Wrap(agate.EUnavailable, err, "authorization service unavailable")
}

// invalidRequest reports whether err carries a gRPC status that OpenFGA uses for requests
// it refuses: InvalidArgument, or one of its validation codes (2000–2999) other than
// "resolution too complex", which is a fault of the model, not of the request.
func invalidRequest(err error) bool {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return false
	}
	c := se.GRPCStatus().Code()
	if c == codes.InvalidArgument {
		return true
	}
	return c >= 2000 && c < 3000 && c != codes.Code(openfgav1.ErrorCode_authorization_model_resolution_too_complex)
}

// epochCache is the engine's check cache: OpenFGA's LRU cache whose entries all become
// invalid at once when invalidate is called. OpenFGA's own invalidation (its cache
// controller) polls the changelog and lags writes by up to its TTL; the engine knows
// exactly when the store changes, and revoking access must take effect at once.
type epochCache struct {
	storage.InMemoryCache[any]
	epoch atomic.Uint64
}

type epochEntry struct {
	epoch uint64
	value any
}

func (c *epochCache) Get(key keys.Key) any {
	e, _ := c.InMemoryCache.Get(key).(*epochEntry)
	if e == nil || e.epoch != c.epoch.Load() {
		return nil
	}
	return e.value
}

func (c *epochCache) Set(key keys.Key, value any, ttl time.Duration) {
	c.InMemoryCache.Set(key, &epochEntry{epoch: c.epoch.Load(), value: value}, ttl)
}

// invalidate makes every entry stored so far invalid; the LRU evicts them in time.
func (c *epochCache) invalidate() { c.epoch.Add(1) }

// Forget deletes every tuple whose object is object (a deleted session's owner, tenant and
// viewers), so that an id used again starts with no relationships.
func (e *Engine) Forget(ctx context.Context, object string) error {
	var tuples []agate.Tuple
	token := ""
	for {
		e.mu.RLock()
		closed := e.closed
		var res *openfgav1.ReadResponse
		var err error
		if !closed {
			res, err = e.srv.Read(ctx, &openfgav1.ReadRequest{StoreId: e.store,
				TupleKey: &openfgav1.ReadRequestTupleKey{Object: object}, ContinuationToken: token})
		}
		e.mu.RUnlock()
		if closed {
			return agate.Errorf(agate.EUnavailable, "authorization service unavailable")
		}
		if err != nil {
			return serverError(fmt.Errorf("openfga read %s: %w", object, err))
		}
		for _, t := range res.GetTuples() {
			k := t.GetKey()
			tuples = append(tuples, agate.Tuple{User: k.GetUser(), Relation: k.GetRelation(), Object: k.GetObject()})
		}
		if token = res.GetContinuationToken(); token == "" {
			break
		}
	}
	return e.Delete(ctx, tuples...)
}
