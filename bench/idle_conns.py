#!/usr/bin/env python3
"""Idle HTTP/2 connections for bench/soak.sh (loopback only, bounded).

Opens COUNT prior-knowledge HTTP/2 (h2c) connections to 127.0.0.1:PORT, sends
one GET on each, then keeps them idle the way a patient client would: it
acknowledges SETTINGS and answers PINGs, and never closes first. Stops after
HOLD seconds at the latest. Prints a status line every second and a summary:
how many connections were answered, got a GOAWAY and were closed by the
server, and when (seconds after their request).

    idle_conns.py PORT COUNT HOLD HOST PATH
"""

import selectors
import socket
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(index, value):
    value = value.encode()
    assert len(value) < 127
    return bytes([index, len(value)]) + value


def request(host, path):
    # :method GET, :scheme http (static table); :path, :authority literals.
    block = b"\x82\x86" + literal(0x04, path) + literal(0x01, host)
    return PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, block)


class Conn:
    def __init__(self, sock, sent_at):
        self.sock = sock
        self.buf = b""
        self.sent_at = sent_at
        self.answered = None
        self.goaway = None
        self.closed = None


def main():
    port, count, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    host, path = sys.argv[4], sys.argv[5]
    if not 0 < count <= 20000 or not 0 < hold <= 600:
        sys.exit("COUNT must be 1..20000 and HOLD 1..600 seconds")
    sel = selectors.DefaultSelector()
    started = time.monotonic()
    deadline = started + hold
    conns = []
    payload = request(host, path)
    refused = 0
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            s.sendall(payload)
        except OSError:
            refused += 1
            s.close()
            continue
        s.setblocking(False)
        c = Conn(s, time.monotonic())
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    opened_in = time.monotonic() - started
    last_status = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now - last_status >= 1:
            last_status = now
            print("t=%.0fs open=%d answered=%d goaway=%d closed_by_server=%d" % (
                now - started,
                sum(1 for c in conns if c.closed is None),
                sum(1 for c in conns if c.answered is not None),
                sum(1 for c in conns if c.goaway is not None),
                sum(1 for c in conns if c.closed is not None)), flush=True)
        if all(c.closed is not None for c in conns):
            break
        for key, _ in sel.select(timeout=0.2):
            c = key.data
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                c.closed = time.monotonic()
                sel.unregister(c.sock)
                c.sock.close()
                continue
            c.buf += data
            out = b""
            while len(c.buf) >= 9:
                length = int.from_bytes(c.buf[:3], "big")
                if len(c.buf) < 9 + length:
                    break
                kind, flags = c.buf[3], c.buf[4]
                stream = int.from_bytes(c.buf[5:9], "big") & 0x7FFFFFFF
                body = c.buf[9:9 + length]
                c.buf = c.buf[9 + length:]
                if kind == SETTINGS and not flags & ACK:
                    out += frame(SETTINGS, ACK, 0)
                elif kind == PING and not flags & ACK:
                    out += frame(PING, ACK, 0, body)
                elif kind == GOAWAY and c.goaway is None:
                    c.goaway = time.monotonic()
                elif kind in (HEADERS, DATA) and stream == 1 and flags & END_STREAM:
                    c.answered = time.monotonic()
            if out:
                try:
                    c.sock.sendall(out)
                except OSError:
                    pass
    for c in conns:
        if c.closed is None:
            c.sock.close()
    closed = sorted(c.closed - c.sent_at for c in conns if c.closed is not None)
    median = closed[len(closed) // 2] if closed else float("nan")
    print("SUMMARY opened=%d refused=%d opened_in=%.1fs answered=%d goaway=%d closed_by_server=%d "
          "close_after_request_median=%.1fs max=%.1fs still_open_at_end=%d" % (
              len(conns), refused, opened_in,
              sum(1 for c in conns if c.answered is not None),
              sum(1 for c in conns if c.goaway is not None),
              len(closed), median, closed[-1] if closed else float("nan"),
              sum(1 for c in conns if c.closed is None)), flush=True)


if __name__ == "__main__":
    main()
