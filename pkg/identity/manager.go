package identity

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// ErrUnknownIdentity is wrapped by Manager errors about an identity it does
// not track (never added, or removed).
var ErrUnknownIdentity = errors.New("identity not managed")

// ErrNoCertificate is wrapped when a tracked identity has no certificate that
// is valid now: the first fetch has not succeeded yet, or the last certificate
// expired before a new one could be fetched.
var ErrNoCertificate = errors.New("no valid certificate")

// Manager defaults, used when the ManagerOptions field is zero.
const (
	DefaultRotateFraction = 0.5
	DefaultRetryMin       = time.Second
	DefaultRetryMax       = time.Minute
	DefaultFetchTimeout   = 30 * time.Second
)

// Clock is the Manager's source of time; tests may substitute a fake one.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// After returns a channel that receives once d has elapsed. The Manager
	// may abandon the channel without reading it.
	After(d time.Duration) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// ManagerOptions configures a Manager. The zero value is usable: every zero
// field takes the default written next to it.
type ManagerOptions struct {
	// Validity is the certificate lifetime asked of the CA; the CA may issue
	// a shorter one (for instance when its own certificate expires sooner).
	// Zero means DefaultCertLifetime (24h). Negative is an error.
	Validity time.Duration

	// RotateFraction is the part of a certificate's lifetime after which it
	// is replaced: 0.5 fetches a new one at half life. The lifetime is
	// counted from when the fetch was sent (or the certificate's NotBefore,
	// if later), not from the back-dated NotBefore. Zero means
	// DefaultRotateFraction; otherwise it must be strictly between 0 and 1.
	RotateFraction float64

	// RetryMin is the retry delay after the first failed fetch; it doubles
	// with each consecutive failure up to RetryMax, and each delay is drawn
	// uniformly from (0, delay] ("full jitter"). RetryMin is also the
	// shortest time between two successful fetches of one identity, so a CA
	// that issues very short certificates cannot drive a busy loop.
	// Zero means DefaultRetryMin (1s); zero RetryMax means DefaultRetryMax
	// (1m). Negative values, or RetryMax < RetryMin, are errors.
	RetryMin, RetryMax time.Duration

	// FetchTimeout bounds each call to Fetcher.Fetch. Zero means
	// DefaultFetchTimeout (30s). Negative is an error.
	FetchTimeout time.Duration

	// Clock is the time source for expiry checks and the rotation schedule.
	// Nil means the system clock. It should agree with the clock the CA and
	// the TLS peers use.
	Clock Clock

	// Logger receives rotation and failure logs. Nil means slog.Default().
	Logger *slog.Logger
}

// Manager keeps a certificate for each identity it tracks, fetched through a
// Fetcher with a fresh key, and replaces it after RotateFraction of its
// lifetime. It also keeps the trust bundle: the union of every root the CA
// has returned (expired roots are dropped), so that peers still holding a
// certificate from a previous root keep verifying during a CA root rotation.
//
// Cert and Roots plug into ClientConfig and ServerConfig: each handshake sees
// the newest certificate and bundle, while established TLS connections keep
// the ones they were made with, so rotation never disturbs them.
//
// Add, Remove, Wait, Cert, Roots and Snapshot are safe for concurrent use,
// with each other and with Run.
type Manager struct {
	fetcher Fetcher
	opts    ManagerOptions // defaults filled in
	log     *slog.Logger
	// randN returns a random duration in [0, d); tests may replace it before
	// the Manager is used.
	randN func(d time.Duration) time.Duration

	wake chan struct{}                 // buffered 1: the schedule changed, Run should look again
	pool atomic.Pointer[x509.CertPool] // the trust bundle; nil before the first root

	mu      sync.RWMutex
	entries map[SPIFFEID]*managedCert
	roots   map[string]*x509.Certificate // by DER
	changed chan struct{}                // closed and replaced whenever a certificate is stored
	running bool
}

// managedCert is the state of one identity. Fields are guarded by Manager.mu.
type managedCert struct {
	id       SPIFFEID
	cert     *tls.Certificate // newest certificate with its chain; nil before the first fetch
	next     time.Time        // when the next fetch is due
	failures int              // consecutive failed fetches
	lastErr  error            // of the last fetch; nil after a success
	inflight chan struct{}    // non-nil while a fetch runs; closed when it ends
	gone     chan struct{}    // closed by Remove
}

// NewManager returns a Manager that fetches certificates through f. It
// tracks no identity until Add, and renews nothing until Run.
func NewManager(f Fetcher, opts ManagerOptions) (*Manager, error) {
	if f == nil {
		return nil, errors.New("identity manager: nil Fetcher")
	}
	if opts.Validity < 0 || opts.RetryMin < 0 || opts.RetryMax < 0 || opts.FetchTimeout < 0 {
		return nil, errors.New("identity manager: negative duration in options")
	}
	if opts.RotateFraction != 0 && !(opts.RotateFraction > 0 && opts.RotateFraction < 1) {
		return nil, fmt.Errorf("identity manager: RotateFraction %v is not between 0 and 1", opts.RotateFraction)
	}
	if opts.Validity == 0 {
		opts.Validity = DefaultCertLifetime
	}
	if opts.RotateFraction == 0 {
		opts.RotateFraction = DefaultRotateFraction
	}
	if opts.RetryMin == 0 {
		opts.RetryMin = DefaultRetryMin
	}
	if opts.RetryMax == 0 {
		opts.RetryMax = max(DefaultRetryMax, opts.RetryMin)
	}
	if opts.RetryMax < opts.RetryMin {
		return nil, fmt.Errorf("identity manager: RetryMax %v < RetryMin %v", opts.RetryMax, opts.RetryMin)
	}
	if opts.FetchTimeout == 0 {
		opts.FetchTimeout = DefaultFetchTimeout
	}
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Manager{
		fetcher: f,
		opts:    opts,
		log:     log,
		randN:   func(d time.Duration) time.Duration { return rand.N(d) },
		wake:    make(chan struct{}, 1),
		entries: make(map[SPIFFEID]*managedCert),
		roots:   make(map[string]*x509.Certificate),
		changed: make(chan struct{}),
	}, nil
}

func (m *Manager) now() time.Time { return m.opts.Clock.Now() }

func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Add starts tracking id and returns once it has a valid certificate. If id
// is tracked and has one, Add returns nil at once. Otherwise Add fetches a
// certificate now (or waits for a fetch already under way) and returns that
// fetch's error. The identity stays tracked after a failed fetch, and Run
// retries it with backoff; Wait blocks until it succeeds. Add does not need
// Run to be running, but only Run renews certificates.
func (m *Manager) Add(ctx context.Context, id SPIFFEID) error {
	if err := id.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	e, ok := m.entries[id]
	if !ok {
		e = &managedCert{id: id, gone: make(chan struct{})}
		m.entries[id] = e
	}
	valid, inflight := e.validAt(m.now()), e.inflight
	if !valid && inflight == nil {
		e.inflight = make(chan struct{}) // this call fetches
	}
	m.mu.Unlock()
	if !ok {
		m.log.Info("identity added", "id", id.String())
	}
	switch {
	case valid:
		return nil
	case inflight == nil:
		m.poke()
		return m.refresh(ctx, e)
	default:
		select {
		case <-inflight:
		case <-ctx.Done():
			return ctx.Err()
		}
		m.mu.RLock()
		defer m.mu.RUnlock()
		if e.validAt(m.now()) {
			return nil
		}
		if m.entries[id] != e {
			return fmt.Errorf("%w: %s was removed", ErrUnknownIdentity, id)
		}
		if e.lastErr != nil {
			return e.lastErr
		}
		return fmt.Errorf("%w for %s: the fetch under way was cancelled", ErrNoCertificate, id)
	}
}

// Remove stops tracking id: its certificate is no longer served or renewed,
// and a fetch under way is discarded. Connections already open are not
// affected. Removing an identity that is not tracked does nothing.
func (m *Manager) Remove(id SPIFFEID) {
	m.mu.Lock()
	e, ok := m.entries[id]
	if ok {
		delete(m.entries, id)
		close(e.gone)
	}
	m.mu.Unlock()
	if ok {
		m.log.Info("identity removed", "id", id.String())
		m.poke()
	}
}

// Wait blocks until id has a valid certificate (nil), id is not or no longer
// tracked (ErrUnknownIdentity), or ctx ends (its error).
func (m *Manager) Wait(ctx context.Context, id SPIFFEID) error {
	for {
		m.mu.RLock()
		e := m.entries[id]
		if e == nil {
			m.mu.RUnlock()
			return fmt.Errorf("%w: %s", ErrUnknownIdentity, id)
		}
		valid, changed := e.validAt(m.now()), m.changed
		m.mu.RUnlock()
		if valid {
			return nil
		}
		select {
		case <-changed:
		case <-e.gone:
			return fmt.Errorf("%w: %s was removed", ErrUnknownIdentity, id)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Cert returns a CertSource for id, for ClientConfig and ServerConfig. Each
// call returns the newest certificate of id, or an error wrapping
// ErrUnknownIdentity (not tracked) or ErrNoCertificate (none yet, or it
// expired): an expired certificate is never returned. The source may be made
// before Add, and follows id across Remove and a later Add.
func (m *Manager) Cert(id SPIFFEID) CertSource {
	return func() (*tls.Certificate, error) {
		m.mu.RLock()
		e := m.entries[id]
		var c *tls.Certificate
		var lastErr error
		if e != nil {
			c, lastErr = e.cert, e.lastErr
		}
		m.mu.RUnlock()
		switch {
		case e == nil:
			return nil, fmt.Errorf("%w: %s", ErrUnknownIdentity, id)
		case c == nil && lastErr != nil:
			return nil, fmt.Errorf("%w for %s: %w", ErrNoCertificate, id, lastErr)
		case c == nil:
			return nil, fmt.Errorf("%w for %s: not fetched yet", ErrNoCertificate, id)
		case !m.now().Before(c.Leaf.NotAfter):
			return nil, fmt.Errorf("%w for %s: certificate expired at %v", ErrNoCertificate, id, c.Leaf.NotAfter)
		}
		return c, nil
	}
}

// Roots returns a RootsSource for ClientConfig and ServerConfig: the current
// trust bundle, or nil (which fails verification) before any root arrived.
// A returned pool is never modified; a change makes a new pool.
func (m *Manager) Roots() RootsSource {
	return func() *x509.CertPool { return m.pool.Load() }
}

// Run renews certificates until ctx ends: each tracked identity is fetched
// again after RotateFraction of its certificate's lifetime, and after a
// failure with backoff. Run waits for the fetches it started before it
// returns nil. Only one Run may be active at a time; a second one returns an
// error at once.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.running {
		m.mu.Unlock()
		return errors.New("identity manager: Run is already running")
	}
	m.running = true
	m.mu.Unlock()
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		m.mu.Lock()
		m.running = false
		m.mu.Unlock()
	}()

	for {
		if ctx.Err() != nil {
			return nil
		}
		now := m.now()
		var earliest time.Time
		m.mu.Lock()
		for _, e := range m.entries {
			if e.inflight != nil {
				continue // its end pokes us
			}
			if e.next.After(now) {
				if earliest.IsZero() || e.next.Before(earliest) {
					earliest = e.next
				}
				continue
			}
			e.inflight = make(chan struct{})
			wg.Go(func() { _ = m.refresh(ctx, e) })
		}
		m.mu.Unlock()

		var timer <-chan time.Time
		if !earliest.IsZero() {
			timer = m.opts.Clock.After(earliest.Sub(now))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-timer:
		case <-m.wake:
		}
	}
}

// refresh fetches a certificate for e, whose inflight channel the caller has
// set, and stores it or schedules a retry.
func (m *Manager) refresh(ctx context.Context, e *managedCert) error {
	start := m.now()
	cert, roots, err := m.fetch(ctx, e.id, start)
	now := m.now()

	msg, level, attrs, err := m.store(ctx, e, cert, roots, err, start, now)
	m.log.Log(ctx, level, msg, attrs...)
	return err
}

// store records the outcome of a fetch for e, ends e's inflight fetch, and
// returns what to log (outside the lock).
func (m *Manager) store(ctx context.Context, e *managedCert, cert *tls.Certificate, roots []*x509.Certificate, err error, start, now time.Time) (string, slog.Level, []any, error) {
	m.mu.Lock()
	defer func() {
		close(e.inflight)
		e.inflight = nil
		m.mu.Unlock()
		m.poke()
	}()
	id := e.id.String()
	if m.entries[e.id] != e {
		return "certificate discarded for a removed identity", slog.LevelDebug, []any{"id", id},
			fmt.Errorf("%w: %s was removed", ErrUnknownIdentity, e.id)
	}
	if err != nil {
		if ctx.Err() != nil {
			// Shutting down (or the caller of Add gave up): try again
			// soon, without counting a failure against the CA.
			e.next = now
			return "certificate fetch cancelled", slog.LevelDebug, []any{"id", id, "err", err}, err
		}
		e.failures++
		e.lastErr = err
		delay := m.backoff(e.failures)
		e.next = now.Add(delay)
		attrs := []any{"id", id, "err", err, "failures", e.failures, "retryIn", delay}
		if e.cert != nil {
			attrs = append(attrs, "currentNotAfter", e.cert.Leaf.NotAfter, "currentValid", now.Before(e.cert.Leaf.NotAfter))
		}
		return "certificate fetch failed", slog.LevelWarn, attrs, err
	}

	rotated := e.cert != nil
	e.cert, e.failures, e.lastErr = cert, 0, nil
	e.next = m.rotationTime(cert.Leaf, start, now)
	close(m.changed)
	m.changed = make(chan struct{})
	added := m.addRootsLocked(roots, now)
	return "certificate issued", slog.LevelInfo, []any{"id", id, "serial", cert.Leaf.SerialNumber.Text(16),
		"notBefore", cert.Leaf.NotBefore, "notAfter", cert.Leaf.NotAfter, "nextRotation", e.next,
		"rotated", rotated, "newRoots", added, "roots", len(m.roots)}, nil
}

// fetch makes a key and CSR for id, has them signed, and checks the result.
func (m *Manager) fetch(ctx context.Context, id SPIFFEID, start time.Time) (*tls.Certificate, []*x509.Certificate, error) {
	key, err := GenerateKey()
	if err != nil {
		return nil, nil, fmt.Errorf("generate key for %s: %w", id, err)
	}
	csr, err := CreateCSR(key, id)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR for %s: %w", id, err)
	}
	fctx, cancel := context.WithTimeout(ctx, m.opts.FetchTimeout)
	chain, roots, err := m.fetcher.Fetch(fctx, id, csr, m.opts.Validity)
	cancel()
	if err != nil {
		return nil, nil, fmt.Errorf("fetch certificate for %s: %w", id, err)
	}
	if err := m.checkChain(id, key, chain, roots); err != nil {
		return nil, nil, fmt.Errorf("certificate for %s from the CA: %w", id, err)
	}
	return NewTLSCertificate(chain, key), roots, nil
}

// checkChain verifies that chain is a certificate for id and key that chains,
// for both client and server use, to the known roots or the new ones.
func (m *Manager) checkChain(id SPIFFEID, key crypto.Signer, chain, roots []*x509.Certificate) error {
	if len(chain) == 0 || slices.Contains(chain, nil) {
		return fmt.Errorf("%w: empty chain", ErrInvalidCertificate)
	}
	leaf := chain[0]
	got, err := IDFromCert(leaf)
	if err != nil {
		return err
	}
	if got != id {
		return fmt.Errorf("%w: issued for %s", ErrInvalidCertificate, got)
	}
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return fmt.Errorf("%w: public key is not the one in the CSR", ErrInvalidCertificate)
	}
	pool := x509.NewCertPool()
	m.mu.RLock()
	for _, r := range m.roots {
		pool.AddCert(r)
	}
	m.mu.RUnlock()
	for _, r := range roots {
		if r != nil {
			pool.AddCert(r)
		}
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots: pool, Intermediates: inter, CurrentTime: m.now(), KeyUsages: []x509.ExtKeyUsage{usage},
		}); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidCertificate, err)
		}
	}
	return nil
}

// rotationTime is when a certificate fetched at start and stored at now is
// replaced.
func (m *Manager) rotationTime(leaf *x509.Certificate, start, now time.Time) time.Time {
	from := start
	if leaf.NotBefore.After(from) {
		from = leaf.NotBefore
	}
	at := from.Add(time.Duration(float64(leaf.NotAfter.Sub(from)) * m.opts.RotateFraction))
	if earliest := now.Add(m.opts.RetryMin); at.Before(earliest) {
		at = earliest
	}
	return at
}

// backoff is the delay before the retry after the given number of
// consecutive failures: RetryMin doubled per failure, capped at RetryMax,
// with full jitter.
func (m *Manager) backoff(failures int) time.Duration {
	d := m.opts.RetryMin
	for i := 1; i < failures && d < m.opts.RetryMax; i++ {
		d *= 2
	}
	d = min(d, m.opts.RetryMax)
	return m.randN(d) + 1 // in (0, d]
}

// addRootsLocked adds roots to the bundle, drops expired ones, and publishes
// a new pool if anything changed. It returns how many roots were new.
func (m *Manager) addRootsLocked(roots []*x509.Certificate, now time.Time) int {
	added, dropped := 0, 0
	for _, r := range roots {
		if r == nil {
			continue
		}
		if _, ok := m.roots[string(r.Raw)]; !ok && now.Before(r.NotAfter) {
			m.roots[string(r.Raw)] = r
			added++
		}
	}
	for k, r := range m.roots {
		if !now.Before(r.NotAfter) {
			delete(m.roots, k)
			dropped++
		}
	}
	if added+dropped > 0 || m.pool.Load() == nil && len(m.roots) > 0 {
		pool := x509.NewCertPool()
		for _, r := range m.roots {
			pool.AddCert(r)
		}
		m.pool.Store(pool)
	}
	return added
}

func (e *managedCert) validAt(now time.Time) bool {
	return e.cert != nil && now.Before(e.cert.Leaf.NotAfter)
}

// CertStatus describes one tracked identity for an admin dump. It holds no key.
type CertStatus struct {
	// ID is the SPIFFE ID.
	ID string `json:"id"`
	// Serial is the certificate's serial number in hex; empty before the
	// first successful fetch.
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	// Valid reports whether the certificate is being served (not expired).
	Valid bool `json:"valid"`
	// NextRefresh is when the next fetch is due: the rotation time, or the
	// retry time after a failure.
	NextRefresh time.Time `json:"nextRefresh,omitzero"`
	// Fetching reports a fetch under way.
	Fetching bool `json:"fetching,omitempty"`
	// Failures counts consecutive failed fetches; LastError is the last one's.
	Failures  int    `json:"failures,omitempty"`
	LastError string `json:"lastError,omitempty"`
}

// RootStatus describes one certificate of the trust bundle.
type RootStatus struct {
	Subject  string    `json:"subject"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"notAfter"`
}

// ManagerSnapshot is the state of a Manager for an admin dump.
type ManagerSnapshot struct {
	// Identities are sorted by ID.
	Identities []CertStatus `json:"identities"`
	// Roots are sorted by NotAfter.
	Roots []RootStatus `json:"roots"`
}

// Snapshot returns the tracked identities and the trust bundle.
func (m *Manager) Snapshot() ManagerSnapshot {
	now := m.now()
	m.mu.RLock()
	defer m.mu.RUnlock()
	s := ManagerSnapshot{Identities: []CertStatus{}, Roots: []RootStatus{}}
	for _, e := range m.entries {
		st := CertStatus{ID: e.id.String(), NextRefresh: e.next, Fetching: e.inflight != nil, Failures: e.failures}
		if e.lastErr != nil {
			st.LastError = e.lastErr.Error()
		}
		if e.cert != nil {
			l := e.cert.Leaf
			st.Serial, st.NotBefore, st.NotAfter, st.Valid = l.SerialNumber.Text(16), l.NotBefore, l.NotAfter, now.Before(l.NotAfter)
		}
		s.Identities = append(s.Identities, st)
	}
	sort.Slice(s.Identities, func(i, j int) bool { return s.Identities[i].ID < s.Identities[j].ID })
	for _, r := range m.roots {
		s.Roots = append(s.Roots, RootStatus{Subject: r.Subject.String(), Serial: r.SerialNumber.Text(16), NotAfter: r.NotAfter})
	}
	sort.Slice(s.Roots, func(i, j int) bool { return s.Roots[i].NotAfter.Before(s.Roots[j].NotAfter) })
	return s
}
