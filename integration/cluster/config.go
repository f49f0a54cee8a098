package cluster

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/template"
)

// Fixed addresses, names and host paths of the cluster (see the package doc).
const (
	DefaultStateDir = "/var/lib/ambit-cluster"
	NodeName        = "ambit-node"
	NodeIP          = "10.252.0.1"
	NodeRange       = "10.252.0.0/24"
	NodeLink        = "ambitnode0"
	BridgeName      = "ambitbr0"
	PodCIDR         = "10.253.0.0/24"
	PodGateway      = "10.253.0.1"
	ServiceCIDR     = "10.254.0.0/20"
	APIServiceIP    = "10.254.0.1"
	DNSServiceIP    = "10.254.0.10"
	ClusterDomain   = "cluster.local"
	APIServerPort   = 6443
	EtcdPort        = 12379
	EtcdPeerPort    = 12380

	CNIConfDir  = "/etc/cni/net.d"
	CNIBinDir   = "/opt/cni/bin"
	CNIConfFile = "10-ambit-cluster.conflist"
	CNINetwork  = "ambit-cluster"
	NetnsDir    = "/run/netns"

	// CoreDNSImage is the image the kube-dns Deployment runs, built from
	// the coredns tools group.
	CoreDNSImage = "docker.io/ambit/coredns:v1.15.0"
	// TestImage is the cluster's own small image (tinyapp): "pause",
	// "serve ADDR" and "get URL". Its entrypoint is /usr/local/bin/tinyapp.
	TestImage = "docker.io/ambit/cluster-tinyapp:dev"
)

// CNIPlugins are the reference plugins the node's network uses.
var CNIPlugins = []string{"bridge", "host-local", "loopback", "portmap"}

// paths are the files and folders of one state folder.
type paths struct {
	State, PKI, Config, Logs, Pids, Images, Etcd, Kubelet, PodLogs, CNI string
	Containerd, ContainerdRoot, ContainerdState, ContainerdTmp          string
	ContainerdSock, Kubeconfig, Host, Lock                              string
}

func newPaths(state string) paths {
	j := func(p ...string) string { return filepath.Join(append([]string{state}, p...)...) }
	return paths{
		State: state, PKI: j("pki"), Config: j("config"), Logs: j("logs"), Pids: j("pids"),
		Images: j("images"), Etcd: j("etcd"), Kubelet: j("kubelet"), PodLogs: j("pod-logs"),
		CNI:             j("cni"),
		Containerd:      j("containerd"),
		ContainerdRoot:  j("containerd", "root"),
		ContainerdState: j("containerd", "state"),
		ContainerdTmp:   j("containerd", "tmp"),
		ContainerdSock:  j("containerd", "containerd.sock"),
		Kubeconfig:      j("kubeconfig"),
		Host:            j("host.json"),
		Lock:            j(".lock"),
	}
}

// kubeconfig renders a kubeconfig reaching the apiserver with the client
// certificate <pki>/<cert>.crt, embedded so the file stands alone.
func kubeconfig(pki, cert, user string) ([]byte, error) {
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(pki, name))
		return base64.StdEncoding.EncodeToString(b), err
	}
	ca, err := read("ca.crt")
	if err != nil {
		return nil, err
	}
	crt, err := read(cert + ".crt")
	if err != nil {
		return nil, err
	}
	key, err := read(cert + ".key")
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: ambit-cluster
  cluster:
    server: https://%s:%d
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: ambit-cluster
  context:
    cluster: ambit-cluster
    user: %s
current-context: ambit-cluster
`, NodeIP, APIServerPort, ca, user, crt, key, user), nil
}

func render(name, text string, data any) ([]byte, error) {
	t, err := template.New(name).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// tmplData is what the configuration templates see.
type tmplData struct {
	P                                                   paths
	Node, NodeIP, PodCIDR, ServiceCIDR, DNSIP, Domain   string
	Runc, PauseImage, CNIConfDir, CNIBinDir, CoreDNSImg string
	APIPort, EtcdPort, EtcdPeerPort                     int
}

const containerdTOML = `version = 3
root = "{{.P.ContainerdRoot}}"
state = "{{.P.ContainerdState}}"
temp = "{{.P.ContainerdTmp}}"
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
]

[grpc]
  address = "{{.P.ContainerdSock}}"

[ttrpc]
  address = "{{.P.ContainerdSock}}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{{.PauseImage}}"

[plugins."io.containerd.cri.v1.runtime"]
  enable_cdi = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{{.CNIBinDir}}"]
    conf_dir = "{{.CNIConfDir}}"
    max_conf_num = 1
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{{.Runc}}"
        SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`

const kubeletYAML = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
makeIPTablesUtilChains: false
resolvConf: ""
address: {{.NodeIP}}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://{{.P.ContainerdSock}}
imageServiceEndpoint: unix://{{.P.ContainerdSock}}
podLogsDir: {{.P.PodLogs}}
clusterDomain: {{.Domain}}
clusterDNS: [{{.DNSIP}}]
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {{.P.PKI}}/ca.crt
authorization:
  mode: Webhook
tlsCertFile: {{.P.PKI}}/kubelet.crt
tlsPrivateKeyFile: {{.P.PKI}}/kubelet.key
rotateCertificates: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 87600h
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
evictionPressureTransitionPeriod: 5s
nodeStatusReportFrequency: 10s
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
fileCheckFrequency: 10s
maxPods: 110
`

const kubeProxyYAML = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: {{.Node}}
bindAddress: {{.NodeIP}}
clusterCIDR: {{.PodCIDR}}
nodePortAddresses: ["{{.NodeIP}}/32"]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
clientConnection:
  kubeconfig: {{.P.Config}}/kube-proxy.kubeconfig
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
`

// cniConflist is the node's network: a bridge with the pod range and routes
// to the node and service ranges only (no default route), portmap for
// hostPorts.
func cniConflist(dataDir string) ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       CNINetwork,
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": BridgeName, "isGateway": true, "ipMasq": false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": dataDir,
					"ranges":  []any{[]any{map[string]any{"subnet": PodCIDR, "gateway": PodGateway}}},
					"routes":  []any{map[string]any{"dst": NodeRange}, map[string]any{"dst": ServiceCIDR}},
				},
			},
			map[string]any{"type": "portmap", "backend": "nftables", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	return append(b, '\n'), err
}

// coreDNSManifest is kube-dns: CoreDNS answering for cluster.local and the
// reverse zones only, with no forward plugin, at DNSServiceIP.
const coreDNSManifest = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- kind: ServiceAccount
  name: coredns
  namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
data:
  Corefile: |
    .:53 {
        errors
        log
        health :8080
        ready :8181
        kubernetes {{.Domain}} in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        prometheus :9153
        cache 30
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector:
    matchLabels: {k8s-app: kube-dns}
  template:
    metadata:
      labels: {k8s-app: kube-dns}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      priorityClassName: system-cluster-critical
      containers:
      - name: coredns
        image: {{.CoreDNSImg}}
        imagePullPolicy: IfNotPresent
        command: [/usr/local/bin/coredns, -conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        - {name: metrics, containerPort: 9153, protocol: TCP}
        securityContext:
          runAsUser: 0
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
        resources:
          requests: {cpu: 10m, memory: 30Mi}
          limits: {memory: 170Mi}
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          periodSeconds: 10
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
        volumeMounts:
        - {name: config, mountPath: /etc/coredns, readOnly: true}
      volumes:
      - name: config
        configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: {{.DNSIP}}
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: metrics, port: 9153, protocol: TCP}
`

// writeFileIfChanged writes data to path unless it already holds exactly
// that (kube-proxy exits when its config file is rewritten).
func writeFileIfChanged(path string, data []byte, mode os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	return writeFileAtomic(path, data, mode)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// shortList renders a list for an error message.
func shortList(s []string) string { return strings.Join(s, ", ") }
