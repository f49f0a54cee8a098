package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// ShutdownDecider tells, when ztunnel stops, whether it is being uninstalled
// (release every pod, unchain the CNI plugin, remove the state files) or
// restarted (keep all of it for the next ztunnel, which re-enrols the pods).
type ShutdownDecider interface {
	// Uninstalling returns the decision and its reason, for the log.
	Uninstalling(ctx context.Context) (uninstall bool, reason string)
}

// ShutdownFunc adapts a function to ShutdownDecider.
type ShutdownFunc func(ctx context.Context) (bool, string)

// Uninstalling calls f.
func (f ShutdownFunc) Uninstalling(ctx context.Context) (bool, string) { return f(ctx) }

// In-cluster defaults of the Kubernetes API client.
const (
	ServiceAccountTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	ServiceAccountCAFile    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// DaemonSetCheck decides from ztunnel's own DaemonSet, read through the
// Kubernetes API:
//
//   - the DaemonSet exists and is not being deleted, nor is its namespace:
//     a restart or an upgrade, keep everything;
//   - 404, a deletionTimestamp on the DaemonSet or its namespace (or the
//     namespace's phase Terminating): uninstall;
//   - 401 or 403 (the service account or its RBAC is already gone): uninstall;
//   - the API cannot be reached or keeps failing (5xx) until the attempts
//     are spent: uninstall, so that a torn-down cluster leaves nothing
//     behind on the node.
//
// A failure to read the namespace (ztunnel may lack the permission) is
// ignored.
type DaemonSetCheck struct {
	// Namespace and Name of the DaemonSet. Required.
	Namespace, Name string
	// Server is the API server's base URL ("https://10.0.0.1:443"). Required.
	Server string
	// TokenFile holds the bearer token, read at each check (kubelet rotates
	// it); empty sends none.
	TokenFile string
	// Client sends the requests (its transport carries the TLS settings).
	// Nil means http.DefaultClient.
	Client *http.Client
	// Attempts is how many times an unanswered request is tried (3).
	Attempts int
	// RetryDelay separates the attempts (500ms).
	RetryDelay time.Duration
}

// InClusterDaemonSetCheck returns a DaemonSetCheck for the DaemonSet ref
// ("<namespace>/<name>") that reaches the API as a pod does: the
// KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT variables, the
// automounted service-account token and CA bundle.
func InClusterDaemonSetCheck(ref string) (*DaemonSetCheck, error) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("daemonset %q is not <namespace>/<name>", ref)
	}
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("daemonset check: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not running in a pod?)")
	}
	caPEM, err := os.ReadFile(ServiceAccountCAFile)
	if err != nil {
		return nil, fmt.Errorf("daemonset check: API server CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("daemonset check: %s holds no PEM certificate", ServiceAccountCAFile)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &DaemonSetCheck{
		Namespace: ns, Name: name,
		Server:    "https://" + net.JoinHostPort(host, port),
		TokenFile: ServiceAccountTokenFile,
		Client:    &http.Client{Transport: tr, Timeout: 3 * time.Second},
	}, nil
}

// objectMeta is what the check reads of an object.
type objectMeta struct {
	Metadata struct {
		DeletionTimestamp *string `json:"deletionTimestamp"`
	} `json:"metadata"`
	Status struct {
		Phase string `json:"phase"`
	} `json:"status"`
}

// Uninstalling implements ShutdownDecider.
func (c *DaemonSetCheck) Uninstalling(ctx context.Context) (bool, string) {
	ds := fmt.Sprintf("%s/%s", c.Namespace, c.Name)
	code, obj, err := c.get(ctx, "/apis/apps/v1/namespaces/"+url.PathEscape(c.Namespace)+"/daemonsets/"+url.PathEscape(c.Name))
	switch {
	case err != nil:
		return true, fmt.Sprintf("cannot read DaemonSet %s from the API (%v): treating the stop as an uninstall", ds, err)
	case code == http.StatusNotFound:
		return true, fmt.Sprintf("DaemonSet %s no longer exists", ds)
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return true, fmt.Sprintf("the API refuses to read DaemonSet %s (HTTP %d: service account or RBAC removed)", ds, code)
	case code != http.StatusOK:
		return true, fmt.Sprintf("reading DaemonSet %s failed with HTTP %d: treating the stop as an uninstall", ds, code)
	case obj.Metadata.DeletionTimestamp != nil:
		return true, fmt.Sprintf("DaemonSet %s is being deleted (since %s)", ds, *obj.Metadata.DeletionTimestamp)
	}
	code, nsObj, err := c.get(ctx, "/api/v1/namespaces/"+url.PathEscape(c.Namespace))
	if err == nil && code == http.StatusOK {
		if nsObj.Metadata.DeletionTimestamp != nil || nsObj.Status.Phase == "Terminating" {
			return true, fmt.Sprintf("namespace %s of DaemonSet %s is being deleted", c.Namespace, ds)
		}
	}
	return false, fmt.Sprintf("DaemonSet %s exists: a restart or an upgrade", ds)
}

// get reads one object; err is set when no answer came (after the attempts)
// or the answer cannot be read. 5xx and 429 answers are retried too.
func (c *DaemonSetCheck) get(ctx context.Context, path string) (int, objectMeta, error) {
	attempts, delay := c.Attempts, c.RetryDelay
	if attempts <= 0 {
		attempts = 3
	}
	if delay <= 0 {
		delay = 500 * time.Millisecond
	}
	var (
		code    int
		obj     objectMeta
		lastErr error
	)
	for i := 0; i < attempts; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return 0, obj, fmt.Errorf("%w (last: %v)", ctx.Err(), lastErr)
			case <-time.After(delay):
			}
		}
		code, obj, lastErr = c.getOnce(ctx, path)
		if lastErr == nil && code < 500 && code != http.StatusTooManyRequests {
			return code, obj, nil
		}
		if lastErr == nil {
			lastErr = fmt.Errorf("HTTP %d", code)
		}
	}
	if code != 0 {
		return code, obj, nil
	}
	return 0, obj, lastErr
}

func (c *DaemonSetCheck) getOnce(ctx context.Context, path string) (int, objectMeta, error) {
	var obj objectMeta
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(c.Server, "/")+path, nil)
	if err != nil {
		return 0, obj, err
	}
	req.Header.Set("Accept", "application/json")
	if c.TokenFile != "" {
		tok, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return 0, obj, fmt.Errorf("service-account token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	client := c.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, obj, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return 0, obj, err
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &obj); err != nil {
			return 0, obj, fmt.Errorf("decode %s: %w", path, err)
		}
	}
	return resp.StatusCode, obj, nil
}
