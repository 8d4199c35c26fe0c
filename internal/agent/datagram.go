package agent

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
)

// UDP forward stream.
//
// POST /v1/forward?port=N&proto=udp with the headers
//
//	Connection: Upgrade
//	Upgrade: banger-forward-udp.v1
//
// makes the agent open a UDP socket connected to 127.0.0.1:N in the guest. After "101
// Switching Protocols" the connection carries datagrams both ways, each framed as
//
//	+---------------------------+-----------------------+
//	| length: 2, big-endian     | payload: length bytes |
//	+---------------------------+-----------------------+
//
// with length at most MaxDatagram (an empty datagram is length 0). A frame whose length is
// larger ends the stream: either side refuses it before reading its payload. Datagrams
// the guest port refuses (ICMP port unreachable) are dropped, as UDP drops them. Closing
// the stream closes the guest socket.

// ForwardUDPUpgradeProtocol is the Upgrade header value of a forwarded UDP flow. It is
// distinct from the TCP one so that an agent without UDP support refuses the request
// rather than opening a TCP connection.
const ForwardUDPUpgradeProtocol = "banger-forward-udp.v1"

// MaxDatagram is the largest UDP payload forwarded: the most an IPv4 datagram holds.
const MaxDatagram = 65507

// ReadDatagram reads one framed datagram into buf (which should hold MaxDatagram bytes)
// and returns its length. A frame longer than MaxDatagram or buf is an error and nothing
// of its payload is read: the stream is garbled or hostile and must be dropped.
func ReadDatagram(r io.Reader, buf []byte) (int, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n > MaxDatagram || n > len(buf) {
		return 0, fmt.Errorf("datagram frame of %d bytes: at most %d", n, min(MaxDatagram, len(buf)))
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	return n, nil
}

// AppendDatagram appends p framed to dst.
func AppendDatagram(dst, p []byte) ([]byte, error) {
	if len(p) > MaxDatagram {
		return dst, fmt.Errorf("datagram of %d bytes: at most %d are forwarded", len(p), MaxDatagram)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(p)))
	return append(dst, p...), nil
}

// DatagramStream carries framed datagrams over an upgraded forward connection.
// ReadPacket and WritePacket may be called concurrently with each other.
type DatagramStream struct {
	conn io.ReadWriteCloser
	r    *bufio.Reader
	wmu  sync.Mutex
	wbuf []byte
}

// NewDatagramStream frames datagrams over conn.
func NewDatagramStream(conn io.ReadWriteCloser) *DatagramStream {
	// A small buffer: ReadDatagram reads long payloads straight into the caller's buffer.
	return &DatagramStream{conn: conn, r: bufio.NewReaderSize(conn, 4<<10)}
}

// ReadPacket reads the next datagram into buf; see ReadDatagram.
func (s *DatagramStream) ReadPacket(buf []byte) (int, error) { return ReadDatagram(s.r, buf) }

// WritePacket sends one datagram, header and payload in one write.
func (s *DatagramStream) WritePacket(p []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var err error
	if s.wbuf, err = AppendDatagram(s.wbuf[:0], p); err != nil {
		return err
	}
	_, err = s.conn.Write(s.wbuf)
	return err
}

// Close closes the connection.
func (s *DatagramStream) Close() error { return s.conn.Close() }
