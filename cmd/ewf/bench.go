package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/ewf-project/ewf/internal/loadgen"
)

// runBench is the load generator that operators size their server with;
// it is the same tool as cmd/ewf-bench.
func runBench(ctx context.Context, args []string) error {
	if code := loadgen.Main(ctx, "ewf bench", args, os.Stdout, os.Stderr); code != loadgen.ExitOK {
		os.Exit(code) // loadgen has already printed why
	}
	return nil
}

func debugLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
