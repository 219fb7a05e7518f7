"""Stand-in for the SaaS API, for trying the fixtures by hand.

python3 standin_api.py [HOST [PORT]]   (default 127.0.0.2 18443)

Answers every POST with 201 and a JSON body naming the bearer token it saw
and the request body, so a caller can see that the key reached the API.
"""
import http.server
import json
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        request = self.rfile.read(length).decode("utf-8", "replace")
        body = json.dumps({
            "created": self.path,
            "auth": self.headers.get("Authorization", ""),
            "request": request,
        }).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.2"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 18443
    http.server.ThreadingHTTPServer((host, port), Handler).serve_forever()
