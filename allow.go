package ewf

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
)

// AllowList is a set of peer IDs that may connect, for Config.Allow:
//
//	cfg.Allow = list.Allows
type AllowList map[ID]bool

// Allows reports whether id is on the list.
func (a AllowList) Allows(id ID) bool { return a[id] }

// ParseAllowList reads an allow list in the form of SSH's authorized_keys:
// one peer ID (32 hex digits) per line, optionally followed by a comment
// that starts with '#'; blank lines and lines starting with '#' are
// ignored. A line that is anything else is an error naming its number,
// so that a typo never silently locks a peer out (or in).
func ParseAllowList(r io.Reader) (AllowList, error) {
	list := AllowList{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		switch len(f) {
		case 0:
			continue
		case 1:
			id, err := ParseID(f[0])
			if err != nil || id.IsZero() {
				return nil, fmt.Errorf("line %d: %q is not a peer ID (32 hex digits, not all zero)", n, f[0])
			}
			list[id] = true
		default:
			return nil, fmt.Errorf("line %d: want one peer ID, got %d fields (start a comment with #)", n, len(f))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return list, nil
}

// LoadAllowList reads the allow list file at path (ParseAllowList).
func LoadAllowList(path string) (AllowList, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ewf: allow list: %w", err)
	}
	defer f.Close()
	list, err := ParseAllowList(f)
	if err != nil {
		return nil, fmt.Errorf("ewf: allow list %s: %w", path, err)
	}
	return list, nil
}
