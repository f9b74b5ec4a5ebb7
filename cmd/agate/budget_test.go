package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// TestBudgetHoldsUnderConcurrentTurnsOnTwoReplicas sends 200 turns at once, spread over
// two gateways sharing PostgreSQL, against a daily token budget that allows about 40 of
// them: the tokens spent never pass the budget, counted in Redis or, without Redis, in the
// store; the turns that do not fit end with metadata.code budget_exceeded.
func TestBudgetHoldsUnderConcurrentTurnsOnTwoReplicas(t *testing.T) {
	for _, counter := range []string{"redis", "store"} {
		t.Run(counter, func(t *testing.T) {
			dsn := freshPostgres(t)
			const budget, turns = 500, 200
			tenant := "budget-" + uuid.NewString()[:8]
			conf := filepath.Join(t.TempDir(), "tenants.yaml")
			if err := os.WriteFile(conf, fmt.Appendf(nil, "tenants:\n  %s:\n    budgets: {tokens_per_day: %d}\n", tenant, budget), 0o600); err != nil {
				t.Fatal(err)
			}
			env := withUpstream(newUpstream(t), map[string]string{
				"POSTGRES_DSN": dsn, "TENANT_CONFIG_PATH": conf, "AGATE_DEFAULT_TENANT": tenant,
				"LLM_MAX_TOKENS": "8", "AGATE_WORKERS": "16",
			})
			if counter == "redis" {
				url := os.Getenv("AGATE_TEST_REDIS")
				if url == "" {
					if os.Getenv("CI") == "true" {
						t.Fatal("AGATE_TEST_REDIS is not set")
					}
					t.Skip("set AGATE_TEST_REDIS to run against a real Redis")
				}
				env["REDIS_URL"] = url
			}
			replicas := []*testGateway{start(t, env), start(t, env)}

			var wg sync.WaitGroup
			for i := range turns {
				wg.Go(func() {
					g := replicas[i%2]
					res := do(t, "POST", g.URL+"/v1/session/message", `{"message":"go"}`, nil)
					if res.status != 200 {
						t.Errorf("message %d: %d %s", i, res.status, res.body)
					}
				})
			}
			wg.Wait()

			conn, err := pgx.Connect(context.Background(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			var finals []agate.Event
			deadline := time.Now().Add(60 * time.Second)
			for len(finals) < turns {
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d turns ended within a minute", len(finals), turns)
				}
				time.Sleep(50 * time.Millisecond)
				rows, err := conn.Query(context.Background(), `SELECT payload FROM session_events WHERE type = $1`, agate.TypeFinal)
				if err != nil {
					t.Fatal(err)
				}
				finals = finals[:0]
				for rows.Next() {
					var raw []byte
					var ev agate.Event
					if err := rows.Scan(&raw); err != nil || json.Unmarshal(raw, &ev) != nil {
						t.Fatalf("read a final: %v", err)
					}
					finals = append(finals, ev)
				}
				rows.Close()
			}
			ok, refused, spent := 0, 0, int64(0)
			for _, ev := range finals {
				switch {
				case ev.Metadata["status"] == agate.StatusOK:
					ok++
					usage, _ := ev.Metadata["usage"].(map[string]any)
					total, _ := usage["total_tokens"].(float64)
					spent += int64(total)
				case ev.Metadata["code"] == string(agate.EBudgetExceeded):
					refused++
				default:
					t.Errorf("a turn ended with %v: %s", ev.Metadata, ev.Message)
				}
			}
			var ledger int64
			if err := conn.QueryRow(context.Background(),
				`SELECT coalesce(sum(spent), 0) FROM usage_ledger WHERE tenant = $1`, tenant).Scan(&ledger); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d turns answered (%d tokens), %d refused; ledger says %d spent", counter, ok, spent, refused, ledger)
			if spent > budget || ledger > budget {
				t.Errorf("spent %d tokens (ledger %d), over the budget of %d", spent, ledger, budget)
			}
			if ledger != spent {
				t.Errorf("the ledger records %d tokens, the answers used %d", ledger, spent)
			}
			if ok == 0 || refused == 0 {
				t.Errorf("%d answered, %d refused: the budget should let some through and stop the rest", ok, refused)
			}

			// A synchronous call over what is left: 429 until the budget resets.
			res := do(t, "POST", replicas[0].URL+"/v1/chat/completions",
				`{"model":"default","max_tokens":20,"messages":[{"role":"user","content":"one more"}]}`, nil)
			if res.status != 429 || !contains(res.body, `"budget_exceeded"`) || res.header.Get("Retry-After") == "" {
				t.Errorf("chat completion over the budget: %d %s (Retry-After %q), want 429 budget_exceeded with Retry-After",
					res.status, res.body, res.header.Get("Retry-After"))
			}
		})
	}
}

// TestTokensPerMinuteLimitsModelCalls: a tenant's tokens_per_minute refuses calls whose
// worst case does not fit in what is left of the minute, with 429 rate_limited.
func TestTokensPerMinuteLimitsModelCalls(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "tenants.yaml")
	if err := os.WriteFile(conf, []byte("defaults:\n  rate_limits: {tokens_per_minute: 100}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := start(t, withUpstream(newUpstream(t), map[string]string{"TENANT_CONFIG_PATH": conf}))
	body := `{"model":"default","max_tokens":30,"messages":[{"role":"user","content":"hi"}]}`
	codes := map[int]int{}
	var limited response
	for i := 0; i < 20 && codes[429] == 0; i++ { // 20: a minute may turn meanwhile
		res := do(t, "POST", g.URL+"/v1/chat/completions", body, nil)
		codes[res.status]++
		if res.status == 429 {
			limited = res
		}
	}
	// Each call reserves 31 tokens and uses 13 (the fake provider's count): after 6 calls
	// (78 spent) the next worst case does not fit in the minute's 100.
	if codes[200] == 0 || codes[429] == 0 {
		t.Fatalf("statuses %v: want some answered, then 429", codes)
	}
	if !contains(limited.body, `"rate_limited"`) || limited.header.Get("Retry-After") == "" {
		t.Errorf("over the rate: %s (Retry-After %q)", limited.body, limited.header.Get("Retry-After"))
	}
}
