package ca

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Defaults of Config.
const (
	// DefaultListenAddress is where the CA listens: port 15012 on every address.
	DefaultListenAddress = ":15012"
	// DefaultSystemNamespace holds the CA Secret, the root ConfigMap and ztunnel.
	DefaultSystemNamespace = "ambit-system"
	// DefaultSecretName is the Secret with the root key and certificate.
	DefaultSecretName = "ambit-ca"
	// DefaultConfigMapName is the ConfigMap the root certificate is published to.
	DefaultConfigMapName = "ambit-ca-root"
	// DefaultServiceName is the controller's Service; its DNS names are the
	// serving certificate's SANs.
	DefaultServiceName = "ambit-controller"
	// DefaultZtunnelServiceAccount is the ztunnel DaemonSet's service account.
	DefaultZtunnelServiceAccount = "ambit-system/ztunnel"
	// Audience is the audience a caller's token must be issued for.
	Audience = "ambit-ca"
	// DefaultMaxCertLifetime caps the validity a caller may ask for.
	DefaultMaxCertLifetime = 7 * 24 * time.Hour
	// DefaultRootLifetime is the lifetime of a generated root certificate.
	DefaultRootLifetime = 10 * 365 * 24 * time.Hour
	// DefaultServingCertLifetime is the lifetime of the CA's own TLS certificate.
	DefaultServingCertLifetime = 24 * time.Hour
	// MinCertLifetime is the shortest validity a caller may ask for.
	MinCertLifetime = time.Minute
)

// Secret and ConfigMap keys and annotations.
const (
	// SecretCertKey holds the PEM CA certificate in the CA Secret.
	SecretCertKey = "ca.crt"
	// SecretKeyKey holds the PEM CA private key in the CA Secret.
	SecretKeyKey = "ca.key"
	// ConfigMapRootKey holds the PEM root certificate in the root ConfigMap.
	ConfigMapRootKey = "root-cert.pem"
	// GeneratedAnnotation marks a CA Secret that the controller generated
	// (value "true"); Secrets without it were supplied by the operator.
	GeneratedAnnotation = "ambit.dev/ca-generated"
)

// Config configures the CA. The zero value of each field means its default;
// Defaulted fills them in.
type Config struct {
	// TrustDomain is the trust domain of every identity issued.
	TrustDomain string
	// SystemNamespace holds the CA Secret and the root ConfigMap.
	SystemNamespace string
	// SecretName is the CA Secret's name.
	SecretName string
	// ConfigMapName is the root ConfigMap's name.
	ConfigMapName string
	// ServiceName is the controller Service whose DNS names the serving
	// certificate carries: NAME.NAMESPACE.svc and NAME.NAMESPACE.svc.cluster.local.
	ServiceName string
	// ExtraDNSNames are added to the serving certificate's DNS SANs.
	ExtraDNSNames []string
	// ZtunnelServiceAccount is "namespace/name" of the ztunnel service account.
	ZtunnelServiceAccount string
	// DefaultCertLifetime is the validity of a certificate when the caller
	// asks for none.
	DefaultCertLifetime time.Duration
	// MaxCertLifetime caps the validity a caller may ask for.
	MaxCertLifetime time.Duration
	// RootLifetime is the lifetime of a generated root certificate.
	RootLifetime time.Duration
	// ServingCertLifetime is the lifetime of the CA's TLS serving certificate.
	ServingCertLifetime time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Defaulted returns c with every zero field set to its default.
func (c Config) Defaulted() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defDur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.TrustDomain, identity.DefaultTrustDomain)
	def(&c.SystemNamespace, DefaultSystemNamespace)
	def(&c.SecretName, DefaultSecretName)
	def(&c.ConfigMapName, DefaultConfigMapName)
	def(&c.ServiceName, DefaultServiceName)
	def(&c.ZtunnelServiceAccount, DefaultZtunnelServiceAccount)
	defDur(&c.DefaultCertLifetime, identity.DefaultCertLifetime)
	defDur(&c.MaxCertLifetime, DefaultMaxCertLifetime)
	defDur(&c.RootLifetime, DefaultRootLifetime)
	defDur(&c.ServingCertLifetime, DefaultServingCertLifetime)
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate checks a defaulted Config.
func (c Config) Validate() error {
	var errs []error
	if _, err := identity.ParseSPIFFEID("spiffe://" + c.TrustDomain + "/ns/x/sa/x"); err != nil {
		errs = append(errs, fmt.Errorf("trust domain: %w", err))
	}
	if _, _, err := c.ztunnel(); err != nil {
		errs = append(errs, err)
	}
	if c.MaxCertLifetime < MinCertLifetime {
		errs = append(errs, fmt.Errorf("maximum certificate lifetime %v is below %v", c.MaxCertLifetime, MinCertLifetime))
	}
	if c.DefaultCertLifetime < MinCertLifetime {
		errs = append(errs, fmt.Errorf("default certificate lifetime %v is below %v", c.DefaultCertLifetime, MinCertLifetime))
	}
	if c.ServingCertLifetime < 2*time.Minute {
		errs = append(errs, fmt.Errorf("serving certificate lifetime %v is below 2m", c.ServingCertLifetime))
	}
	return errors.Join(errs...)
}

// ztunnel splits ZtunnelServiceAccount into namespace and name.
func (c Config) ztunnel() (ns, name string, err error) {
	ns, name, ok := strings.Cut(c.ZtunnelServiceAccount, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("ztunnel service account %q: want namespace/name", c.ZtunnelServiceAccount)
	}
	return ns, name, nil
}

// ServingDNSNames are the DNS SANs of the CA's serving certificate.
func (c Config) ServingDNSNames() []string {
	base := c.ServiceName + "." + c.SystemNamespace + ".svc"
	names := []string{base, base + ".cluster.local"}
	for _, n := range c.ExtraDNSNames {
		if n != "" && !contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
