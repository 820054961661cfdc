package ewf_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/server"
)

// Two programs meet through a rendezvous server and talk directly. Here
// all three run in one process on loopback; in real use the server runs
// on a public host and each side behind its own NAT.
func Example() {
	dir, _ := os.MkdirTemp("", "ewf-example-")
	defer os.RemoveAll(dir)
	srv, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: filepath.Join(dir, "ewfd")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()
	rendezvous := srv.Addrs()[0].String()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The listening side: its ID is what the other side dials.
	l, err := ewf.Listen(ctx, ewf.Config{Server: rendezvous, IdentityFile: filepath.Join(dir, "a.json")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "hello from "+l.ID().String()[:4]+"…")
		c.(*ewf.Conn).CloseWrite()
		io.Copy(io.Discard, c)
	}()

	// The dialing side.
	conn, err := ewf.Dial(ctx, ewf.Config{Server: rendezvous, IdentityFile: filepath.Join(dir, "b.json")}, l.ID())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	conn.CloseWrite()
	msg, _ := io.ReadAll(conn)
	fmt.Println(len(msg) > 0, conn.Transport())
	// Output: true udp
}
