package main

import (
	"fmt"

	"github.com/agate-gw/agate/llm/router"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// config is every setting of the gateway. Each field names its environment variable, its
// default and its help text; `agate --help` prints this table, and nothing else in the
// program reads the environment.
type config struct {
	Addr          string        `env:"AGATE_ADDR" default:"127.0.0.1:8080" help:"address the HTTP API listens on"`
	DataDir       string        `env:"AGATE_DATA_DIR" default:"./data" help:"directory of the embedded SQLite store"`
	SQLiteRelax   bool          `env:"AGATE_SQLITE_RELAXED" default:"false" help:"skip fsync per commit: faster, but a machine crash can lose acknowledged messages"`
	Profile       string        `env:"AGATE_PROFILE" default:"dev" help:"dev (demo model when no provider is set) or prod"`
	LogLevel      string        `env:"LOG_LEVEL" default:"info" help:"debug, info, warn or error"`
	LogFormat     string        `env:"LOG_FORMAT" default:"json" help:"json or text"`
	RequireAuth   bool          `env:"GATEWAY_REQUIRE_AUTH" default:"false" help:"require credentials: a JWT or an API key (false: requests without credentials are the anonymous caller of AGATE_DEFAULT_TENANT; credentials that are sent are still verified)"`
	JWTSecret     string        `env:"GATEWAY_JWT_SECRET" secret:"true" help:"HMAC secret of HS256/384/512 tokens"`
	JWTPublicKey  string        `env:"GATEWAY_JWT_PUBLIC_KEY" help:"PEM public key (or certificate) of RS*/PS*/ES* tokens"`
	JWKSURL       string        `env:"GATEWAY_JWKS_URL" help:"JWKS of the token issuer, cached and refreshed when a token names an unknown key"`
	JWTIssuer     string        `env:"GATEWAY_JWT_ISSUER" help:"required iss claim"`
	JWTAudience   string        `env:"GATEWAY_JWT_AUDIENCE" help:"required aud claim"`
	JWTAlgs       string        `env:"GATEWAY_JWT_ALGORITHMS" help:"allowed algorithms, comma-separated (default: those of the configured key)"`
	JWTLeeway     time.Duration `env:"GATEWAY_JWT_LEEWAY" default:"30s" help:"clock skew allowed when checking exp and nbf"`
	Tenant        string        `env:"AGATE_DEFAULT_TENANT" default:"public" help:"tenant of anonymous callers"`
	KeyRPM        int           `env:"AGATE_KEY_RPM" default:"0" help:"requests per minute per API key on the routes that create work; 0: unlimited"`
	TenantConfig  string        `env:"TENANT_CONFIG_PATH" help:"tenants.yaml: per-tenant system prompt, token budgets, rate limits, model routing (reloaded when it changes)"`
	OpenFGAURL    string        `env:"OPENFGA_API_URL" help:"OpenFGA server for relationship checks (default: OpenFGA's engine in process, memory datastore)"`
	OpenFGAStore  string        `env:"OPENFGA_STORE_ID" help:"OpenFGA store id (with OPENFGA_CREATE=true and none given: created)"`
	OpenFGAModel  string        `env:"OPENFGA_MODEL_ID" help:"OpenFGA authorization model id (default: the store's latest)"`
	OpenFGAToken  string        `env:"OPENFGA_API_TOKEN" secret:"true" help:"OpenFGA API token"`
	OpenFGANew    bool          `env:"OPENFGA_CREATE" default:"false" help:"create the OpenFGA store and write conf/authz.fga when OPENFGA_STORE_ID is empty"`
	OpenFGAStale  int           `env:"OPENFGA_STALE_SECONDS" default:"30" help:"while OpenFGA is unreachable, allow decisions seen this recently are reused; then 503"`
	OPAURL        string        `env:"OPA_URL" help:"OPA server for policy decisions (default: OPA's engine in process with AGATE_POLICY_DIR)"`
	ToolsDir      string        `env:"AGATE_TOOLS_DIR" help:"directory of the tool catalogue, one JSON file per tool (default: the catalogue built into agate)"`
	FetchAllow    string        `env:"AGATE_FETCH_ALLOW" help:"hosts the http_fetch tool may GET, comma-separated: example.com, example.com:8443, *.example.com (default: none)"`
	TurnTools     string        `env:"AGATE_TURN_TOOLS" help:"tools offered to the model in turns, comma-separated, or * for the whole catalogue (default: none)"`
	ToolRounds    int           `env:"AGATE_TOOL_ROUNDS" default:"8" help:"model calls with tools per turn before the model must answer without them"`
	PolicyDir     string        `env:"AGATE_POLICY_DIR" help:"directory of the Rego policies (package agate), reloaded when they change (default: the policies built into agate)"`
	LLMBaseURL    string        `env:"LLM_BASE_URL" help:"OpenAI-compatible API base URL, e.g. https://api.openai.com/v1"`
	LLMAPIKey     string        `env:"LLM_API_KEY" secret:"true" help:"API key for LLM_BASE_URL"`
	LLMModel      string        `env:"LLM_MODEL" help:"model name sent to the provider"`
	LLMTimeout    time.Duration `env:"LLM_TIMEOUT" default:"2m" help:"longest one provider call may take"`
	TurnTimeout   time.Duration `env:"AGATE_TURN_TIMEOUT" default:"5m" help:"longest a turn's model call may take, retries and fallbacks included"`
	LLMIdle       time.Duration `env:"LLM_IDLE_TIMEOUT" default:"60s" help:"longest wait for a provider's first byte, and longest silence inside a streamed reply"`
	AnthropicKey  string        `env:"ANTHROPIC_API_KEY" secret:"true" help:"Anthropic API key: enables provider \"anthropic\""`
	AnthropicURL  string        `env:"ANTHROPIC_BASE_URL" help:"Anthropic API base URL (default https://api.anthropic.com)"`
	AnthropicMod  string        `env:"ANTHROPIC_MODEL" default:"claude-sonnet-4-5" help:"Anthropic model of the default route when it is the only provider"`
	Routes        string        `env:"LLM_ROUTES" help:"model aliases with fallback chains: default=openai/gpt-4.1,anthropic/claude-sonnet-4-5;fast=openai/gpt-4.1-mini (default: the first configured provider's model)"`
	Retries       int           `env:"LLM_RETRIES" default:"2" help:"extra attempts on a provider before falling back, while nothing reached the client"`
	BreakerFails  int           `env:"LLM_BREAKER_FAILURES" default:"5" help:"consecutive failures that open a provider model's circuit breaker"`
	BreakerOpen   time.Duration `env:"LLM_BREAKER_OPEN" default:"30s" help:"how long an open breaker skips its provider model before probing"`
	LLMMaxTokens  int           `env:"LLM_MAX_TOKENS" default:"0" help:"reply token limit; 0 for the provider's default"`
	SystemPrompt  string        `env:"AGATE_SYSTEM_PROMPT" default:"You are a helpful assistant." help:"default system prompt of every tenant"`
	Context       int           `env:"AGATE_CONTEXT_TOKENS" default:"8000" help:"token budget of the prompt (system prompt and history)"`
	History       int           `env:"AGATE_HISTORY_MESSAGES" default:"50" help:"most messages of history read for the prompt"`
	Workers       int           `env:"AGATE_WORKERS" default:"8" help:"turns run at once"`
	MaxQueued     int           `env:"AGATE_MAX_QUEUED" default:"1000" help:"turns waiting or running before new messages get 429"`
	MaxMessage    int           `env:"AGATE_MAX_MESSAGE_BYTES" default:"65536" help:"largest user message"`
	MaxBody       int64         `env:"AGATE_MAX_BODY_BYTES" default:"262144" help:"largest request body"`
	Grace         time.Duration `env:"AGATE_SHUTDOWN_GRACE" default:"10s" help:"how long running turns may finish on shutdown"`
	PostgresDSN   string        `env:"POSTGRES_DSN" secret:"true" help:"PostgreSQL store, e.g. postgres://agate:secret@db:5432/agate?sslmode=require (default: the embedded SQLite store in AGATE_DATA_DIR)"`
	PostgresMax   int           `env:"POSTGRES_MAX_CONNS" default:"16" help:"most connections to PostgreSQL per replica"`
	PostgresStmt  time.Duration `env:"POSTGRES_STATEMENT_TIMEOUT" default:"5s" help:"longest one PostgreSQL statement may run, lock waits included, before the request fails with 503"`
	RedisURL      string        `env:"REDIS_URL" secret:"true" help:"Redis for limits shared by replicas, e.g. redis://127.0.0.1:6379/0 (default: in-process limits)"`
	Replicas      int           `env:"AGATE_REPLICAS" default:"1" help:"gateway replicas: while Redis is down each enforces 1/N of a limit"`
	TenantRPM     int           `env:"AGATE_TENANT_RPM" default:"0" help:"messages and chat completions per minute per tenant; 0: unlimited"`
	ReplicaID     string        `env:"AGATE_REPLICA_ID" help:"this replica's name on the event bus (default: host name and a random suffix)"`
	Kafka         string        `env:"KAFKA_BOOTSTRAP_SERVERS" help:"Kafka brokers, host:port,…: turns are spread over the replicas and events fanned out to all of them (default: one process runs its own turns)"`
	KafkaPrefix   string        `env:"KAFKA_TOPIC_PREFIX" help:"prefix of every Kafka topic name"`
	ExecutorGroup string        `env:"KAFKA_EXECUTOR_GROUP" default:"agate-executors" help:"consumer group of agate executor processes sharing tool.requests"`
	KafkaGroup    string        `env:"KAFKA_GROUP" default:"agate" help:"consumer group of the replicas that share the turns of conversation.inbound"`
	KafkaParts    int           `env:"KAFKA_PARTITIONS" default:"12" help:"partitions of the topics the gateway creates when they are missing (at least the most replicas you will run)"`
	KafkaSASL     string        `env:"KAFKA_SASL_MECHANISM" help:"plain, scram-sha-256 or scram-sha-512 (default: no SASL)"`
	KafkaUser     string        `env:"KAFKA_SASL_USERNAME" help:"SASL user"`
	KafkaPass     string        `env:"KAFKA_SASL_PASSWORD" secret:"true" help:"SASL password"`
	KafkaTLS      bool          `env:"KAFKA_TLS" default:"false" help:"connect to the brokers with TLS"`
	KafkaSession  time.Duration `env:"KAFKA_SESSION_TIMEOUT" default:"45s" help:"how long a replica or executor may go silent (killed) before the others take its partitions"`
	KafkaTimeout  time.Duration `env:"KAFKA_TIMEOUT" default:"10s" help:"longest one publish to Kafka may take before it counts as failed and is retried"`
}

// load fills a config from getenv, with defaults for what is unset.
func load(getenv func(string) string) (config, error) {
	var c config
	v := reflect.ValueOf(&c).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		raw := getenv(f.Tag.Get("env"))
		if raw == "" {
			raw = f.Tag.Get("default")
		}
		if raw == "" {
			continue
		}
		if err := set(v.Field(i), raw); err != nil {
			return c, fmt.Errorf("%s=%q: %v", f.Tag.Get("env"), raw, err)
		}
	}
	return c, c.validate()
}

func set(f reflect.Value, raw string) error {
	switch f.Interface().(type) {
	case string:
		f.SetString(raw)
	case bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return fmt.Errorf("want true or false")
		}
		f.SetBool(b)
	case time.Duration:
		d, err := time.ParseDuration(raw)
		if err != nil || d < 0 {
			return fmt.Errorf("want a duration such as 30s or 2m")
		}
		f.SetInt(int64(d))
	case int, int64:
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("want a whole number >= 0")
		}
		f.SetInt(n)
	default:
		return fmt.Errorf("unsupported setting type %s", f.Type())
	}
	return nil
}

func (c config) validate() error {
	var level slog.Level
	switch {
	case level.UnmarshalText([]byte(c.LogLevel)) != nil:
		return fmt.Errorf("LOG_LEVEL=%q: want debug, info, warn or error", c.LogLevel)
	case c.MaxBody < int64(c.MaxMessage)+1024:
		return fmt.Errorf("AGATE_MAX_BODY_BYTES=%d: must exceed AGATE_MAX_MESSAGE_BYTES=%d by at least 1024 so a message at the limit fits", c.MaxBody, c.MaxMessage)
	case c.Profile != "dev" && c.Profile != "prod":
		return fmt.Errorf("AGATE_PROFILE=%q: want dev or prod", c.Profile)
	case c.LogFormat != "json" && c.LogFormat != "text":
		return fmt.Errorf("LOG_FORMAT=%q: want json or text", c.LogFormat)
	case slices.ContainsFunc(strings.Split(c.JWTAlgs, ","), func(a string) bool { return strings.EqualFold(strings.TrimSpace(a), "none") }):
		return fmt.Errorf("GATEWAY_JWT_ALGORITHMS=%q: \"none\" is never allowed", c.JWTAlgs)
	case c.JWKSURL != "" && !strings.HasPrefix(c.JWKSURL, "https://") && !strings.HasPrefix(c.JWKSURL, "http://"):
		return fmt.Errorf("GATEWAY_JWKS_URL=%q: want an http:// or https:// URL", c.JWKSURL)
	case c.OpenFGAURL != "" && c.OpenFGAStore == "" && !c.OpenFGANew:
		return fmt.Errorf("OPENFGA_API_URL is set without OPENFGA_STORE_ID: name the store, or set OPENFGA_CREATE=true to create one")
	case c.LLMBaseURL != "" && !strings.HasPrefix(c.LLMBaseURL, "http://") && !strings.HasPrefix(c.LLMBaseURL, "https://"):
		return fmt.Errorf("LLM_BASE_URL=%q: want an http:// or https:// URL", c.LLMBaseURL)
	}
	switch strings.ToLower(c.KafkaSASL) {
	case "", "plain", "scram-sha-256", "scram-sha-512":
	default:
		return fmt.Errorf("KAFKA_SASL_MECHANISM=%q: want plain, scram-sha-256 or scram-sha-512", c.KafkaSASL)
	}
	if c.Kafka != "" && c.KafkaParts < 1 {
		return fmt.Errorf("KAFKA_PARTITIONS=%d: want at least 1", c.KafkaParts)
	}
	if _, err := parseRoutes(c.Routes); err != nil {
		return fmt.Errorf("LLM_ROUTES=%q: %v", c.Routes, err)
	}
	return nil
}

// parseRoutes reads "alias=provider/model,provider/model;alias=…" into chains.
func parseRoutes(s string) (map[string][]router.Target, error) {
	routes := map[string][]router.Target{}
	for _, def := range strings.Split(s, ";") {
		if strings.TrimSpace(def) == "" {
			continue
		}
		alias, chain, ok := strings.Cut(def, "=")
		alias = strings.TrimSpace(alias)
		if !ok || alias == "" {
			return nil, fmt.Errorf("%q: want alias=provider/model,…", def)
		}
		for _, t := range strings.Split(chain, ",") {
			target, err := router.ParseTarget(t)
			if err != nil {
				return nil, err
			}
			routes[alias] = append(routes[alias], target)
		}
	}
	return routes, nil
}

// usage prints the command line and every setting.
func usage(w io.Writer) {
	fmt.Fprint(w, `Usage: agate [serve|executor|migrate|version]

  serve    run the gateway (the default)
  executor run tools for gateways: consume tool.requests, publish tool.results
  migrate  create or upgrade the store's schema, then exit
  version  print the version

Settings, from the environment:

`)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	t := reflect.TypeOf(config{})
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		def := f.Tag.Get("default")
		if def != "" {
			def = " (default " + strconv.Quote(def) + ")"
		}
		fmt.Fprintf(tw, "  %s\t%s%s\n", f.Tag.Get("env"), f.Tag.Get("help"), def)
	}
	tw.Flush()
}
