package ewf_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/server"
)

// Several independent streams on one connection: each is a net.Conn of
// its own, with its own flow control, so one slow stream holds back only
// itself. Here the listener answers every stream it accepts in upper case.
func ExampleConn_OpenStream() {
	dir, _ := os.MkdirTemp("", "ewf-example-")
	defer os.RemoveAll(dir)
	srv, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: filepath.Join(dir, "ewfd")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := func(name string) ewf.Config {
		return ewf.Config{Server: srv.Addrs()[0].String(), IdentityFile: filepath.Join(dir, name)}
	}

	l, err := ewf.Listen(ctx, cfg("a.json"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer l.Close()
	go func() {
		c, err := l.AcceptContext(ctx)
		if err != nil {
			return
		}
		defer c.Close()
		go io.Copy(io.Discard, c) // the default stream, unused here
		for {
			s, err := c.AcceptStream(ctx)
			if err != nil {
				return // the connection ended
			}
			go func() {
				defer s.Close()
				b, _ := io.ReadAll(s)
				s.Write([]byte(strings.ToUpper(string(b))))
			}()
		}
	}()

	conn, err := ewf.Dial(ctx, cfg("b.json"), l.ID())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	for _, word := range []string{"one", "two"} {
		s, err := conn.OpenStream(ctx)
		if err != nil {
			fmt.Println(err)
			return
		}
		s.Write([]byte(word))
		s.CloseWrite() // half-close: the peer reads io.EOF, and answers
		answer, _ := io.ReadAll(s)
		s.Close()
		fmt.Println(string(answer))
	}
	conn.CloseWrite()
	// Output:
	// ONE
	// TWO
}
