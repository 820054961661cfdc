//go:build linux

package natlab

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/ewf-project/ewf/internal/natlab.watchSignals"))
}
