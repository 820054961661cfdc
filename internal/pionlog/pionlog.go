// Package pionlog hands pion's logs (pion/turn, on the relay and in the
// relay client) to a *slog.Logger, all at Debug: pion logs ordinary peer
// mistakes (a wrong password, a refused peer) as errors, and neither a
// relay nor a client may let the other side fill its logs. Formatting is
// skipped unless Debug is enabled.
package pionlog

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// Factory returns a pion LoggerFactory that logs to log, scope as "pion".
func Factory(log *slog.Logger) logging.LoggerFactory { return factory{log} }

type factory struct{ log *slog.Logger }

func (f factory) NewLogger(scope string) logging.LeveledLogger {
	return logger{f.log.With("pion", scope)}
}

type logger struct{ log *slog.Logger }

func (l logger) logf(format string, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug(fmt.Sprintf(format, args...))
	}
}
func (l logger) Trace(string)                      {}
func (l logger) Tracef(string, ...any)             {}
func (l logger) Debug(msg string)                  { l.logf("%s", msg) }
func (l logger) Debugf(format string, args ...any) { l.logf(format, args...) }
func (l logger) Info(msg string)                   { l.logf("%s", msg) }
func (l logger) Infof(format string, args ...any)  { l.logf(format, args...) }
func (l logger) Warn(msg string)                   { l.logf("%s", msg) }
func (l logger) Warnf(format string, args ...any)  { l.logf(format, args...) }
func (l logger) Error(msg string)                  { l.logf("%s", msg) }
func (l logger) Errorf(format string, args ...any) { l.logf(format, args...) }
