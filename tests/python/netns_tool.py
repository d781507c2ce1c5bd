"""Apps and clients for the capture tests (tests/tests/capture.rs), run inside network
namespaces with `ip netns exec`, where the test process itself cannot open sockets.

  serve-http PORT NAME READY_FILE [HOST]   answers every request with JSON of what it saw
  serve-tcp PORT READY_FILE [HOST]         answers one line with "echo <peer> <line>"

HOST is the address to listen on: 0.0.0.0 (the default), or :: for IPv6 and IPv4 both.
  get URL [NAME:VALUE ...]          prints the status, a newline, the body
  tcp HOST PORT LINE                sends a line, prints what comes back until close

The apps know nothing of the proxy: they listen on their port and answer who called.
"""

import http.server
import json
import os
import socket
import socketserver
import sys
import urllib.error
import urllib.request


def ready(path):
    with open(path + ".tmp", "w") as f:
        f.write("ready\n")
    os.rename(path + ".tmp", path)


def server_class(base, host):
    """`base` listening on `host`: IPv6 (dual-stack) for an IPv6 address."""
    if ":" not in host:
        return base

    class V6(base):
        address_family = socket.AF_INET6

    return V6


def serve_http(port, name, ready_file, host="0.0.0.0"):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = json.dumps(
                {
                    "name": name,
                    "peer": self.client_address[0],
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                }
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = server_class(http.server.ThreadingHTTPServer, host)((host, port), Handler)
    ready(ready_file)
    server.serve_forever()


def serve_tcp(port, ready_file, host="0.0.0.0"):
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline().decode().strip()
            self.wfile.write(("echo %s %s\n" % (self.client_address[0], line)).encode())

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = server_class(socketserver.ThreadingTCPServer, host)((host, port), Handler)
    ready(ready_file)
    server.serve_forever()


def get(url, headers):
    req = urllib.request.Request(url)
    for h in headers:
        k, v = h.split(":", 1)
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            print(resp.status)
            print(resp.read().decode(), end="")
    except urllib.error.HTTPError as e:
        print(e.code)
        print(e.read().decode(), end="")
    except OSError as e:
        print("ERR")
        print(e, end="")


def tcp(host, port, line):
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall((line + "\n").encode())
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            print(data.decode(errors="replace"), end="")
    except OSError as e:
        print("ERR %s" % e, end="")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve-http":
        serve_http(int(args[0]), args[1], args[2], *args[3:4])
    elif cmd == "serve-tcp":
        serve_tcp(int(args[0]), args[1], *args[2:3])
    elif cmd == "get":
        get(args[0], args[1:])
    elif cmd == "tcp":
        tcp(args[0], int(args[1]), args[2])
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
