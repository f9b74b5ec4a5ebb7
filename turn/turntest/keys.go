package turntest

import (
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/turn"
)

// The cases of turn.Keys.

// keyTime is a time every store keeps exactly: UTC, whole microseconds.
func keyTime(i int) time.Time {
	return time.Date(2025, 3, 4, 5, 6, 7, 123_456_000, time.UTC).Add(time.Duration(i) * time.Second)
}

func apiKey(id, tenant string, created time.Time) agate.APIKey {
	return agate.APIKey{
		ID: id, Tenant: tenant, Label: "key " + id, Scopes: []string{"chat"},
		Hash: "pbkdf2-sha256$600000$c2FsdA$" + id, CreatedBy: "alice", CreatedAt: created,
	}
}

func createKey(t *testing.T, s turn.Store, k agate.APIKey) {
	t.Helper()
	if err := s.CreateAPIKey(t.Context(), k); err != nil {
		t.Fatalf("CreateAPIKey(%s): %v", k.ID, err)
	}
}

func getKey(t *testing.T, s turn.Store, id string) agate.APIKey {
	t.Helper()
	k, err := s.APIKey(t.Context(), id)
	if err != nil {
		t.Fatalf("APIKey(%s): %v", id, err)
	}
	return k
}

func keyIDs(t *testing.T, s turn.Store, tenant string) []string {
	t.Helper()
	list, err := s.APIKeys(t.Context(), tenant)
	if err != nil {
		t.Fatalf("APIKeys(%s): %v", tenant, err)
	}
	if list == nil {
		t.Errorf("APIKeys(%s) is nil, want a non-nil slice", tenant)
	}
	ids := []string{}
	for _, k := range list {
		ids = append(ids, k.ID)
	}
	return ids
}

func testAPIKeyRoundTrip(t *testing.T, s turn.Store) {
	admin := agate.APIKey{
		ID: "k0admin000000001", Tenant: acme, Label: "CI deploys — ünïcode, \"quotes\"",
		Scopes: []string{agate.ScopeAdmin, "chat", "tools:read"},
		Hash:   "pbkdf2-sha256$600000$c2FsdA$a2V5", CreatedBy: "alice@acme.example", CreatedAt: keyTime(0),
	}
	bare := agate.APIKey{ID: "k0bare0000000002", Tenant: acme, Hash: "h", CreatedAt: keyTime(1)} // no label, no scopes
	createKey(t, s, admin)
	createKey(t, s, bare)

	got := getKey(t, s, admin.ID)
	diff(t, "key", admin, got)
	if got.LastUsedAt != nil || got.RevokedAt != nil {
		t.Errorf("new key: LastUsedAt %v, RevokedAt %v; want both nil", got.LastUsedAt, got.RevokedAt)
	}
	gotBare := getKey(t, s, bare.ID)
	diff(t, "key without label or scopes", bare, gotBare)
	if gotBare.Scopes == nil {
		t.Error("Scopes of a key without any is nil, want an empty slice")
	}
	list, err := s.APIKeys(t.Context(), acme)
	if err != nil {
		t.Fatal(err)
	}
	diff(t, "listed keys", []agate.APIKey{bare, admin}, list)
	for _, k := range list {
		if k.Scopes == nil {
			t.Errorf("listed key %s has nil Scopes, want an empty slice", k.ID)
		}
	}

	_, err = s.APIKey(t.Context(), "k0missing0000003")
	wantCode(t, "APIKey of an unknown id", err, agate.ENotFound)
}

func testAPIKeyDuplicateID(t *testing.T, s turn.Store) {
	first := apiKey("k1dup00000000001", acme, keyTime(0))
	createKey(t, s, first)
	again := apiKey(first.ID, globex, keyTime(1))
	again.Hash, again.Scopes = "another hash", []string{agate.ScopeAdmin}
	wantCode(t, "CreateAPIKey with an id that exists", s.CreateAPIKey(t.Context(), again), agate.EInvalid)
	diff(t, "key after a refused duplicate", first, getKey(t, s, first.ID))
	diff(t, "globex keys", []string{}, keyIDs(t, s, globex))
}

func testAPIKeyListing(t *testing.T, s turn.Store) {
	// Created out of order: the listing is by CreatedAt, not by insertion or id.
	createKey(t, s, apiKey("k2b0000000000000", acme, keyTime(2)))
	createKey(t, s, apiKey("k2c0000000000000", acme, keyTime(1)))
	createKey(t, s, apiKey("k2g0000000000000", globex, keyTime(5)))
	createKey(t, s, apiKey("k2a0000000000000", acme, keyTime(3)))
	if _, err := s.RevokeAPIKey(t.Context(), acme, "k2b0000000000000", keyTime(4)); err != nil {
		t.Fatal(err)
	}

	diff(t, "acme keys, newest first, revoked included",
		[]string{"k2a0000000000000", "k2b0000000000000", "k2c0000000000000"}, keyIDs(t, s, acme))
	diff(t, "globex keys", []string{"k2g0000000000000"}, keyIDs(t, s, globex))
	diff(t, "keys of a tenant without any", []string{}, keyIDs(t, s, "initech"))
}

func testRevokeAPIKey(t *testing.T, s turn.Store) {
	k := apiKey("k3revoke00000001", acme, keyTime(0))
	createKey(t, s, k)

	_, err := s.RevokeAPIKey(t.Context(), globex, k.ID, keyTime(1))
	wantCode(t, "RevokeAPIKey of another tenant's key", err, agate.ENotFound)
	if got := getKey(t, s, k.ID); got.RevokedAt != nil {
		t.Errorf("another tenant revoked the key: RevokedAt %v", got.RevokedAt)
	}
	_, err = s.RevokeAPIKey(t.Context(), acme, "k3missing0000002", keyTime(1))
	wantCode(t, "RevokeAPIKey of an unknown id", err, agate.ENotFound)

	first := keyTime(2)
	got, err := s.RevokeAPIKey(t.Context(), acme, k.ID, first)
	if err != nil {
		t.Fatalf("RevokeAPIKey: %v", err)
	}
	want := k
	want.RevokedAt = &first
	diff(t, "revoked key", want, got)

	again, err := s.RevokeAPIKey(t.Context(), acme, k.ID, keyTime(3))
	if err != nil {
		t.Fatalf("RevokeAPIKey again: %v", err)
	}
	diff(t, "key revoked twice", want, again)
	diff(t, "stored key revoked twice", want, getKey(t, s, k.ID))
}

func testTouchAPIKey(t *testing.T, s turn.Store) {
	k := apiKey("k4touch000000001", acme, keyTime(0))
	other := apiKey("k4other000000002", acme, keyTime(0))
	createKey(t, s, k)
	createKey(t, s, other)
	touch := func(at time.Time, want time.Time) {
		t.Helper()
		if err := s.TouchAPIKey(t.Context(), k.ID, at); err != nil {
			t.Fatalf("TouchAPIKey(%v): %v", at, err)
		}
		got := getKey(t, s, k.ID).LastUsedAt
		if got == nil || !got.Equal(want) {
			t.Errorf("after TouchAPIKey(%v): LastUsedAt %v, want %v", at, got, want)
		}
	}
	touch(keyTime(5), keyTime(5))
	touch(keyTime(3), keyTime(5)) // a late, earlier use does not move it back
	touch(keyTime(5), keyTime(5))
	touch(keyTime(7), keyTime(7))
	if got := getKey(t, s, other.ID); got.LastUsedAt != nil {
		t.Errorf("another key was touched: LastUsedAt %v", got.LastUsedAt)
	}
	want := k
	last := keyTime(7)
	want.LastUsedAt = &last
	diff(t, "touched key", want, getKey(t, s, k.ID))
}
