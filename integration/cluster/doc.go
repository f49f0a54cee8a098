// Package cluster runs a real single-node Kubernetes on this machine, built
// from source by `make tools`: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, kubelet and kube-proxy (nftables mode) as host processes,
// containerd with a seccomp-enabled runc as the node's runtime, the CNI
// reference plugins (bridge, host-local, loopback, portmap) for pod networking,
// and CoreDNS as the kube-dns Deployment in kube-system. Images are imported
// from OCI archives into containerd's k8s.io namespace: there is no registry.
//
// Address plan (private ranges that nothing else on the machine uses; the
// network-namespace tier keeps to 10.250.0.0/16):
//
//	node address     10.252.0.1/32 on the dummy link ambitnode0 (kubelet,
//	                 kube-apiserver :6443, NodePorts)
//	pod range        10.253.0.0/24 on the bridge ambitbr0 (gateway 10.253.0.1)
//	service range    10.254.0.0/20 (kubernetes 10.254.0.1, kube-dns 10.254.0.10)
//	etcd             127.0.0.1:12379 (peer 12380), plain HTTP on loopback
//
// Pods get routes to the pod, node and service ranges only, and no default
// route, so nothing they send can leave the machine; CoreDNS has no forward
// plugin.
//
// Everything the cluster keeps lives under one state folder (default
// /var/lib/ambit-cluster): certificates, kubeconfigs, configuration, the etcd
// data, containerd's root and state, kubelet's root, one log per component
// (logs/<component>.log) and one PID file per process (pids/). The host paths
// the node needs outside it (/etc/cni/net.d, /opt/cni/bin, /var/lib/cni,
// /var/log/pods, /var/lib/kubelet, /run/containerd, /run/ambit) are recorded
// when Up creates them and removed by Down; in folders that already existed
// only the files the cluster wrote are removed.
//
// Up is idempotent: on a running, healthy cluster it returns after a health
// check; after a crash it sweeps the leftovers first. Down stops processes by
// recorded PID (TERM, then KILL), kills what is left in the kubepods cgroups
// and any containerd shim bound to the cluster's socket (found by PID in
// /proc), lazily unmounts everything under the state folder and the
// /run/netns/cni-* namespaces, removes the cgroups, links and nftables tables
// the cluster made and restores net.ipv4.ip_forward. It works when nothing is
// up and after every process was killed with SIGKILL.
package cluster
