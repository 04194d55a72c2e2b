// Command httpclient is bench/run.sh's HTTP client where curl and wrk are
// the limit or cannot ask the way real clients do.
//
//	httpclient get URL                   one GET on a fresh connection: MB/s
//	httpclient load -c 16 -d 5s URL      GETs on 16 connections for 5 s: MB/s
//	httpclient pipeline -n 1000 BASE HASHFILE
//	                                     n narinfo GETs pipelined on one
//	                                     connection: seconds
//
// Bodies are read with one large buffer straight from the socket (no
// copy through a small one, as curl's 16 KiB and wrk's reads are), so
// that on loopback the client's share of the CPU is the kernel's copy into
// it. pipeline writes every request before it reads any answer (from a
// goroutine, so neither side's socket buffer can stall the other), as
// Guix asks for narinfos, then checks each answer is a framed 200 for the
// path it asked, in order. It reads the answers with a parser of its own
// that allocates nothing per answer: with http.ReadResponse (a header map
// and strings per answer) it was the bottleneck, taking about as long as
// nginx or the node to answer, and longer the more header lines a server
// sends (nginx sends eight to the node's four).
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const readBuf = 1 << 20

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "get":
		err = cmdGet(os.Args[2:])
	case "load":
		err = cmdLoad(os.Args[2:])
	case "pipeline":
		err = cmdPipeline(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "httpclient:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: httpclient get URL | load [-c CONNS] [-d DURATION] URL | pipeline [-n N] BASE HASHFILE")
	os.Exit(2)
}

// target splits a URL into the address to dial and the request target.
func target(raw string) (addr, host, path string, err error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return "", "", "", fmt.Errorf("%q: want an http:// URL", raw)
	}
	addr = u.Host
	if u.Port() == "" {
		addr += ":80"
	}
	return addr, u.Host, u.RequestURI(), nil
}

// fetch sends one GET on conn and reads the body with buf; it returns the
// body bytes read and whether the connection may be reused.
func fetch(ctx context.Context, conn net.Conn, br *bufio.Reader, host, path string, buf []byte) (int64, error) {
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	var n int64
	for ctx.Err() == nil {
		k, err := resp.Body.Read(buf)
		n += int64(k)
		if err == io.EOF {
			if resp.ContentLength >= 0 && n != resp.ContentLength {
				return n, fmt.Errorf("GET %s: %d of %d bytes", path, n, resp.ContentLength)
			}
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
	return n, ctx.Err()
}

func cmdGet(args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	fs.Parse(args)
	if fs.NArg() != 1 {
		usage()
	}
	addr, host, path, err := target(fs.Arg(0))
	if err != nil {
		return err
	}
	buf := make([]byte, readBuf)
	start := time.Now()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	n, err := fetch(context.Background(), conn, bufio.NewReaderSize(conn, 64<<10), host, path, buf)
	if err != nil {
		return err
	}
	fmt.Printf("%.0f\n", float64(n)/time.Since(start).Seconds())
	return nil
}

func cmdLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	conns := fs.Int("c", 16, "connections")
	dur := fs.Duration("d", 5*time.Second, "duration")
	fs.Parse(args)
	if fs.NArg() != 1 || *conns < 1 {
		usage()
	}
	addr, host, path, err := target(fs.Arg(0))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *dur)
	defer cancel()
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, *conns)
	start := time.Now()
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, readBuf)
			for ctx.Err() == nil {
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					errs <- err
					return
				}
				stop := context.AfterFunc(ctx, func() { conn.Close() })
				br := bufio.NewReaderSize(conn, 64<<10)
				for ctx.Err() == nil && err == nil {
					var n int64
					n, err = fetch(ctx, conn, br, host, path, buf)
					total.Add(n)
				}
				stop()
				conn.Close()
				if err != nil && ctx.Err() == nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	fmt.Printf("%.0f\n", float64(total.Load())/elapsed.Seconds())
	return nil
}

func cmdPipeline(args []string) error {
	fs := flag.NewFlagSet("pipeline", flag.ExitOnError)
	n := fs.Int("n", 1000, "requests")
	fs.Parse(args)
	if fs.NArg() != 2 || *n < 1 {
		usage()
	}
	addr, host, base, err := target(strings.TrimSuffix(fs.Arg(0), "/") + "/")
	if err != nil {
		return err
	}
	list, err := os.ReadFile(fs.Arg(1))
	if err != nil {
		return err
	}
	hashes := strings.Fields(string(list))
	if len(hashes) == 0 {
		return fmt.Errorf("%s: no hashes", fs.Arg(1))
	}
	var reqs bytes.Buffer
	for i := 0; i < *n; i++ {
		fmt.Fprintf(&reqs, "GET %s%s.narinfo HTTP/1.1\r\nHost: %s\r\n\r\n", base, hashes[i%len(hashes)], host)
	}
	start := time.Now()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(start.Add(time.Minute))
	wrote := make(chan error, 1)
	go func() {
		_, err := conn.Write(reqs.Bytes())
		wrote <- err
	}()
	br := bufio.NewReaderSize(conn, 64<<10)
	var a answer
	for i := 0; i < *n; i++ {
		if err := a.read(br); err != nil {
			return fmt.Errorf("answer %d: %w", i, err)
		}
		if a.status != http.StatusOK {
			return fmt.Errorf("answer %d: status %d", i, a.status)
		}
		if !bytes.Contains(a.body, []byte("/"+hashes[i%len(hashes)]+"-")) {
			return fmt.Errorf("answer %d is not the narinfo of %s: %.80q", i, hashes[i%len(hashes)], a.body)
		}
		if a.close && i != *n-1 {
			return fmt.Errorf("the server closed the connection after %d of %d answers", i+1, *n)
		}
	}
	elapsed := time.Since(start)
	if err := <-wrote; err != nil {
		return err
	}
	fmt.Printf("%.4f\n", elapsed.Seconds())
	return nil
}

// answer is one HTTP/1.1 answer read by read, its buffers reused from one
// answer to the next.
type answer struct {
	status int
	close  bool   // Connection: close
	body   []byte // valid until the next read
}

// read reads an answer framed by a Content-Length or chunked.
func (a *answer) read(br *bufio.Reader) error {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return err
	}
	f := bytes.Fields(line)
	if len(f) < 2 || !bytes.HasPrefix(f[0], []byte("HTTP/1.")) || len(f[1]) != 3 {
		return fmt.Errorf("status line %q", line)
	}
	a.status = int(f[1][0]-'0')*100 + int(f[1][1]-'0')*10 + int(f[1][2]-'0')
	a.close, a.body = false, a.body[:0]
	length, chunked := int64(-1), false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return fmt.Errorf("header line %q", line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = parseLength(value); err != nil {
				return err
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			a.close = bytes.EqualFold(value, []byte("close"))
		}
	}
	switch {
	case chunked:
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				return err
			}
			size, _, _ := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(";"))
			n, err := strconv.ParseInt(string(size), 16, 64)
			if err != nil || n < 0 {
				return fmt.Errorf("chunk size %q", line)
			}
			if err := a.readBody(br, n+2); err != nil { // and its CRLF
				return err
			}
			if !bytes.HasSuffix(a.body, []byte("\r\n")) {
				return errors.New("a chunk without its CRLF")
			}
			a.body = a.body[:len(a.body)-2]
			if n == 0 {
				return nil // no trailers are sent to us
			}
		}
	case length >= 0:
		return a.readBody(br, length)
	}
	return errors.New("neither a length nor chunked")
}

// readBody appends n bytes from br to the body.
func (a *answer) readBody(br *bufio.Reader, n int64) error {
	at := len(a.body)
	a.body = slices.Grow(a.body, int(n))[:at+int(n)]
	_, err := io.ReadFull(br, a.body[at:])
	return err
}

// parseLength parses a Content-Length: digits only.
func parseLength(v []byte) (int64, error) {
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' || n > 1<<40 {
			return 0, fmt.Errorf("Content-Length %q", v)
		}
		n = n*10 + int64(c-'0')
	}
	if len(v) == 0 {
		return 0, errors.New("empty Content-Length")
	}
	return n, nil
}
