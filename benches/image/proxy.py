#!/usr/bin/env python3
"""A counting HTTP proxy in front of a registry, for the image benchmark.

    proxy.py LISTEN_PORT UPSTREAM_HOST:PORT LOG_FILE

Forwards every request unchanged (the Host header included, so the registry's Location
URLs point back here) and appends one line per request to LOG_FILE:
METHOD PATH STATUS REQUEST_BODY_BYTES. Upload bytes are then the body bytes of the
POST, PATCH and PUT requests on blobs.
"""

import http.client
import http.server
import sys
import threading

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = ("127.0.0.1", 5000)
    log_file = None
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def forward(self):
        body = self.read_body()
        conn = http.client.HTTPConnection(*self.upstream, timeout=300)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for key, value in self.headers.items():
            if key.lower() not in HOP_BY_HOP:
                conn.putheader(key, value)
        if body or self.command in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", response.getheader("Content-Length", "0"))
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()
        with self.lock, open(self.log_file, "a") as log:
            log.write(f"{self.command} {self.path} {response.status} {len(body)}\n")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = forward


def main():
    port, upstream, log_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    host, upstream_port = upstream.rsplit(":", 1)
    Handler.upstream = (host, int(upstream_port))
    Handler.log_file = log_file
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
