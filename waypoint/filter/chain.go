package filter

import (
	"fmt"
	"math/rand/v2"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// Chain is the compiled filters of one rule or backend, in the order the
// route lists them. It is immutable once compiled.
type Chain struct {
	// Request are the request header modifiers, applied in order.
	Request []*HeaderModifier
	// Response are the response header modifiers, applied in order.
	Response []*HeaderModifier
	// Redirect, when set, answers the request without forwarding it.
	Redirect *Redirect
	// Rewrite, when set, changes the forwarded request's host and path.
	Rewrite *Rewrite
	// Mirrors are sent a copy of the request (fire and forget).
	Mirrors []*Mirror
	// Fault, when set, delays or aborts a share of the requests.
	Fault *Fault
}

// Empty reports whether the chain does nothing (a nil chain is empty).
func (c *Chain) Empty() bool {
	return c == nil || (len(c.Request) == 0 && len(c.Response) == 0 && c.Redirect == nil &&
		c.Rewrite == nil && len(c.Mirrors) == 0 && c.Fault == nil)
}

// Mirror sends a copy of a share of the requests to another backend.
type Mirror struct {
	// Service ("<namespace>/<name>") and Port of the mirror backend.
	Service string
	Port    uint32
	// Percent of requests mirrored, 0-100.
	Percent float64
}

// Compile validates and compiles filters. An error names the first invalid
// filter; the caller rejects the whole configuration with it.
func Compile(in []*configv1alpha1.Filter) (*Chain, error) {
	c := &Chain{}
	for i, f := range in {
		if err := c.add(f); err != nil {
			return nil, fmt.Errorf("filter %d: %w", i, err)
		}
	}
	if c.Redirect != nil && c.Rewrite != nil {
		return nil, fmt.Errorf("a redirect and a URL rewrite cannot be combined")
	}
	return c, nil
}

func (c *Chain) add(f *configv1alpha1.Filter) error {
	switch {
	case f.GetRequestHeaderModifier() != nil:
		m, err := compileHeaders(f.GetRequestHeaderModifier())
		if err != nil {
			return fmt.Errorf("requestHeaderModifier: %w", err)
		}
		c.Request = append(c.Request, m)
	case f.GetResponseHeaderModifier() != nil:
		m, err := compileHeaders(f.GetResponseHeaderModifier())
		if err != nil {
			return fmt.Errorf("responseHeaderModifier: %w", err)
		}
		c.Response = append(c.Response, m)
	case f.GetRequestRedirect() != nil:
		if c.Redirect != nil {
			return fmt.Errorf("more than one requestRedirect")
		}
		r, err := compileRedirect(f.GetRequestRedirect())
		if err != nil {
			return fmt.Errorf("requestRedirect: %w", err)
		}
		c.Redirect = r
	case f.GetUrlRewrite() != nil:
		if c.Rewrite != nil {
			return fmt.Errorf("more than one urlRewrite")
		}
		r, err := compileRewrite(f.GetUrlRewrite())
		if err != nil {
			return fmt.Errorf("urlRewrite: %w", err)
		}
		c.Rewrite = r
	case f.GetRequestMirror() != nil:
		m := f.GetRequestMirror()
		b := m.GetBackend()
		switch {
		case b.GetService() == "":
			return fmt.Errorf("requestMirror: no backend service")
		case b.GetPort() == 0 || b.GetPort() > 65535:
			return fmt.Errorf("requestMirror: backend port %d is not within 1-65535", b.GetPort())
		case m.GetPercent() < 0 || m.GetPercent() > 100:
			return fmt.Errorf("requestMirror: percent %v is not within 0-100", m.GetPercent())
		}
		c.Mirrors = append(c.Mirrors, &Mirror{Service: b.GetService(), Port: b.GetPort(), Percent: m.GetPercent()})
	case f.GetFault() != nil:
		if c.Fault != nil {
			return fmt.Errorf("more than one fault")
		}
		ft, err := compileFault(f.GetFault())
		if err != nil {
			return fmt.Errorf("fault: %w", err)
		}
		c.Fault = ft
	default:
		return fmt.Errorf("empty or unknown filter kind")
	}
	return nil
}

// Hit reports whether a request falls within percent (0-100), given draw,
// a source of uniform numbers in [0, 1); nil draw is math/rand/v2.Float64.
func Hit(percent float64, draw func() float64) bool {
	switch {
	case percent <= 0:
		return false
	case percent >= 100:
		return true
	case draw == nil:
		draw = rand.Float64
	}
	return draw()*100 < percent
}

// duration converts a set wire duration, refusing invalid and negative ones.
func duration(d interface {
	AsDuration() time.Duration
	CheckValid() error
}) (time.Duration, error) {
	if err := d.CheckValid(); err != nil {
		return 0, err
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, fmt.Errorf("negative duration %v", v)
	}
	return v, nil
}
