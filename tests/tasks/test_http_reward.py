"""HTTPReward against real HTTP servers on 127.0.0.1 (each in a thread): protocol, batching, retries, errors."""

import json
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fastrlhf.errors import UserError
from fastrlhf.tasks.http_reward import HTTPReward, is_http_reward
from fastrlhf.tasks.reward_server import main as server_main
from fastrlhf.tasks.reward_server import make_server

FAST = dict(retries=2, backoff=0.01)  # 3 tries, 0.01 s + 0.02 s of waiting


@pytest.fixture(autouse=True)
def no_proxy_for_localhost(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def run_server(server):
    """Serve in a daemon thread; returns (url, stop)."""
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()

    host, port = server.server_address[:2]
    return f"http://{host}:{port}/score", stop


@pytest.fixture
def scripted():
    """A server answering request k with script(k, payload) -> (status, body bytes) or sleeping on None."""
    servers = []

    def start(script):
        requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                requests.append(payload)
                status, body = script(len(requests) - 1, payload)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        url, stop = run_server(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        servers.append(stop)
        return url, requests

    yield start
    for stop in servers:
        stop()


def lengths(completions, **fields):
    return [len(c) + bonus for c, bonus in zip(completions, fields["bonus"])]


def test_reference_server_scores_in_batches():
    calls = []

    def reward(completions, bonus):
        calls.append(len(completions))
        return lengths(completions, bonus=bonus)

    url, stop = run_server(make_server(reward, "127.0.0.1", 0, quiet=True))
    try:
        completions = ["a", "bb", "ccc", "dddd", "eeeee"]
        rewards = HTTPReward(url, batch_size=2)(completions, bonus=[0.5, 0, 0, 0, -1])
    finally:
        stop()
    assert rewards == [1.5, 2.0, 3.0, 4.0, 4.0]
    assert calls == [2, 2, 1]  # 5 rows in batches of 2: three requests


def test_reference_server_reports_bad_requests_and_reward_errors():
    url, stop = run_server(make_server(lambda completions: [math.nan] * len(completions), "127.0.0.1", 0, quiet=True))
    try:
        with pytest.raises(UserError, match=r"HTTP 500 .*after 1 try.*finite"):
            HTTPReward(url, retries=0)(["x"])
        for body, error in [(b"{not json", "not JSON"), (b'{"completions": "x"}', "list of strings"),
                            (b'{"completions": ["x"], "answer": [1, 2]}', "one entry per completion")]:
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=5)
            assert info.value.code == 400 and error in json.loads(info.value.read())["error"]
    finally:
        stop()


def test_retries_5xx_then_succeeds(scripted):
    def script(k, payload):
        if k < 2:
            return 503, b"busy"
        return 200, json.dumps({"rewards": [1.0] * len(payload["completions"])}).encode()

    url, requests = scripted(script)
    assert HTTPReward(url, **FAST)(["a", "b"]) == [1.0, 1.0]
    assert len(requests) == 3


def test_5xx_after_all_retries_names_status_and_body(scripted):
    url, requests = scripted(lambda k, payload: (502, b"upstream   down\n" + b"x" * 500))
    with pytest.raises(UserError) as info:
        HTTPReward(url, **FAST)(["a"])
    message = str(info.value)
    assert url in message and "HTTP 502" in message and "after 3 tries" in message
    assert "upstream down" in message and "x" * 200 not in message and "\n" not in message
    assert len(requests) == 3


def test_4xx_is_not_retried(scripted):
    url, requests = scripted(lambda k, payload: (400, b"unknown field 'answer'"))
    with pytest.raises(UserError, match=r"HTTP 400 .*unknown field 'answer'") as info:
        HTTPReward(url, **FAST)(["a"], answer=["1"])
    assert url in str(info.value)
    assert len(requests) == 1
    assert requests[0] == {"completions": ["a"], "answer": ["1"]}


def test_timeout_is_retried_then_reported(scripted):
    def script(k, payload):
        time.sleep(0.5)
        return 200, b'{"rewards": [1.0]}'

    url, requests = scripted(script)
    with pytest.raises(UserError, match=r"timed out after 2 tries \(timeout 0.1 s each\)") as info:
        HTTPReward(url, timeout=0.1, retries=1, backoff=0.01)(["a"])  # the answer would come after 0.5 s
    assert url in str(info.value)
    assert len(requests) == 2


@pytest.mark.parametrize("body, problem", [
    (b"<html>oops</html>", r"response is not JSON: '<html>oops</html>'"),
    (b'{"scores": [1.0, 2.0]}', r'no "rewards" list'),
    (b'{"rewards": [1.0]}', r"returned 1 rewards for 2 completions"),
    (b'{"rewards": [1.0, NaN]}', r"reward nan at index 1 is not a finite number"),
    (b'{"rewards": [1.0, "high"]}', r"reward 'high' at index 1 is not a finite number"),
])
def test_malformed_answers_are_user_errors(scripted, body, problem):
    url, requests = scripted(lambda k, payload: (200, body))
    with pytest.raises(UserError, match=problem) as info:
        HTTPReward(url, **FAST)(["a", "b"])
    assert str(info.value).startswith(f"reward server {url}: ")
    assert len(requests) == 1  # a wrong answer is not retried


def test_index_of_a_bad_reward_counts_across_batches(scripted):
    url, _ = scripted(lambda k, payload: (200, b'{"rewards": [1.0, null]}' if k == 1 else b'{"rewards": [1.0, 2.0]}'))
    with pytest.raises(UserError, match="reward None at index 3"):
        HTTPReward(url, batch_size=2)(["a", "b", "c", "d"])


def test_unreachable_port():
    with socket.socket() as probe:  # a port that was free a moment ago and nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(UserError, match=r"unreachable after 3 tries .*refused") as info:
        HTTPReward(url, **FAST)(["a"])
    assert url in str(info.value)


def test_spec_detection_and_arguments():
    assert is_http_reward("http://localhost:8000/") and is_http_reward("https://rm.example.com/score")
    assert not is_http_reward("my_rewards:score") and not is_http_reward("rewards/http.py:fn")
    with pytest.raises(UserError, match="must start with http"):
        HTTPReward("localhost:8000")
    with pytest.raises(ValueError, match="field 'bonus' has 1 rows for 2"):
        HTTPReward("http://127.0.0.1:9/")(["a", "b"], bonus=[1])
    assert HTTPReward("http://127.0.0.1:9/")([]) == []  # nothing to score: no request


def test_server_entry_point_reports_a_bad_spec(capsys):
    assert server_main(["no_such_module_xyz:fn", "--port", "0"]) == 2
    assert "no module named 'no_such_module_xyz'" in capsys.readouterr().err
