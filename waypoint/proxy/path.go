package proxy

import (
	"net/http"
	"strings"
)

// normalizePath removes "." and ".." segments from the request's path
// (RFC 3986 section 5.2.4), so that routing, authorization and the
// endpoint all see the same path: "/public/../admin" is "/admin"
// everywhere. A ".." never climbs above the root. Other paths, including
// ones with repeated slashes, are left as they are.
func normalizePath(r *http.Request) {
	if r.URL == nil || !hasDotSegment(r.URL.Path) {
		return
	}
	r.URL.Path = removeDotSegments(r.URL.Path)
	r.URL.RawPath = ""
}

func hasDotSegment(p string) bool {
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

// removeDotSegments resolves "." and ".." in an absolute path, keeping a
// trailing slash where the last segment was one of them or empty.
func removeDotSegments(p string) string {
	segs := strings.Split(p, "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			trailing = last
		case "..":
			if len(out) > 1 || (len(out) == 1 && out[0] != "") {
				out = out[:len(out)-1]
			}
			trailing = last
		default:
			out = append(out, s)
			trailing = false
		}
	}
	res := strings.Join(out, "/")
	if !strings.HasPrefix(res, "/") {
		res = "/" + res
	}
	if trailing && !strings.HasSuffix(res, "/") {
		res += "/"
	}
	return res
}
