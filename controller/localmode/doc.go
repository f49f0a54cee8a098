// Package localmode runs the controller without a cluster: it reads the
// Kubernetes objects of every *.yaml and *.yml file in a folder
// (multi-document YAML, as translate.LoadInput parses it), runs the same
// pipeline as cluster mode (translate, then publish to the xDS server), and
// watches the folder with fsnotify, reloading ~200ms after the last change.
//
// A file that does not parse keeps the last good configuration published
// and logs an error naming the file. There is no status writing, no waypoint
// deployment and no CA in local mode.
package localmode
