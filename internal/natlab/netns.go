//go:build linux

package natlab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns add` bind-mounts named namespaces.
const netnsDir = "/run/netns"

// inNetns runs fn on the calling goroutine's OS thread while that thread is
// inside the named network namespace. Sockets created by fn stay in that
// namespace after the thread has gone back, so fn should only create sockets
// (or read per-namespace state such as interface indexes) and return.
//
// If the thread cannot be moved back it stays locked, and the runtime ends it
// when the goroutine returns rather than reusing a thread in the wrong
// namespace.
func inNetns(ns string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("natlab: open own netns: %w", err)
	}
	defer orig.Close()
	target, err := os.Open(filepath.Join(netnsDir, ns))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("natlab: open netns %s: %w", ns, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("natlab: setns %s: %w", ns, err)
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with this goroutine.
		return fmt.Errorf("natlab: setns back from %s: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// run runs an external command (ip, nft, sysctl) and returns its combined
// output in the error when it fails.
func run(stdin string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("natlab: %s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// output runs an external command and returns its standard output.
func output(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("natlab: %s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}

// ipn runs `ip -n ns args...`.
func ipn(ns string, args ...string) error {
	return run("", "ip", append([]string{"-n", ns}, args...)...)
}

// sysctl sets kernel parameters inside a namespace. Network sysctls
// (net.ipv4.*, net.netfilter.*, net.bridge.*) are per namespace.
func sysctl(ns string, kv ...string) error {
	args := append([]string{"netns", "exec", ns, "sysctl", "-q", "-w"}, kv...)
	return run("", "ip", args...)
}

// noOffloads turns off the segmentation offloads of a device's sending
// side, so that what it sends is cut into packets before it leaves.
func noOffloads(ns, dev string) error {
	return run("", "ip", "netns", "exec", ns, "ethtool", "-K", dev,
		"tso", "off", "gso", "off", "tx-udp-segmentation", "off")
}

// nftLoad loads a rule set into a namespace with `nft -f -`.
func nftLoad(ns, rules string) error {
	return run(rules, "ip", "netns", "exec", ns, "nft", "-f", "-")
}

// listNetns returns the names of all named network namespaces.
func listNetns() ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// netnsPids returns the processes living in a named namespace.
func netnsPids(ns string) []int {
	out, err := output("ip", "netns", "pids", ns)
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// rootLinks returns the interface names in the caller's (root) namespace.
func rootLinks() ([]string, error) {
	ents, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}
