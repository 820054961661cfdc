// Command ewf-bench is ewf's load generator: it floods a server with STUN
// Binding, BIND-refresh, QUERY or REGISTER requests from many UDP sockets,
// validates every response and prints requests/s and latency percentiles.
// It is the same tool as `ewf bench`; see internal/loadgen and bench/.
//
//	ewf-bench --server 127.0.0.1:3478 --mode stun --sockets 64 --duration 10s
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/ewf-project/ewf/internal/loadgen"
)

func main() {
	// Ctrl-C ends the run early; the partial result is still printed.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := loadgen.Main(ctx, "ewf-bench", os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
