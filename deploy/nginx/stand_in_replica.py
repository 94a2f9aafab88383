"""A stand-in for one hearth replica, for test.sh: it answers the routes
nginx passes with what hearth would send (JSON, or server-sent events for a
streamed chat) and reports in response headers what it received, so the
test can see which replica answered and what nginx forwarded. Not hearth:
no model, no auth.

    python3 stand_in_replica.py PORT NAME
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, NAME = int(sys.argv[1]), sys.argv[2]


class Replica(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def seen(self):
        return {
            "X-Replica": NAME,
            "X-Seen-Request-Id": self.headers.get("X-Request-Id", ""),
            "X-Seen-Host": self.headers.get("Host", ""),
            "X-Seen-Path": self.path,
        }

    def reply(self, status, body, extra=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in {**self.seen(), **(extra or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def busy(self):
        # The test marks one replica "queue full" with a header.
        if self.headers.get("X-Test-Busy") == NAME:
            self.reply(503, {"error": {"message": "the queue is full", "type": "server_error",
                                       "param": None, "code": "queue_full"}}, {"Retry-After": "1"})
            return True
        return False

    def do_GET(self):
        if self.busy():
            return
        self.reply(200, {"status": "ok", "path": self.path})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.busy():
            return
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = {}
        if self.path == "/v1/chat/completions" and request.get("stream"):
            self.send_response(200)
            for k, v in self.seen().items():
                self.send_header(k, v)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            events = [{"delta": {"role": "assistant"}}] + [{"delta": {"content": w}} for w in ("one", "two", "three")]
            for i, event in enumerate(events):
                if i:
                    time.sleep(0.5)
                self.chunk(f"data: {json.dumps(event)}\n\n".encode())
            self.chunk(b"data: [DONE]\n\n")
            self.chunk(b"")
            return
        self.reply(200, {"object": "chat.completion", "body_bytes": len(body)})

    def chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


ThreadingHTTPServer(("127.0.0.1", PORT), Replica).serve_forever()
