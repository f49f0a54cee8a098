package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

// podEnv is what the controller's deployer sets in a waypoint pod.
func podEnv() map[string]string {
	return map[string]string{
		"AMBIT_GATEWAY_NAMESPACE": "demo",
		"AMBIT_GATEWAY_NAME":      "waypoint",
		"AMBIT_XDS_ADDRESS":       "ctl.ambit-system.svc:15010",
		"AMBIT_CA_ADDRESS":        "ctl.ambit-system.svc:15012",
		"AMBIT_TRUST_DOMAIN":      "example.org",
		"AMBIT_TOKEN_FILE":        "/var/run/secrets/ambit/tokens/ambit-ca/token",
		"AMBIT_STATE_DIR":         "/var/lib/ambit",
		"AMBIT_CA_ROOT_FILE":      "/etc/ambit/ca/root-cert.pem",
		"POD_NAME":                "waypoint-abc",
		"POD_NAMESPACE":           "demo",
		"NODE_NAME":               "node-1",
		"INSTANCE_IP":             "10.1.0.9",
		"SERVICE_ACCOUNT":         "waypoint",
	}
}

func TestOptionsFromPodEnv(t *testing.T) {
	o, err := parseOptions(nil, env(podEnv()), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string][2]string{
		"gateway":  {o.gateway(), "demo/waypoint"},
		"identity": {o.identity.String(), "spiffe://example.org/ns/demo/sa/waypoint"},
		"xds":      {o.xdsAddress, "ctl.ambit-system.svc:15010"},
		"ca":       {o.caAddress, "ctl.ambit-system.svc:15012"},
		"token":    {o.caTokenFile, "/var/run/secrets/ambit/tokens/ambit-ca/token"},
		"state":    {o.xdsStateFile, "/var/lib/ambit/xds-state.pb"},
		"root":     {o.caRootFile, "/etc/ambit/ca/root-cert.pem"},
		"metrics":  {o.metricsAddress, ":15020"},
		"ready":    {o.readyAddress, ":15021"},
		"hbone":    {o.hboneAddress, ":15008"},
		"admin":    {o.adminAddress, "localhost:15000"},
		"otlp":     {o.otlpEndpoint, ""},
	} {
		if c[0] != c[1] {
			t.Errorf("%s = %q, want %q", name, c[0], c[1])
		}
	}
	if o.shutdownDrain != 5*time.Second || o.endpointHBONEPort != 15008 {
		t.Errorf("drain %v, endpoint port %d", o.shutdownDrain, o.endpointHBONEPort)
	}
}

func TestFlagsOverrideEnv(t *testing.T) {
	e := podEnv()
	e["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://collector:4317"
	e["SPIFFE_ID"] = "spiffe://td/ns/x/sa/from-env"
	o, err := parseOptions([]string{
		"-gateway", "other/wp", "-identity", "spiffe://td/ns/other/sa/wp",
		"-xds-state-file", "", "-ca-root-file", "/tmp/root.pem", "-xds-address", "127.0.0.1:1", "-xds-insecure",
		"-otlp-endpoint", "127.0.0.1:4317", "-shutdown-drain", "1s", "-drain-removed", "5s",
	}, env(e), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.gateway() != "other/wp" || o.identity.String() != "spiffe://td/ns/other/sa/wp" || o.xdsStateFile != "" ||
		o.caRootFile != "/tmp/root.pem" || o.xdsAddress != "127.0.0.1:1" || o.otlpEndpoint != "127.0.0.1:4317" || o.shutdownDrain != time.Second ||
		o.drainRemoved != 5*time.Second || !o.xdsInsecure {
		t.Fatalf("flags did not override: %+v", o)
	}
	// SPIFFE_ID wins over the pod's namespace and service account.
	o, err = parseOptions(nil, env(e), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.identity.String() != "spiffe://td/ns/x/sa/from-env" || o.otlpEndpoint != "http://collector:4317" {
		t.Fatalf("identity %s, otlp %q", o.identity, o.otlpEndpoint)
	}
}

func TestDefaultsWithoutEnv(t *testing.T) {
	o, err := parseOptions([]string{"-gateway", "a/b", "-pod-namespace", "a", "-service-account", "b"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.identity.String() != "spiffe://cluster.local/ns/a/sa/b" || o.caRootFile != "/etc/ambit/ca/root-cert.pem" ||
		o.xdsStateFile != "" || o.xdsAddress != "ambit-controller.ambit-system.svc:15010" || o.drainRemoved != 30*time.Second ||
		o.xdsInsecure {
		t.Fatalf("defaults: %+v", o)
	}
}

func TestMissingConfigurationListed(t *testing.T) {
	_, err := parseOptions(nil, env(nil), io.Discard)
	if err == nil {
		t.Fatal("no error without gateway and identity")
	}
	for _, want := range []string{"AMBIT_GATEWAY_NAMESPACE", "AMBIT_GATEWAY_NAME", "-identity", "POD_NAMESPACE", "SERVICE_ACCOUNT"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	// Only the service account missing: only it is named.
	e := podEnv()
	delete(e, "SERVICE_ACCOUNT")
	_, err = parseOptions(nil, env(e), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "SERVICE_ACCOUNT") || strings.Contains(err.Error(), "POD_NAMESPACE") || strings.Contains(err.Error(), "gateway") {
		t.Fatalf("error %v", err)
	}
}

func TestInvalidValues(t *testing.T) {
	for name, c := range map[string]struct {
		args []string
		mod  func(map[string]string)
		want string
	}{
		"bad gateway":            {[]string{"-gateway", "nonamespace"}, nil, `gateway "nonamespace"`},
		"half gateway":           {nil, func(e map[string]string) { delete(e, "AMBIT_GATEWAY_NAME") }, `gateway "demo/"`},
		"bad identity":           {[]string{"-identity", "http://x"}, nil, "-identity"},
		"bad namespace":          {nil, func(e map[string]string) { e["POD_NAMESPACE"] = "a/b" }, "identity from"},
		"bad port":               {[]string{"-endpoint-hbone-port", "70000"}, nil, "-endpoint-hbone-port"},
		"bad level":              {[]string{"-log-level", "loud"}, nil, "-log-level"},
		"negative drain":         {[]string{"-shutdown-drain", "-1s"}, nil, "-shutdown-drain"},
		"zero sniff":             {[]string{"-sniff-timeout", "0s"}, nil, "-sniff-timeout"},
		"negative drain-removed": {[]string{"-drain-removed", "-1s"}, nil, "-drain-removed"},
		"extra args":             {[]string{"extra"}, nil, "unexpected arguments"},
		"no ca root":             {[]string{"-ca-root-file", ""}, nil, "-ca-root-file"},
		"negative gomaxprocs":    {[]string{"-gomaxprocs", "-2"}, nil, "-gomaxprocs"},
		"bad memory limit":       {[]string{"-memory-limit", "12 apples"}, nil, "-memory-limit"},
		"local CA, secure xDS":   {[]string{"-local-ca-trust-domain", "cluster.local"}, nil, "add -xds-insecure"},
	} {
		e := podEnv()
		if c.mod != nil {
			c.mod(e)
		}
		_, err := parseOptions(c.args, env(e), io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", name, err, c.want)
		}
	}
	// The local CA, with plaintext xDS, needs no CA address or root file.
	if _, err := parseOptions([]string{"-local-ca-trust-domain", "cluster.local", "-xds-insecure", "-ca-root-file", ""}, env(podEnv()), io.Discard); err != nil {
		t.Fatal(err)
	}
}
