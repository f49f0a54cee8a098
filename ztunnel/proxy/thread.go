package proxy

import (
	"runtime"

	"github.com/ambit-mesh/ambit/pkg/hbone"
)

// DefaultBulkThreadBytes is Env.BulkThreadBytes unless set: the size at
// which pkg/hbone also retires a pooled connection (a bulk transfer).
const DefaultBulkThreadBytes = hbone.DefaultBulkStreamBytes

// endThread ends an OS thread of the process, most likely the one that ran
// the caller: it starts a goroutine that locks itself to its thread and
// returns without unlocking, which makes the Go runtime end that thread. With
// ztunnel's single P the new goroutine runs next on the thread that runs the
// caller, and the runtime carries on with another one (an idle thread, or a
// new one). (The runtime never ends the main thread: it parks it for good,
// which takes it out of use just the same.) Tests replace it.
//
// Why (docs/reference/ztunnel.md, "Latency after a bulk transfer"): with one
// P, one thread does almost all of ztunnel's forwarding. After that thread
// had carried a 256 MiB transfer, for the following seconds Linux moved it
// between CPUs 10 to 40 times less often than otherwise (80-430 migrations
// during a 6 s run of 1,000 small requests per second, against 3,000-3,500),
// it spent 15-30 % more CPU time on the same requests, the machine took
// about one more cross-CPU function-call interrupt per request, and the
// mesh added about 25 µs more latency at p50 and 60-100 µs at p99. That is
// what the scheduler's wake-affine heuristic does to a thread it judges to
// wake many different threads (wake_wide: a count per thread of wake-ups of
// a different thread than the last one, halved at most once a second): it
// stops pulling the woken thread onto its waker's CPU, so every hop of a
// request between the proxies, the client and the server wakes the other
// CPU. With the thread ended after each bulk transfer, the thread that
// carries on moved as often as in a run that had no transfer before it, and
// over 60 paired rounds the mesh's added p99 right after its own transfer
// was within 15 µs of that after an enrolment (60-100 µs apart before).
// The cost is one thread creation (tens of microseconds) per bulk
// transfer, at most.
var endThread = func() { go lockAndExit() }

// lockAndExit locks the calling goroutine to its thread for good: when the
// goroutine returns, the runtime ends the thread.
func lockAndExit() { runtime.LockOSThread() }
