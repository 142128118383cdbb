package tunnel

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

func TestDialRequestRoundTrip(t *testing.T) {
	for _, req := range []dialRequest{
		{ID: 1, Timeout: 10 * time.Second, Address: "10.0.0.5:10250"},
		{ID: 1<<64 - 1, Timeout: 0, Address: "[fd00::5]:443"},
		{ID: 42, Timeout: 1500 * time.Millisecond, Address: strings.Repeat("a", 250) + ":1"},
	} {
		frame := appendDialRequest(nil, req)
		payload, err := readFrame(bytes.NewReader(frame), frameDialRequest)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeDialRequest(payload)
		if err != nil || got != req {
			t.Errorf("round trip of %+v: got %+v, %v", req, got, err)
		}
	}
}

func TestDialResponseRoundTrip(t *testing.T) {
	for _, resp := range []dialResponse{
		{Result: ResultOK},
		{Result: ResultRefused, Message: "dial tcp 10.0.0.5:1: connect: connection refused"},
		{Result: ResultError, Message: strings.Repeat("x", 1024)},
	} {
		frame := appendDialResponse(nil, resp)
		payload, err := readFrame(bytes.NewReader(frame), frameDialResponse)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := decodeDialResponse(payload); err != nil || got != resp {
			t.Errorf("round trip of %+v: got %+v, %v", resp, got, err)
		}
	}
}

func TestFrameErrors(t *testing.T) {
	if _, err := readFrame(bytes.NewReader([]byte{frameHello, 0, 1, 'x'}), frameDialRequest); !errors.Is(err, errFrameType) {
		t.Errorf("wrong type: %v", err)
	}
	if _, err := readFrame(bytes.NewReader([]byte{frameHello, 0, 9, 'x'}), frameHello); err == nil {
		t.Error("short payload accepted")
	}
	if _, err := decodeDialRequest(make([]byte, 12)); err == nil {
		t.Error("dial request without an address accepted")
	}
	if _, err := decodeDialResponse([]byte{99}); err == nil {
		t.Error("unknown result accepted")
	}
	if err := writeFrame(io.Discard, frameHello, make([]byte, maxFramePayload+1)); !errors.Is(err, errFrameTooLarge) {
		t.Errorf("oversized frame: %v", err)
	}
}

func TestReadConnect(t *testing.T) {
	for _, tc := range []struct {
		name, in, target string
		status           int
	}{
		{"egress selector", "CONNECT 10.0.0.5:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "10.0.0.5:10250", 0},
		{"bare LF", "CONNECT node-a:10250 HTTP/1.1\nHost: x\n\n", "node-a:10250", 0},
		{"IPv6", "CONNECT [fd00::5]:443 HTTP/1.0\r\n\r\n", "[fd00::5]:443", 0},
		{"GET", "GET / HTTP/1.1\r\n\r\n", "", 405},
		{"no version", "CONNECT a:1\r\n\r\n", "", 400},
		{"extra field", "CONNECT a:1 HTTP/1.1 x\r\n\r\n", "", 400},
		{"port 0", "CONNECT a:0 HTTP/1.1\r\n\r\n", "", 400},
		{"port with a sign", "CONNECT a:+9000 HTTP/1.1\r\n\r\n", "", 400},
		{"negative port", "CONNECT a:-1 HTTP/1.1\r\n\r\n", "", 400},
		{"hex port", "CONNECT a:0x50 HTTP/1.1\r\n\r\n", "", 400},
		{"port 65536", "CONNECT a:65536 HTTP/1.1\r\n\r\n", "", 400},
		{"empty port", "CONNECT a: HTTP/1.1\r\n\r\n", "", 400},
		{"leading zeros are decimal", "CONNECT a:09000 HTTP/1.1\r\n\r\n", "a:09000", 0},
		{"userinfo", "CONNECT u@a:1 HTTP/1.1\r\n\r\n", "", 400},
		{"NUL", "CONNECT a:1 HTTP/1.1\r\nX: \x00\r\n\r\n", "", 400},
		{"header too big", "CONNECT a:1 HTTP/1.1\r\nX: " + strings.Repeat("y", 600) + "\r\n\r\n", "", 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target, err := readConnect(bufio.NewReaderSize(strings.NewReader(tc.in), 512), 512)
			var re *requestError
			switch {
			case tc.status == 0 && (err != nil || target != tc.target):
				t.Errorf("got %q, %v; want %q", target, err, tc.target)
			case tc.status != 0 && (!errors.As(err, &re) || re.status != tc.status):
				t.Errorf("got %q, %v; want status %d", target, err, tc.status)
			}
		})
	}
}

func TestReadConnectLeavesTunnelBytes(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("CONNECT a:1 HTTP/1.1\r\n\r\nearly bytes"))
	if _, err := readConnect(br, 8192); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "early bytes" {
		t.Fatalf("left %q", rest)
	}
}

func TestWriteStatusIsOneParsableLine(t *testing.T) {
	var b bytes.Buffer
	writeStatus(&b, 502, "dial x: evil\r\nInjected: yes")
	res, err := http.ReadResponse(bufio.NewReader(&b), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != "502 dial x: evil  Injected: yes" || res.Header.Get("Injected") != "" {
		t.Fatalf("status %q, headers %v", res.Status, res.Header)
	}
}

// Fuzz targets for every decoder of bytes that arrive from the network.
// Seeds live in testdata/fuzz; `make fuzz` runs them for longer.

func FuzzReadConnect(f *testing.F) {
	f.Add([]byte("CONNECT 10.0.0.5:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte("CONNECT [::1]:1 HTTP/1.0\n\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		target, err := readConnect(bufio.NewReaderSize(bytes.NewReader(in), 256), 256)
		if err == nil {
			if err := checkTarget(target); err != nil {
				t.Fatalf("accepted bad target %q", target)
			}
		}
	})
}

func FuzzDecodeDialRequest(f *testing.F) {
	f.Add(appendDialRequest(nil, dialRequest{ID: 7, Timeout: time.Second, Address: "10.0.0.5:10250"})[frameHeaderLen:])
	f.Fuzz(func(t *testing.T, payload []byte) {
		req, err := decodeDialRequest(payload)
		if err != nil {
			return
		}
		again, err := decodeDialRequest(appendDialRequest(nil, req)[frameHeaderLen:])
		if err != nil || again != req {
			t.Fatalf("re-encoding %+v gave %+v, %v", req, again, err)
		}
	})
}

func FuzzDecodeDialResponse(f *testing.F) {
	f.Add(appendDialResponse(nil, dialResponse{Result: ResultRefused, Message: "refused"})[frameHeaderLen:])
	f.Fuzz(func(t *testing.T, payload []byte) {
		resp, err := decodeDialResponse(payload)
		if err == nil && !resp.Result.onWire() {
			t.Fatalf("accepted result %d", resp.Result)
		}
	})
}

func FuzzDecodeHello(f *testing.F) {
	f.Add([]byte(`{"version":1,"node":"a","ips":["10.0.0.1"],"podCIDRs":["10.244.0.0/24"],"defaultRoute":true}`))
	f.Add([]byte(`{"version":1,"node":"a","ips":["::ffff:10.0.0.1"]}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		h, err := decodeHello(payload)
		if err != nil {
			return
		}
		once, _ := json.Marshal(h)
		h2, err := decodeHello(once)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", once, err)
		}
		if twice, _ := json.Marshal(h2); string(twice) != string(once) {
			t.Fatalf("hello changed in a round trip: %s then %s", once, twice)
		}
	})
}

// TestProtocolExamples: the hex examples in PROTOCOL.md are, in order,
// exactly what this build's encoders write for the values they describe.
func TestProtocolExamples(t *testing.T) {
	doc, err := os.ReadFile("PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	jsonFrame := func(typ byte, v any) []byte {
		b, err := appendJSONFrame(nil, typ, v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	drain, _ := appendFrame(nil, frameDrain, nil)
	want := [][]byte{
		jsonFrame(frameHello, Hello{Version: 1, Node: "worker-1"}),
		jsonFrame(frameHelloReply, HelloReply{Version: 1, ServerID: "3f2a9c0d1e4b5a69"}),
		appendDialRequest(nil, dialRequest{ID: 42, Timeout: 30 * time.Second, Address: "10.0.3.7:10250"}),
		appendDialResponse(nil, dialResponse{Result: ResultOK}),
		appendDialResponse(nil, dialResponse{Result: ResultRefused, Message: "connect: connection refused"}),
		drain,
		jsonFrame(frameReplicas, replicaCount{ServerCount: 2}),
		jsonFrame(frameGoodbye, goodbye{Reason: "server stopping"}),
		appendDialID(nil, frameMove, 42),
		appendDialID(nil, frameAdopt, 42),
	}
	var got [][]byte
	for _, line := range strings.Split(string(doc), "\n") {
		if len(line) < 3 || line[2] != ' ' || !strings.Contains("0123456789abcdef", line[:1]) {
			continue
		}
		b, err := hex.DecodeString(strings.ReplaceAll(line, " ", ""))
		if err != nil {
			continue // not a hex line
		}
		got = append(got, b)
	}
	if len(got) != len(want) {
		t.Fatalf("PROTOCOL.md has %d hex examples, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("example %d:\n doc  %x\n code %x", i+1, got[i], want[i])
		}
	}
}

// TestNegotiateVersion: the newest version both ends speak, or a refusal
// that names the side to upgrade.
func TestNegotiateVersion(t *testing.T) {
	for _, tc := range []struct {
		h       Hello
		want    int
		upgrade string
	}{
		{Hello{Version: 1}, 1, ""},
		{Hello{Version: 1, MinVersion: 1}, 1, ""},
		{Hello{Version: ProtocolVersion + 1, MinVersion: 1}, ProtocolVersion, ""},
		{Hello{Version: ProtocolVersion + 1}, 0, "upgrade the server"},
		{Hello{Version: MinProtocolVersion - 1}, 0, "upgrade the agent"},
		{Hello{Version: 0}, 0, "upgrade the agent"},
	} {
		v, err := negotiateVersion(tc.h)
		if tc.upgrade == "" && (err != nil || v != tc.want) {
			t.Errorf("%+v: version %d, %v; want %d", tc.h, v, err, tc.want)
		}
		if tc.upgrade != "" && (err == nil || !strings.Contains(err.Error(), tc.upgrade)) {
			t.Errorf("%+v: version %d, %v; want an error saying %q", tc.h, v, err, tc.upgrade)
		}
	}
}
