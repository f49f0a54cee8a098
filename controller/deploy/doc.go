// Package deploy runs waypoints: for every Gateway of class ambit-waypoint it
// renders (Render, a pure function) and applies (Deployer) a ServiceAccount,
// a Deployment and a ClusterIP Service named after the Gateway, and a
// ConfigMap <gateway>-ambit-ca-root with the mesh root certificates (mounted
// at /etc/ambit/ca, named by AMBIT_CA_ROOT_FILE), each controlled by the
// Gateway (ownerReference controller=true, blockOwnerDeletion=true), so the
// garbage collector removes them with it; it also deletes the children of
// Gateways that are gone or no longer of that class. It creates the
// GatewayClass ambit-waypoint itself when there is none, so that one
// `kubectl apply -k manifests/` installs Ambit (a GatewayClass in the same
// apply as its CRD would find no kind yet).
//
// Applying uses server-side apply with field manager "ambit-controller". To
// avoid needless requests, the Deployer remembers, per object, the hash of
// what it applied and the resourceVersion the server returned; an object is
// applied again only when the rendering changed or someone else changed the
// object since. An existing object of the same name that the Gateway does not
// control is never taken over: the Deployer reports a conflict instead.
package deploy
