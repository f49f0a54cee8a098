package translate

import (
	"bufio"
	"bytes"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"io"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapiv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
	trafficv1alpha1 "github.com/ambit-mesh/ambit/apis/traffic/v1alpha1"
)

// NewScheme returns a scheme that knows every kind translation reads: core
// (Namespace, Pod, Service, ServiceAccount), discovery (EndpointSlice),
// Gateway API v1 and v1beta1, and Ambit's security and traffic kinds.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, discoveryv1.AddToScheme, gwapiv1.Install, gwapiv1beta1.Install,
		securityv1alpha1.AddToScheme, trafficv1alpha1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err) // static registration; cannot fail
		}
	}
	return s
}

// LoadInput decodes a multi-document YAML (or JSON) stream of Kubernetes
// objects into an Input, adding them to what it already holds; "kind: List"
// documents are unpacked. Decoding is strict: an unknown apiVersion/kind, an
// unknown or duplicated field is an error naming the document.
func LoadInput(data []byte) (Input, error) {
	var in Input
	err := in.Add(data)
	return in, err
}

// Add decodes the objects of a YAML stream into in (see LoadInput).
func (in *Input) Add(data []byte) error {
	scheme := NewScheme()
	dec := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true, Strict: true})
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("document %d: %w", doc, err)
		}
		if err := in.addDocument(dec, raw); err != nil {
			return fmt.Errorf("document %d: %w", doc, err)
		}
	}
}

func (in *Input) addDocument(dec runtime.Decoder, raw []byte) error {
	var head struct {
		APIVersion string               `json:"apiVersion"`
		Kind       string               `json:"kind"`
		Items      []stdjson.RawMessage `json:"items"`
	}
	if err := yaml.Unmarshal(raw, &head); err != nil {
		return err
	}
	if head.APIVersion == "" && head.Kind == "" {
		var m map[string]any
		if err := yaml.Unmarshal(raw, &m); err == nil && len(m) == 0 {
			return nil // empty document (or only comments)
		}
		return errors.New("object without apiVersion and kind")
	}
	if head.APIVersion == "v1" && head.Kind == "List" {
		for i, item := range head.Items {
			if err := in.addDocument(dec, item); err != nil {
				return fmt.Errorf("item %d: %w", i, err)
			}
		}
		return nil
	}
	obj, gvk, err := dec.Decode(raw, nil, nil)
	if err != nil {
		if runtime.IsNotRegisteredError(err) {
			return fmt.Errorf("unsupported kind %s %s: translation reads only Namespaces, Pods, Services, ServiceAccounts, EndpointSlices, Gateway API and Ambit objects", head.APIVersion, head.Kind)
		}
		return fmt.Errorf("%s %s: %w", head.APIVersion, head.Kind, err)
	}
	switch o := obj.(type) {
	case *corev1.Namespace:
		in.Namespaces = append(in.Namespaces, *o)
	case *corev1.Pod:
		in.Pods = append(in.Pods, *o)
	case *corev1.Service:
		in.Services = append(in.Services, *o)
	case *corev1.ServiceAccount:
		in.ServiceAccounts = append(in.ServiceAccounts, *o)
	case *discoveryv1.EndpointSlice:
		in.EndpointSlices = append(in.EndpointSlices, *o)
	case *gwapiv1.GatewayClass:
		in.GatewayClasses = append(in.GatewayClasses, *o)
	case *gwapiv1beta1.GatewayClass:
		in.GatewayClasses = append(in.GatewayClasses, gwapiv1.GatewayClass(*o))
	case *gwapiv1.Gateway:
		in.Gateways = append(in.Gateways, *o)
	case *gwapiv1beta1.Gateway:
		in.Gateways = append(in.Gateways, gwapiv1.Gateway(*o))
	case *gwapiv1.HTTPRoute:
		in.HTTPRoutes = append(in.HTTPRoutes, *o)
	case *gwapiv1beta1.HTTPRoute:
		in.HTTPRoutes = append(in.HTTPRoutes, gwapiv1.HTTPRoute(*o))
	case *gwapiv1.GRPCRoute:
		in.GRPCRoutes = append(in.GRPCRoutes, *o)
	case *gwapiv1beta1.ReferenceGrant:
		in.ReferenceGrants = append(in.ReferenceGrants, *o)
	case *gwapiv1.ReferenceGrant:
		in.ReferenceGrants = append(in.ReferenceGrants, gwapiv1beta1.ReferenceGrant(*o))
	case *securityv1alpha1.AuthorizationPolicy:
		in.AuthorizationPolicies = append(in.AuthorizationPolicies, *o)
	case *securityv1alpha1.PeerAuthentication:
		in.PeerAuthentications = append(in.PeerAuthentications, *o)
	case *trafficv1alpha1.BackendPolicy:
		in.BackendPolicies = append(in.BackendPolicies, *o)
	case *trafficv1alpha1.FaultInjection:
		in.FaultInjections = append(in.FaultInjections, *o)
	default:
		return fmt.Errorf("unsupported kind %s: translation does not read it", gvk)
	}
	return nil
}
