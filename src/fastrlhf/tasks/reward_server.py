"""Reference server for the HTTP reward protocol: wrap a Python reward function as a service.

    python -m fastrlhf.tasks.reward_server my_rewards:score --host 0.0.0.0 --port 8000
    fastrlhf train task.reward=http://that-host:8000/

It answers `POST` on any path with the protocol of `fastrlhf.tasks.http_reward` (see that module's
docstring): the request `{"completions": [...], <field>: [...], ...}` becomes
`reward_fn(completions=[...], <field>=[...], ...)`, checked by `fastrlhf.tasks.rewards.score`, and
the answer is `{"rewards": [...]}`. A malformed request gets 400 with `{"error": "..."}`; a reward
function that raises or returns something invalid gets 500 with `{"error": "..."}` (the client
retries 5xx, then shows the error). Calls to the reward function are serialised by a lock, so it
need not be thread-safe; the threaded server only keeps slow connections from blocking others.

Left out: TLS, authentication, batching across requests, a health-check endpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fastrlhf.errors import UserError
from fastrlhf.tasks.rewards import RewardFn, load_reward, score


class _BadRequest(Exception):
    pass


def _parse_request(body: bytes) -> tuple[list[str], dict[str, list]]:
    """(completions, fields) from a request body, or `_BadRequest` saying what is wrong."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise _BadRequest("request body is not JSON") from None
    if not isinstance(payload, dict):
        raise _BadRequest("request body must be a JSON object")
    completions = payload.pop("completions", None)
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise _BadRequest('"completions" must be a list of strings')
    for key, values in payload.items():
        if not isinstance(values, list) or len(values) != len(completions):
            raise _BadRequest(f'field "{key}" must be a list with one entry per completion')
    return completions, payload


class RewardHandler(BaseHTTPRequestHandler):
    """POST handler; `server.reward_fn`, `server.lock` and `server.quiet` are set by `make_server`."""

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length header required"})
        try:
            completions, fields = _parse_request(self.rfile.read(length))
        except _BadRequest as exc:
            return self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        try:
            with self.server.lock:
                rewards = score(self.server.reward_fn, completions, fields)
        except UserError as exc:
            return self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
        self._reply(HTTPStatus.OK, {"rewards": rewards})

    def _reply(self, status: HTTPStatus, answer: dict) -> None:
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


def make_server(reward_fn: RewardFn, host: str = "127.0.0.1", port: int = 8000, *,
                quiet: bool = False) -> ThreadingHTTPServer:
    """A bound, not yet serving server (port 0 picks a free port: read `server.server_address`)."""
    server = ThreadingHTTPServer((host, port), RewardHandler)
    server.reward_fn, server.lock, server.quiet = reward_fn, threading.Lock(), quiet
    return server


def serve(reward_fn: RewardFn, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve `reward_fn` until interrupted."""
    with make_server(reward_fn, host, port) as server:
        bound_host, bound_port = server.server_address[:2]
        print(f"serving rewards on http://{bound_host}:{bound_port}/", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastrlhf.tasks.reward_server",
                                     description="Serve a reward function over HTTP.")
    parser.add_argument("reward", help="module:function or path/to/file.py:function")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: all interfaces)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        reward_fn = load_reward(args.reward)
    except UserError as exc:
        print(f"reward_server: error: {exc}", file=sys.stderr)
        return 2
    serve(reward_fn, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
