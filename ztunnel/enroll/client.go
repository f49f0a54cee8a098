package enroll

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// ErrUnavailable marks a client error where ztunnel could not be reached at
// all (no socket, nobody listening, dial timeout): the request was not seen.
var ErrUnavailable = errors.New("ztunnel is unreachable")

// APIError is an error answer of the server.
type APIError struct {
	Status  int    // HTTP status
	Code    string // one of the Code* constants
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("ztunnel refused the request (%s): %s", e.Code, e.Message)
}

// Client talks to the enrolment API over its unix socket. It is safe for
// concurrent use.
type Client struct {
	socketPath string
	hc         *http.Client
}

// maxResponseBytes bounds an answer the client reads.
const maxResponseBytes = 16 << 20

// NewClient returns a client of the server at socketPath (DefaultSocketPath
// when empty). Bound each call with its context.
func NewClient(socketPath string) *Client {
	if socketPath == "" {
		socketPath = DefaultSocketPath
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, "unix", socketPath)
			if err != nil {
				return nil, fmt.Errorf("%w: dial %s: %w", ErrUnavailable, socketPath, err)
			}
			return c, nil
		},
		MaxIdleConns:          4,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 0, // bounded by the caller's context
	}
	return &Client{socketPath: socketPath, hc: &http.Client{Transport: tr}}
}

// SocketPath returns the socket the client talks to.
func (c *Client) SocketPath() string { return c.socketPath }

// AddPod enrols a pod.
func (c *Client) AddPod(ctx context.Context, req AddPodRequest) (AddPodResponse, error) {
	var resp AddPodResponse
	err := c.do(ctx, http.MethodPost, "/v1/pods", req, &resp)
	return resp, err
}

// RemovePod removes a pod; containerID may be empty (see Server.Remove).
func (c *Client) RemovePod(ctx context.Context, uid, containerID string) (RemovePodResponse, error) {
	var resp RemovePodResponse
	p := "/v1/pods/" + url.PathEscape(uid)
	if containerID != "" {
		p += "?containerID=" + url.QueryEscape(containerID)
	}
	err := c.do(ctx, http.MethodDelete, p, nil, &resp)
	return resp, err
}

// GetPod returns one enrolled pod; an unknown UID is an *APIError with
// Code CodeNotFound (see IsNotFound).
func (c *Client) GetPod(ctx context.Context, uid string) (Pod, error) {
	var resp GetResponse
	err := c.do(ctx, http.MethodGet, "/v1/pods/"+url.PathEscape(uid), nil, &resp)
	return resp.Pod, err
}

// ListPods returns every enrolled pod.
func (c *Client) ListPods(ctx context.Context) ([]Pod, error) {
	var resp ListResponse
	err := c.do(ctx, http.MethodGet, "/v1/pods", nil, &resp)
	return resp.Pods, err
}

// IsNotFound reports whether err is the server's not_found answer.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == CodeNotFound
}

// do sends one request and decodes the answer into out.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://ztunnel"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return err
		}
		return fmt.Errorf("ztunnel enrolment API %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("ztunnel enrolment API %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var er ErrorResponse
		if json.Unmarshal(data, &er) != nil || er.Error.Code == "" {
			return &APIError{Status: resp.StatusCode, Code: CodeInternal, Message: string(bytes.TrimSpace(data))}
		}
		return &APIError{Status: resp.StatusCode, Code: er.Error.Code, Message: er.Error.Message}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("ztunnel enrolment API %s %s: decode answer: %w", method, path, err)
	}
	return nil
}
