package cniinstall

import (
	"encoding/json"
	"testing"
)

var fuzzEntry = json.RawMessage(`{"type":"ambit-cni","socketPath":"/var/run/ambit/ztunnel.sock"}`)

// nonOurs returns the plugin entries of a list that are not Ambit's.
func nonOurs(t *testing.T, data []byte) []json.RawMessage {
	t.Helper()
	_, ps, err := parseList(data)
	if err != nil {
		t.Fatalf("not a valid conflist: %v\n%s", err, data)
	}
	var out []json.RawMessage
	for _, p := range ps {
		if !isOurs(p) {
			out = append(out, p)
		}
	}
	return out
}

func samePlugins(a, b []json.RawMessage) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !sameJSON(a[i], b[i]) {
			return false
		}
	}
	return true
}

// FuzzChainList: chaining never loses or reorders another plugin's entry,
// always yields valid JSON with exactly one entry of ours, last, and
// unchaining gives the other plugins back.
func FuzzChainList(f *testing.F) {
	for _, s := range []string{
		bridgeList,
		`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"calico","x":[1,2,{"y":null}]}]}`,
		`{"plugins":[{"type":"bridge"},{"type":"ambit-cni","socketPath":"/old"},{"type":"portmap"}]}`,
		`{"plugins":[{"type":"ambit-cni"}]}`,
		`{"plugins":[{"type":"bridge","n":1e400}]}`,
		`{"plugins":[{"type":"b\u00e9"}],"ambitConvertedFrom":{"file":"x.conf","content":"e30="}}`,
		`{"plugins":[]}`,
		`{}`,
		`[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, changed, err := chainList(data, fuzzEntry)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON out:\n%s", out)
		}
		before := nonOurs(t, data)
		after := nonOurs(t, out)
		if !samePlugins(before, after) {
			t.Fatalf("other plugins changed:\n%s\n->\n%s", data, out)
		}
		_, ps, _ := parseList(out)
		ours := 0
		for _, p := range ps {
			if isOurs(p) {
				ours++
			}
		}
		if ours != 1 || !isOurs(ps[len(ps)-1]) && changed {
			t.Fatalf("want exactly one entry of ours, last; got %d in\n%s", ours, out)
		}
		again, changed2, err := chainList(out, fuzzEntry)
		if err != nil || changed2 && changed {
			t.Fatalf("second chain: changed %v, err %v", changed2, err)
		}
		_ = again
		un, rest, removed, err := unchainList(out)
		if err != nil || !removed {
			t.Fatalf("unchain: removed %v, err %v", removed, err)
		}
		if rest != nil {
			return // restores a converted file: checked by FuzzConvertConf
		}
		if !json.Valid(un) {
			t.Fatalf("invalid JSON after unchain:\n%s", un)
		}
		if !samePlugins(before, nonOurs(t, un)) || len(nonOurs(t, un)) != len(mustPlugins(t, un)) {
			t.Fatalf("unchain did not give the other plugins back:\n%s", un)
		}
	})
}

func mustPlugins(t *testing.T, data []byte) []json.RawMessage {
	_, ps, err := parseList(data)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// FuzzConvertConf: a single-plugin config becomes a valid conflist holding it
// and our entry, and unchaining restores the original bytes.
func FuzzConvertConf(f *testing.F) {
	for _, s := range []string{
		bridgeConf,
		`{"type":"ptp","cniVersion":"0.3.1","name":"p","ipMasq":true}`,
		`{"type":"x"}`,
		`{"type":"ambit-cni"}`,
		`{"type":1}`,
		`{"type":"x","name":7}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := convertConf(data, "10-x.conf", fuzzEntry)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON out:\n%s", out)
		}
		ps := mustPlugins(t, out)
		if len(ps) != 2 || !sameJSON(ps[0], data) || !isOurs(ps[1]) {
			t.Fatalf("converted list wrong:\n%s", out)
		}
		if _, changed, err := chainList(out, fuzzEntry); err != nil || changed {
			t.Fatalf("converted list not seen as chained: %v %v", changed, err)
		}
		_, rest, removed, err := unchainList(out)
		if err != nil || !removed || rest == nil || rest.File != "10-x.conf" || string(rest.Content) != string(data) {
			t.Fatalf("unchain did not restore the original: %v %v %+v", removed, err, rest)
		}
	})
}
