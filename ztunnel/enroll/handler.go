package enroll

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// Handler returns the HTTP handler of the API (see the package doc).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/pods", s.handleAdd)
	mux.HandleFunc("GET /v1/pods", s.handleList)
	mux.HandleFunc("GET /v1/pods/{uid}", s.handleGet)
	mux.HandleFunc("DELETE /v1/pods/{uid}", s.handleRemove)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok\n")
	})
	notAllowed := func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed,
			fmt.Sprintf("method %s is not allowed on %s", r.Method, r.URL.Path))
	}
	mux.HandleFunc("/v1/pods", notAllowed)
	mux.HandleFunc("/v1/pods/{uid}", notAllowed)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no endpoint %s", r.URL.Path))
	})
	return mux
}

func (s *Server) handleAdd(w http.ResponseWriter, r *http.Request) {
	var req AddPodRequest
	if !s.decode(w, r, &req) {
		return
	}
	pod, err := req.ToPod()
	if err != nil {
		s.writeErr(w, err)
		return
	}
	changed, err := s.Add(r.Context(), pod)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, AddPodResponse{Pod: pod, Changed: changed})
}

func (s *Server) handleRemove(w http.ResponseWriter, r *http.Request) {
	containerID := r.URL.Query().Get("containerID")
	if err := checkField("containerID", containerID, false); err != nil {
		s.writeErr(w, err)
		return
	}
	removed, err := s.Remove(r.Context(), r.PathValue("uid"), containerID)
	var hookErr *HookError
	if errors.As(err, &hookErr) {
		// The pod left the set; the hook's failure is only worth a log line.
		s.log.Warn("OnRemove failed", "pod", hookErr.Pod.Key(), "err", hookErr.Err)
		err = nil
	}
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, RemovePodResponse{Removed: removed})
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	uid := r.PathValue("uid")
	if err := checkUID(uid); err != nil {
		s.writeErr(w, err)
		return
	}
	p, ok := s.Get(uid)
	if !ok {
		writeError(w, http.StatusNotFound, CodeNotFound, fmt.Sprintf("pod %s is not enrolled", uid))
		return
	}
	writeJSON(w, http.StatusOK, GetResponse{Pod: p})
}

func (s *Server) handleList(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, ListResponse{Pods: s.Pods()})
}

// decode reads one JSON object of at most MaxRequestBytes into v, or writes
// the error answer and returns false.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	body := http.MaxBytesReader(w, r.Body, s.opts.MaxRequestBytes)
	dec := json.NewDecoder(body)
	err := dec.Decode(v)
	if err == nil {
		if dec.Decode(&struct{}{}) != io.EOF {
			err = errors.New("trailing data after the JSON object")
		}
	}
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge,
			fmt.Sprintf("request body is larger than %d bytes", tooLarge.Limit))
		return false
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, CodeInvalidArgument, "request body is empty")
		return false
	case err != nil:
		writeError(w, http.StatusBadRequest, CodeInvalidArgument, "request body is not valid JSON: "+err.Error())
		return false
	}
	return true
}

// writeErr maps an error of Add or Remove to its answer.
func (s *Server) writeErr(w http.ResponseWriter, err error) {
	var ve *ValidationError
	var he *HookError
	switch {
	case errors.As(err, &ve):
		writeError(w, http.StatusBadRequest, CodeInvalidArgument, ve.Msg)
	case errors.As(err, &he):
		writeError(w, http.StatusInternalServerError, CodeAddFailed, he.Error())
	default:
		s.log.Error("enrolment request failed", "err", err)
		writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
	}
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, ErrorResponse{Error: ErrorBody{Code: code, Message: msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		data = []byte(`{"error":{"code":"internal","message":"cannot encode the answer"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(data, '\n'))
}
