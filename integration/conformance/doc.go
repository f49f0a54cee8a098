// Package conformance runs the Gateway API conformance suite
// (sigs.k8s.io/gateway-api/conformance, the version of the pinned
// gateway-api module) against Ambit on the one-machine Kubernetes of
// integration/cluster, with the mesh profiles MESH-HTTP and MESH-GRPC (GAMMA:
// HTTPRoutes and GRPCRoutes whose parent is a Service).
//
// The test carries the build tag conformance and is run by
// hack/conformance.sh, which brings the cluster up, builds and imports the
// images the suite's manifests name (cmd/ambit-conformance-images), installs
// Ambit from manifests/ and passes:
//
//	AMBIT_CONFORMANCE_KUBECONFIG  the cluster's kubeconfig (required)
//	AMBIT_CONFORMANCE_VERSION     Ambit's version, for the report (required)
//	AMBIT_CONFORMANCE_REPORT      where the suite writes its YAML report
//	AMBIT_CONFORMANCE_FEATURES    comma-separated features to claim instead of
//	                              ClaimedFeatures
//	AMBIT_CONFORMANCE_PROFILES    comma-separated profiles (default MESH-HTTP,MESH-GRPC)
//	AMBIT_CONFORMANCE_RUN_TEST    run only this test (its short name)
//	AMBIT_CONFORMANCE_SKIP_TESTS  comma-separated short names to skip
//
// Ambit needs two things the suite's manifests do not carry, and both are
// given through the suite's own options or created beside its objects,
// never by editing its manifests: the namespace labels
// ambit.dev/dataplane-mode=ambient and ambit.dev/use-waypoint=waypoint
// (ConformanceOptions.NamespaceLabels, which the suite sets on every
// namespace it creates), and a waypoint Gateway named "waypoint" in each of
// the two mesh namespaces, created before the suite's setup and removed with
// the namespaces when the suite cleans up. docs/conformance/README.md has the
// results and how to reproduce them.
package conformance
