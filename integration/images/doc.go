// Package images builds Ambit's container images without Docker: each image is
// scratch plus one small base layer (/etc/passwd and /etc/group with root and
// the non-root user 1337 "ambit", a /tmp of mode 1777) and one layer of static
// Go binaries under /usr/local/bin. Images are written as OCI image-layout tar
// archives that `ctr -n k8s.io images import` names from the index
// annotations, and can be pushed to a registry. Every input that reaches the
// image (file modes, owners, times, the creation time) is fixed, so the same
// binaries and options give the same digest.
package images
