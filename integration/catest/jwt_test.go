//go:build envtest

package catest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
)

// signES256 makes a compact JWS (a JWT) of claims, signed with an ECDSA
// P-256 key as the apiserver's service-account signer does.
func signES256(key crypto.Signer, claims map[string]any) (string, error) {
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve.Params().BitSize != 256 {
		return "", fmt.Errorf("signing key is %T, want ECDSA P-256", key)
	}
	enc := base64.RawURLEncoding
	header, _ := json.Marshal(map[string]string{"alg": "ES256", "typ": "JWT"})
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signing := enc.EncodeToString(header) + "." + enc.EncodeToString(body)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, ec, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	fill := func(dst []byte, n *big.Int) { n.FillBytes(dst) }
	fill(sig[:32], r)
	fill(sig[32:], s)
	return signing + "." + enc.EncodeToString(sig), nil
}
