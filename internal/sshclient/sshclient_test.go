package sshclient

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// serve runs a minimal SSH server on conn: it accepts clientKey, and answers every exec
// with stdout "ran: CMD" and exit status len(CMD).
func serve(t *testing.T, conn net.Conn, hostKey ssh.Signer, clientKey ssh.PublicKey) {
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if bytes.Equal(k.Marshal(), clientKey.Marshal()) {
			return nil, nil
		}
		return nil, ssh.ErrNoAuth
	}}
	cfg.AddHostKey(hostKey)
	_, chans, reqs, err := ssh.NewServerConn(conn, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		ch, creqs, err := nc.Accept()
		if err != nil {
			return
		}
		go func() {
			for r := range creqs {
				if r.Type != "exec" {
					_ = r.Reply(false, nil)
					continue
				}
				cmd := string(r.Payload[4:])
				_ = r.Reply(true, nil)
				_, _ = ch.Write([]byte("ran: " + cmd))
				st := make([]byte, 4)
				binary.BigEndian.PutUint32(st, uint32(len(cmd)))
				_, _ = ch.SendRequest("exit-status", false, st)
				ch.Close()
			}
		}()
	}
}

// streamPair is a connected pair of buffered byte streams (net.Pipe is unbuffered, and both
// SSH ends write their version line first).
func streamPair(t *testing.T) (net.Conn, net.Conn) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func keys(t *testing.T) (ssh.Signer, ssh.Signer) {
	_, hk, _ := ed25519.GenerateKey(rand.Reader)
	_, ck, _ := ed25519.GenerateKey(rand.Reader)
	h, err := ssh.NewSignerFromKey(hk)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := ssh.NewSignerFromKey(ck)
	return h, c
}

func TestRunOverAStream(t *testing.T) {
	host, client := keys(t)
	a, b := streamPair(t)
	go serve(t, b, host, client.PublicKey())
	c, err := Dial(context.Background(), a, "root", "banger-x", client, ssh.FixedHostKey(host.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	code, err := Run(context.Background(), c, "hello", nil, &out, nil)
	if err != nil || code != 5 || out.String() != "ran: hello" {
		t.Fatalf("run: code %d err %v out %q", code, err, out.String())
	}
}

func TestWrongHostKeyRefused(t *testing.T) {
	host, client := keys(t)
	other, _ := keys(t)
	a, b := streamPair(t)
	go serve(t, b, host, client.PublicKey())
	_, err := Dial(context.Background(), a, "root", "banger-x", client, ssh.FixedHostKey(other.PublicKey()))
	if err == nil || !strings.Contains(err.Error(), "banger-x") {
		t.Fatalf("a server with another host key was accepted: %v", err)
	}
}
