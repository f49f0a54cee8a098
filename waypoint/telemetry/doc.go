// Package telemetry records the waypoint's golden signals under Istio's
// standard metric and label names (istio_requests_total,
// istio_request_duration_milliseconds, istio_request_bytes,
// istio_response_bytes, reporter="waypoint") and writes one structured
// access-log line per request.
package telemetry
