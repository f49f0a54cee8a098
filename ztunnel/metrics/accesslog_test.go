package metrics

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

func TestAccessLog(t *testing.T) {
	var buf bytes.Buffer
	m := New()
	m.AccessLog = slog.New(slog.NewJSONHandler(&buf, nil))
	l := Labels{
		Reporter: ReporterDestination, Security: SecurityMutualTLS, DestinationService: "web.shop.svc.cluster.local",
		Source:      Peer{Workload: "client", Namespace: "shop", Principal: "spiffe://cluster.local/ns/shop/sa/client"},
		Destination: Peer{Workload: "web", Namespace: "shop", Principal: "spiffe://cluster.local/ns/shop/sa/web"},
	}
	c := m.Open(l)
	c.Received(10)
	c.Sent(20)
	c.Close()
	c.Close() // a second Close neither counts nor logs
	denied := l
	denied.ResponseFlags = FlagDenied
	m.Failed(denied)

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d access-log lines, want 2:\n%s", len(lines), buf.String())
	}
	var closed, refused map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &closed); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &refused); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"msg": "connection closed", "src_principal": "spiffe://cluster.local/ns/shop/sa/client",
		"dst_workload": "shop/web", "policy": "allow", "sent_bytes": 20.0, "received_bytes": 10.0, "security": "mutual_tls",
	} {
		if closed[k] != want {
			t.Errorf("closed line %s = %v, want %v", k, closed[k], want)
		}
	}
	if _, ok := closed["duration"]; !ok {
		t.Error("closed line has no duration")
	}
	if refused["msg"] != "connection refused" || refused["policy"] != "deny" || refused["flags"] != FlagDenied {
		t.Errorf("refused line = %v", refused)
	}
}
