package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// ErrBadCASecret is wrapped by every error about a CA Secret whose content
// cannot be used; the CA refuses to start with it.
var ErrBadCASecret = errors.New("unusable CA secret")

// ParseCASecret checks the content of a CA Secret (keys ca.crt and ca.key)
// and returns an Authority for trustDomain. ca.crt must hold exactly one PEM
// certificate that is a CA (basic constraints CA:TRUE, key usage certSign
// when key usage is present) and valid at now; ca.key must be its private key.
func ParseCASecret(data map[string][]byte, trustDomain string, now time.Time) (*identity.Authority, error) {
	certPEM, keyPEM := data[SecretCertKey], data[SecretKeyKey]
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return nil, fmt.Errorf("%w: keys %s and %s are both required", ErrBadCASecret, SecretCertKey, SecretKeyKey)
	}
	certs, err := identity.ParseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadCASecret, SecretCertKey, err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%w: %s holds %d certificates, want exactly one", ErrBadCASecret, SecretCertKey, len(certs))
	}
	cert := certs[0]
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("%w: %s (subject %q) is not a CA certificate", ErrBadCASecret, SecretCertKey, cert.Subject)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%w: %s key usage does not include certificate signing", ErrBadCASecret, SecretCertKey)
	}
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return nil, fmt.Errorf("%w: %s is valid from %v to %v, not now (%v)", ErrBadCASecret, SecretCertKey,
			cert.NotBefore.UTC(), cert.NotAfter.UTC(), now.UTC())
	}
	key, err := identity.ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadCASecret, SecretKeyKey, err)
	}
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("%w: %s is not the private key of the certificate in %s", ErrBadCASecret, SecretKeyKey, SecretCertKey)
	}
	return &identity.Authority{Cert: cert, Key: key, TrustDomain: trustDomain}, nil
}

// newCASecretData generates a root for trustDomain and returns it as CA
// Secret data.
func newCASecretData(trustDomain string, lifetime time.Duration) (map[string][]byte, error) {
	a, err := identity.NewRootAuthority(trustDomain, lifetime)
	if err != nil {
		return nil, err
	}
	ec, ok := a.Key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("generated root key is %T, want ECDSA", a.Key)
	}
	keyPEM, err := identity.EncodeKeyPEM(ec)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{SecretCertKey: identity.EncodeCertsPEM(a.Cert), SecretKeyKey: keyPEM}, nil
}

// LoadOrCreateRoot returns the Authority in the CA Secret. When the Secret
// does not exist, it generates a root and creates the Secret, marked with
// GeneratedAnnotation; when another instance created it first, it uses that
// one. An existing Secret is never modified.
func LoadOrCreateRoot(ctx context.Context, kube kubernetes.Interface, cfg Config, log *slog.Logger) (*identity.Authority, error) {
	cfg = cfg.Defaulted()
	secrets := kube.CoreV1().Secrets(cfg.SystemNamespace)
	sec, err := secrets.Get(ctx, cfg.SecretName, metav1.GetOptions{})
	switch {
	case err == nil:
	case apierrors.IsNotFound(err):
		data, genErr := newCASecretData(cfg.TrustDomain, cfg.RootLifetime)
		if genErr != nil {
			return nil, fmt.Errorf("generate root: %w", genErr)
		}
		sec, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Name: cfg.SecretName, Namespace: cfg.SystemNamespace,
				Annotations: map[string]string{GeneratedAnnotation: "true"},
				Labels:      map[string]string{"app.kubernetes.io/part-of": "ambit"},
			},
			Type: corev1.SecretTypeOpaque,
			Data: data,
		}, metav1.CreateOptions{})
		switch {
		case err == nil:
			log.InfoContext(ctx, "generated mesh root", "secret", cfg.SystemNamespace+"/"+cfg.SecretName)
		case apierrors.IsAlreadyExists(err):
			// Another instance won the race: use its root.
			log.InfoContext(ctx, "mesh root created concurrently, using it", "secret", cfg.SystemNamespace+"/"+cfg.SecretName)
			if sec, err = secrets.Get(ctx, cfg.SecretName, metav1.GetOptions{}); err != nil {
				return nil, fmt.Errorf("read CA secret %s/%s: %w", cfg.SystemNamespace, cfg.SecretName, err)
			}
		default:
			return nil, fmt.Errorf("create CA secret %s/%s: %w", cfg.SystemNamespace, cfg.SecretName, err)
		}
	default:
		return nil, fmt.Errorf("read CA secret %s/%s: %w", cfg.SystemNamespace, cfg.SecretName, err)
	}
	a, err := ParseCASecret(sec.Data, cfg.TrustDomain, cfg.Now())
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", cfg.SystemNamespace, cfg.SecretName, err)
	}
	a.Now = cfg.Now
	log.InfoContext(ctx, "loaded mesh root",
		"secret", cfg.SystemNamespace+"/"+cfg.SecretName,
		"generated", sec.Annotations[GeneratedAnnotation] == "true",
		"subject", a.Cert.Subject.String(), "notAfter", a.Cert.NotAfter.UTC())
	return a, nil
}

// PublishRoot writes the root certificates to the root ConfigMap (key
// root-cert.pem), creating it or updating it when its content differs.
func PublishRoot(ctx context.Context, kube kubernetes.Interface, cfg Config, roots []*x509.Certificate, log *slog.Logger) error {
	cfg = cfg.Defaulted()
	want := string(identity.EncodeCertsPEM(roots...))
	cms := kube.CoreV1().ConfigMaps(cfg.SystemNamespace)
	name := cfg.SystemNamespace + "/" + cfg.ConfigMapName
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cms.Get(ctx, cfg.ConfigMapName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = cms.Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{
					Name: cfg.ConfigMapName, Namespace: cfg.SystemNamespace,
					Labels: map[string]string{"app.kubernetes.io/part-of": "ambit"},
				},
				Data: map[string]string{ConfigMapRootKey: want},
			}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				// Created concurrently: retry as an update.
				return apierrors.NewConflict(corev1.Resource("configmaps"), cfg.ConfigMapName, err)
			}
			if err == nil {
				log.InfoContext(ctx, "published mesh root", "configmap", name)
			}
			return err
		}
		if err != nil {
			return err
		}
		if cm.Data[ConfigMapRootKey] == want {
			return nil
		}
		cm = cm.DeepCopy()
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[ConfigMapRootKey] = want
		if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			return err
		}
		log.InfoContext(ctx, "updated published mesh root", "configmap", name)
		return nil
	})
}
