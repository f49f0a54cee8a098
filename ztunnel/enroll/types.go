package enroll

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"unicode"
)

// DefaultSocketPath is where ztunnel serves the enrolment API.
const DefaultSocketPath = "/var/run/ambit/ztunnel.sock"

// DefaultStateFile is where ztunnel persists the enrolled pods.
const DefaultStateFile = "/var/run/ambit/pods.json"

// maxFieldLen bounds every string field of a request.
const maxFieldLen = 253

// maxAddrs bounds the number of pod or node addresses of a request.
const maxAddrs = 16

// Pod is one pod reported to ztunnel, with its validated addresses.
type Pod struct {
	// UID is the Kubernetes pod UID (the key of the enrolled set).
	UID string `json:"uid"`
	// Namespace and Name are the pod's Kubernetes namespace and name.
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// ContainerID is the sandbox container ID (CNI_CONTAINERID), if known.
	ContainerID string `json:"containerID,omitempty"`
	// NetnsPath is the pod's network namespace file, as the runtime passed it
	// to the CNI plugin (for example /var/run/netns/cni-...).
	NetnsPath string `json:"netnsPath"`
	// PodIPs are the pod's addresses (from the CNI prevResult).
	PodIPs []netip.Addr `json:"podIPs"`
	// NodeIPs are addresses of the node as the pod sees them (for example the
	// pod network's gateway), from which kubelet probes arrive. Optional.
	NodeIPs []netip.Addr `json:"nodeIPs,omitempty"`
}

// Key returns "namespace/name (uid)" for logs and errors.
func (p Pod) Key() string { return p.Namespace + "/" + p.Name + " (" + p.UID + ")" }

// Equal reports whether p and o carry the same data.
func (p Pod) Equal(o Pod) bool {
	return p.UID == o.UID && p.Namespace == o.Namespace && p.Name == o.Name &&
		p.ContainerID == o.ContainerID && p.NetnsPath == o.NetnsPath &&
		slices.Equal(p.PodIPs, o.PodIPs) && slices.Equal(p.NodeIPs, o.NodeIPs)
}

// clone returns a deep copy of p.
func (p Pod) clone() Pod {
	p.PodIPs = slices.Clone(p.PodIPs)
	p.NodeIPs = slices.Clone(p.NodeIPs)
	return p
}

// AddPodRequest is the body of POST /v1/pods. Addresses are strings on the
// wire so that a malformed one gets a precise error.
type AddPodRequest struct {
	UID         string   `json:"uid"`
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	ContainerID string   `json:"containerID,omitempty"`
	NetnsPath   string   `json:"netnsPath"`
	PodIPs      []string `json:"podIPs"`
	NodeIPs     []string `json:"nodeIPs,omitempty"`
}

// AddPodResponse is the answer to a successful AddPod.
type AddPodResponse struct {
	Pod Pod `json:"pod"`
	// Changed is false when the pod was already enrolled with the same data.
	Changed bool `json:"changed"`
}

// RemovePodResponse is the answer to RemovePod.
type RemovePodResponse struct {
	// Removed is false when the pod was unknown, or the request named another
	// sandbox than the enrolled one.
	Removed bool `json:"removed"`
}

// GetResponse is the answer to GET /v1/pods/{uid}.
type GetResponse struct {
	Pod Pod `json:"pod"`
}

// ListResponse is the answer to GET /v1/pods.
type ListResponse struct {
	Pods []Pod `json:"pods"`
}

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody says what went wrong.
type ErrorBody struct {
	// Code is one of the Code* constants.
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes of ErrorBody.Code.
const (
	CodeInvalidArgument  = "invalid_argument"
	CodeNotFound         = "not_found"
	CodeTooLarge         = "too_large"
	CodeAddFailed        = "add_failed"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeInternal         = "internal"
)

// ValidationError is a request the server rejects as malformed.
type ValidationError struct{ Msg string }

func (e *ValidationError) Error() string { return e.Msg }

func invalid(format string, args ...any) error {
	return &ValidationError{Msg: fmt.Sprintf(format, args...)}
}

// ToPod validates the request's fields, except whether the netns path is a
// network namespace (the server checks that), and returns the pod it names.
func (r AddPodRequest) ToPod() (Pod, error) {
	var errs []error
	if err := checkUID(r.UID); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []struct{ name, v string }{{"namespace", r.Namespace}, {"name", r.Name}} {
		if err := checkField(f.name, f.v, true); err != nil {
			errs = append(errs, err)
		}
	}
	if err := checkField("containerID", r.ContainerID, false); err != nil {
		errs = append(errs, err)
	}
	switch {
	case r.NetnsPath == "":
		errs = append(errs, invalid("netnsPath is required"))
	case !filepath.IsAbs(r.NetnsPath) || len(r.NetnsPath) > 4096:
		errs = append(errs, invalid("netnsPath %q must be an absolute path", r.NetnsPath))
	}
	podIPs, err := parseAddrs("podIPs", r.PodIPs)
	if err != nil {
		errs = append(errs, err)
	} else if len(podIPs) == 0 {
		errs = append(errs, invalid("podIPs: at least one pod IP is required"))
	}
	nodeIPs, err := parseAddrs("nodeIPs", r.NodeIPs)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return Pod{}, joinValidation(errs)
	}
	return Pod{
		UID: r.UID, Namespace: r.Namespace, Name: r.Name, ContainerID: r.ContainerID,
		NetnsPath: filepath.Clean(r.NetnsPath), PodIPs: podIPs, NodeIPs: nodeIPs,
	}, nil
}

// joinValidation folds several validation errors into one.
func joinValidation(errs []error) error {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return &ValidationError{Msg: strings.Join(msgs, "; ")}
}

// checkUID validates a pod UID: required, printable, no slash (it is a URL
// path segment).
func checkUID(uid string) error {
	if uid == "" {
		return invalid("uid is required")
	}
	if err := checkField("uid", uid, true); err != nil {
		return err
	}
	if strings.ContainsAny(uid, "/?#%") {
		return invalid("uid %q must not contain '/', '?', '#' or '%%'", uid)
	}
	return nil
}

// checkField validates a string field: length and printable characters.
func checkField(name, v string, required bool) error {
	if v == "" {
		if required {
			return invalid("%s is required", name)
		}
		return nil
	}
	if len(v) > maxFieldLen {
		return invalid("%s is longer than %d bytes", name, maxFieldLen)
	}
	for _, r := range v {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return invalid("%s %q contains a space or an unprintable character", name, v)
		}
	}
	return nil
}

// parseAddrs parses a list of IP addresses, rejecting malformed, zoned,
// unspecified and duplicate ones.
func parseAddrs(field string, in []string) ([]netip.Addr, error) {
	if len(in) > maxAddrs {
		return nil, invalid("%s: at most %d addresses", field, maxAddrs)
	}
	var out []netip.Addr
	for i, s := range in {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, invalid("%s[%d]: %q is not an IP address", field, i, s)
		}
		if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			return nil, invalid("%s[%d]: %q is not a usable unicast address", field, i, s)
		}
		a = a.Unmap()
		if slices.Contains(out, a) {
			return nil, invalid("%s[%d]: %q is listed twice", field, i, s)
		}
		out = append(out, a)
	}
	return out, nil
}

// Request builds the wire request for p.
func (p Pod) Request() AddPodRequest {
	r := AddPodRequest{UID: p.UID, Namespace: p.Namespace, Name: p.Name, ContainerID: p.ContainerID, NetnsPath: p.NetnsPath}
	for _, a := range p.PodIPs {
		r.PodIPs = append(r.PodIPs, a.String())
	}
	for _, a := range p.NodeIPs {
		r.NodeIPs = append(r.NodeIPs, a.String())
	}
	return r
}
