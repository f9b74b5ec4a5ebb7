package openfga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	fgasdk "github.com/openfga/go-sdk"
	"github.com/openfga/go-sdk/client"
	"github.com/openfga/go-sdk/credentials"
	"github.com/openfga/language/pkg/go/transformer"

	"github.com/agate-gw/agate"
)

// RemoteConfig says which OpenFGA server, store and model to use.
type RemoteConfig struct {
	APIURL  string // e.g. http://127.0.0.1:8080 (OPENFGA_API_URL); required
	StoreID string // OPENFGA_STORE_ID; empty: create one (needs Create)
	// ModelID is the authorization model to check against (OPENFGA_MODEL_ID). Empty: the
	// store's latest model, read once by NewRemote; when the store has none and Create is
	// set, the model of conf/authz.fga is written.
	ModelID  string
	APIToken string // sent as a Bearer token when set
	// Create lets NewRemote create a store named "agate" and write the model of
	// conf/authz.fga when StoreID is empty (or write the model into a store that has none).
	// The new IDs are logged and returned by StoreID and ModelID: configure them for the
	// next start.
	Create     bool
	HTTPClient *http.Client  // nil: a client of its own
	Timeout    time.Duration // for each call; 0 means 2s
}

// Remote talks to an OpenFGA server through the official go-sdk. Its methods may be called
// concurrently.
type Remote struct {
	fga          *client.OpenFgaClient
	store, model string
	timeout      time.Duration
	own          *http.Client // the HTTP client NewRemote made, if it made one
}

// NewRemote connects to the OpenFGA server of cfg and settles the store and model (see
// RemoteConfig). It returns an EUnavailable error if the server cannot be reached.
func NewRemote(ctx context.Context, cfg RemoteConfig, log *slog.Logger) (*Remote, error) {
	if cfg.APIURL == "" {
		return nil, errors.New("openfga: APIURL is required")
	}
	if cfg.StoreID == "" && !cfg.Create {
		return nil, errors.New("openfga: StoreID is required unless Create is set")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Remote{timeout: cfg.Timeout}
	if r.timeout <= 0 {
		r.timeout = 2 * time.Second
	}
	cc := &client.ClientConfiguration{
		ApiUrl:               cfg.APIURL,
		StoreId:              cfg.StoreID,
		AuthorizationModelId: cfg.ModelID,
		HTTPClient:           cfg.HTTPClient,
		// One retry, soon: a check waits for at most Timeout, and an outage must show
		// quickly so that Cached can answer.
		RetryParams: &fgasdk.RetryParams{MaxRetry: 1, MinWaitInMs: 50},
	}
	if cc.HTTPClient == nil {
		r.own = &http.Client{}
		cc.HTTPClient = r.own
	}
	if cfg.APIToken != "" {
		cc.Credentials = &credentials.Credentials{
			Method: credentials.CredentialsMethodApiToken,
			Config: &credentials.Config{ApiToken: cfg.APIToken},
		}
	}
	fga, err := client.NewSdkClient(cc)
	if err != nil {
		return nil, fmt.Errorf("openfga client: %w", err)
	}
	r.fga = fga

	if cfg.StoreID == "" {
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		st, err := fga.CreateStore(cctx).Body(client.ClientCreateStoreRequest{Name: "agate"}).Execute()
		cancel()
		if err != nil {
			return nil, sdkError(fmt.Errorf("openfga create store: %w", err))
		}
		if err := fga.SetStoreId(st.GetId()); err != nil {
			return nil, fmt.Errorf("openfga store id %q: %w", st.GetId(), err)
		}
		log.Info("openfga store created", "store_id", st.GetId())
	}
	r.store, _ = fga.GetStoreId()

	if cfg.ModelID == "" {
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		latest, err := fga.ReadLatestAuthorizationModel(cctx).Execute()
		cancel()
		if err != nil {
			return nil, sdkError(fmt.Errorf("openfga read latest model of store %s: %w", r.store, err))
		}
		id := ""
		if m, ok := latest.GetAuthorizationModelOk(); ok && m != nil {
			id = m.GetId()
		}
		if id == "" {
			if !cfg.Create {
				return nil, fmt.Errorf("openfga store %s has no authorization model (set Create to write conf/authz.fga)", r.store)
			}
			if id, err = r.writeModel(ctx); err != nil {
				return nil, err
			}
			log.Info("openfga model written", "store_id", r.store, "model_id", id)
		}
		if err := fga.SetAuthorizationModelId(id); err != nil {
			return nil, fmt.Errorf("openfga model id %q: %w", id, err)
		}
	}
	r.model, _ = fga.GetAuthorizationModelId()
	return r, nil
}

// writeModel writes the model of conf/authz.fga into the store and returns its id.
func (r *Remote) writeModel(ctx context.Context) (string, error) {
	js, err := transformer.TransformDSLToJSON(modelDSL)
	if err != nil {
		return "", fmt.Errorf("openfga model conf/authz.fga: %w", err)
	}
	var body client.ClientWriteAuthorizationModelRequest
	if err := json.Unmarshal([]byte(js), &body); err != nil {
		return "", fmt.Errorf("openfga model conf/authz.fga: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	res, err := r.fga.WriteAuthorizationModel(ctx).Body(body).Execute()
	if err != nil {
		return "", sdkError(fmt.Errorf("openfga write model: %w", err))
	}
	return res.GetAuthorizationModelId(), nil
}

// StoreID returns the id of the store in use.
func (r *Remote) StoreID() string { return r.store }

// ModelID returns the id of the authorization model in use.
func (r *Remote) ModelID() string { return r.model }

// Check reports whether t.User has t.Relation to t.Object. An object no tuple mentions is
// not an error: the answer is false. A tuple the server refuses as invalid (a type or
// relation the model does not define) is an EInvalid error; any other failure (the server
// is down, slow, overloaded or refuses the token) is an EUnavailable error.
func (r *Remote) Check(ctx context.Context, t agate.Tuple, contextual ...agate.Tuple) (bool, error) {
	if err := validate(t); err != nil {
		return false, err
	}
	var ctxTuples []client.ClientContextualTupleKey
	for _, c := range contextual {
		if err := validate(c); err != nil {
			return false, err
		}
		ctxTuples = append(ctxTuples, client.ClientContextualTupleKey{User: c.User, Relation: c.Relation, Object: c.Object})
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	res, err := r.fga.Check(ctx).Body(client.ClientCheckRequest{User: t.User, Relation: t.Relation, Object: t.Object, ContextualTuples: ctxTuples}).Execute()
	if err != nil {
		return false, sdkError(fmt.Errorf("openfga check %s#%s@%s: %w", t.Object, t.Relation, t.User, err))
	}
	return res.GetAllowed(), nil
}

// Write stores tuples. A tuple that exists already is not an error. Up to 100 tuples are
// written atomically; a longer list is written 100 at a time, and on error a prefix of it
// may have been written (writing it again is safe). Errors are as for Check.
func (r *Remote) Write(ctx context.Context, tuples ...agate.Tuple) error {
	return r.change(ctx, tuples, false)
}

// Delete removes tuples. A tuple that does not exist is not an error. Batches and errors
// are as for Write.
func (r *Remote) Delete(ctx context.Context, tuples ...agate.Tuple) error {
	return r.change(ctx, tuples, true)
}

func (r *Remote) change(ctx context.Context, tuples []agate.Tuple, del bool) error {
	chunks, err := batches(tuples)
	if err != nil {
		return err
	}
	opts := client.ClientWriteOptions{Conflict: client.ClientWriteConflictOptions{
		OnDuplicateWrites: client.CLIENT_WRITE_REQUEST_ON_DUPLICATE_WRITES_IGNORE,
		OnMissingDeletes:  client.CLIENT_WRITE_REQUEST_ON_MISSING_DELETES_IGNORE,
	}}
	for _, chunk := range chunks {
		var body client.ClientWriteRequest
		verb := "write"
		if del {
			verb = "delete"
			for _, t := range chunk {
				body.Deletes = append(body.Deletes, client.ClientTupleKeyWithoutCondition{User: t.User, Relation: t.Relation, Object: t.Object})
			}
		} else {
			for _, t := range chunk {
				body.Writes = append(body.Writes, client.ClientTupleKey{User: t.User, Relation: t.Relation, Object: t.Object})
			}
		}
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		_, err := r.fga.Write(cctx).Body(body).Options(opts).Execute()
		cancel()
		if err != nil {
			return sdkError(fmt.Errorf("openfga %s %d tuples (first %s#%s@%s): %w",
				verb, len(chunk), chunk[0].Object, chunk[0].Relation, chunk[0].User, err))
		}
	}
	return nil
}

// Close closes the idle connections of the HTTP client NewRemote made (not those of
// RemoteConfig.HTTPClient). It does not touch the server or its tuples.
func (r *Remote) Close() error {
	if r.own != nil {
		r.own.CloseIdleConnections()
	}
	return nil
}

// sdkError gives err, from the go-sdk, its code: EInvalid when the server refused the
// request as invalid (HTTP 400), EUnavailable for everything else.
func sdkError(err error) error {
	var invalid fgasdk.FgaApiValidationError
	if errors.As(err, &invalid) {
		return agate.Wrap(agate.EInvalid, err, "invalid authorization request")
	}
	return agate.Wrap(agate.EUnavailable, err, "authorization service unavailable")
}

// Forget deletes every tuple whose object is object (a deleted session's owner, tenant and
// viewers), so that an id used again starts with no relationships.
func (r *Remote) Forget(ctx context.Context, object string) error {
	var tuples []agate.Tuple
	token := ""
	for {
		opts := client.ClientReadOptions{}
		if token != "" {
			opts.ContinuationToken = &token
		}
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		res, err := r.fga.Read(cctx).Body(client.ClientReadRequest{Object: &object}).Options(opts).Execute()
		cancel()
		if err != nil {
			return sdkError(fmt.Errorf("openfga read %s: %w", object, err))
		}
		for _, t := range res.GetTuples() {
			k := t.GetKey()
			tuples = append(tuples, agate.Tuple{User: k.GetUser(), Relation: k.GetRelation(), Object: k.GetObject()})
		}
		if token = res.GetContinuationToken(); token == "" {
			break
		}
	}
	return r.Delete(ctx, tuples...)
}
