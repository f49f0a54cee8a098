package translate

import (
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

// MarshalOutput renders an Output as stable, human-readable YAML: the
// resources in protojson form and the status as the Kubernetes API shows
// it, every map key sorted. The same Output always gives the same bytes
// (golden files, `ambitctl` dumps).
func MarshalOutput(out Output) ([]byte, error) {
	doc := map[string]any{}
	var err error
	add := func(key string, msgs []proto.Message) {
		if err != nil || len(msgs) == 0 {
			return
		}
		var list []any
		for _, m := range msgs {
			var b []byte
			if b, err = protojson.Marshal(m); err != nil {
				return
			}
			var v any
			if err = json.Unmarshal(b, &v); err != nil {
				return
			}
			list = append(list, v)
		}
		doc[key] = list
	}
	add("workloads", protoList(out.Workloads))
	add("services", protoList(out.Services))
	add("authorizations", protoList(out.Authorizations))
	add("waypoints", protoList(out.Waypoints))
	if err != nil {
		return nil, err
	}
	st := map[string]any{}
	if len(out.Status.GatewayClasses) > 0 {
		st["gatewayClasses"] = out.Status.GatewayClasses
	}
	if len(out.Status.Gateways) > 0 {
		st["gateways"] = byName(out.Status.Gateways)
	}
	if len(out.Status.HTTPRoutes) > 0 {
		st["httpRoutes"] = byName(out.Status.HTTPRoutes)
	}
	if len(out.Status.GRPCRoutes) > 0 {
		st["grpcRoutes"] = byName(out.Status.GRPCRoutes)
	}
	if len(out.Status.Policies) > 0 {
		p := map[string]any{}
		for k, v := range out.Status.Policies {
			p[fmt.Sprintf("%s %s", k.Kind, k.NamespacedName)] = v
		}
		st["policies"] = p
	}
	if len(st) > 0 {
		doc["status"] = st
	}
	return yaml.Marshal(doc)
}

func protoList[M proto.Message](in []M) []proto.Message {
	out := make([]proto.Message, 0, len(in))
	for _, m := range in {
		out = append(out, m)
	}
	return out
}

func byName[V any](m map[types.NamespacedName]V) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k.String()] = v
	}
	return out
}
