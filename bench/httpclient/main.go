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
// path it asked, in order.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
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
	for i := 0; i < *n; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return fmt.Errorf("answer %d: %w", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("answer %d: %w", i, err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("answer %d: %s", i, resp.Status)
		}
		if resp.ContentLength < 0 && len(resp.TransferEncoding) == 0 {
			return fmt.Errorf("answer %d: neither a length nor chunked", i)
		}
		if !bytes.Contains(body, []byte("/"+hashes[i%len(hashes)]+"-")) {
			return fmt.Errorf("answer %d is not the narinfo of %s: %.80q", i, hashes[i%len(hashes)], body)
		}
		if resp.Close {
			if i != *n-1 {
				return fmt.Errorf("the server closed the connection after %d of %d answers", i+1, *n)
			}
		}
	}
	elapsed := time.Since(start)
	if err := <-wrote; err != nil {
		return err
	}
	fmt.Printf("%.4f\n", elapsed.Seconds())
	return nil
}
