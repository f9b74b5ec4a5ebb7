package main

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// health returns the state /v1/health gives a component.
func (g *testGateway) health(t *testing.T, component string) string {
	t.Helper()
	var h struct {
		Components map[string]string `json:"components"`
	}
	do(t, "GET", g.URL+"/v1/health", "", nil).json(t, &h)
	return h.Components[component]
}

func eventually(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTurnsGoThroughKafka runs one replica on PostgreSQL with Kafka (kfake on a loopback
// port): turns go out through the outbox and come back from the consumer group;
// while Kafka is stopped messages are still accepted and health says kafka is failing,
// and their turns are answered once it is back; a record that is not a turn ends in the
// dead-letter topic and table.
func TestTurnsGoThroughKafka(t *testing.T) {
	dsn := freshPostgres(t)
	dir := t.TempDir()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DataDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	brokers := c.ListenAddrs()
	u := newUpstream(t)
	g := start(t, withUpstream(u, map[string]string{"POSTGRES_DSN": dsn, "KAFKA_BOOTSTRAP_SERVERS": brokers[0], "KAFKA_TIMEOUT": "500ms"}))

	a := g.send(t, "", "through kafka")
	frames := g.subscribe(t, a.SessionID, "").untilFinal(t)
	if got := frames[len(frames)-1].Data.Message; got != reply("through kafka") {
		t.Fatalf("final = %q", got)
	}
	if got := g.health(t, "kafka"); got != "ok" {
		t.Fatalf("health of kafka = %q, want ok", got)
	}
	cursor := frames[len(frames)-1].ID

	c.Close()
	g.send(t, a.SessionID, "while kafka is down") // accepted: it waits in the outbox
	eventually(t, "health to report kafka failing", 10*time.Second, func() bool { return g.health(t, "kafka") != "ok" })

	_, port, _ := net.SplitHostPort(brokers[0])
	portNum, _ := strconv.Atoi(port)
	c2, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(portNum), kfake.DataDir(dir))
	if err != nil {
		t.Fatalf("restart kfake on port %d: %v", portNum, err)
	}
	t.Cleanup(c2.Close)
	frames = g.subscribe(t, a.SessionID, cursor).untilFinal(t)
	if got := frames[len(frames)-1].Data.Message; got != reply("while kafka is down") {
		t.Fatalf("final after the outage = %q", got)
	}
	if frames[0].Data.Message != "while kafka is down" {
		t.Errorf("first frame after the cursor = %+v, want the user message", frames[0])
	}
	eventually(t, "health to report kafka ok", 10*time.Second, func() bool { return g.health(t, "kafka") == "ok" })

	// A record that is not a turn goes to the dead-letter topic and table.
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: "conversation.inbound", Key: []byte("k"), Value: []byte("not a turn")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var dlq struct {
		DeadLetters []struct {
			Topic       string            `json:"topic"`
			PayloadText string            `json:"payload_text"`
			Error       string            `json:"error"`
			Headers     map[string]string `json:"headers"`
		} `json:"dead_letters"`
	}
	eventually(t, "the poison record in the dead-letter table", 10*time.Second, func() bool {
		do(t, "GET", g.URL+"/v1/admin/dlq?topic=conversation.inbound", "", nil).json(t, &dlq)
		return len(dlq.DeadLetters) > 0
	})
	if d := dlq.DeadLetters[0]; d.PayloadText != "not a turn" || !strings.Contains(d.Error, "decode turn") {
		t.Errorf("dead letter = %+v", d)
	}
	dl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics("conversation.inbound.dlq"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fetches := dl.PollRecords(ctx, 1)
	if recs := fetches.Records(); len(recs) != 1 || string(recs[0].Value) != "not a turn" {
		t.Errorf("dead-letter topic: %v (%v)", recs, fetches.Errors())
	}
}
