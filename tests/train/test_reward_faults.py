"""Faults on the reward path, injected mid-run (step 3): one line, exit 2, steps 1-2 saved, resume named.

A reward function that raises, returns NaN, the wrong length or the wrong type; an HTTP reward server
that hangs (timeout) or answers garbage; a reward function that hangs forever (the hang watchdog).
"""

import http.server
import json
import subprocess
import sys
import threading
import time

import pytest

from fastrlhf.cli import main

STEP_ROWS = 16  # 4 prompts × 4 samples: the reward calls of training steps (evaluation calls have 8)

FAULTS = {
    "raises": ("raise RuntimeError('database is down')", "raised RuntimeError: database is down"),
    "nan": ("return [float('nan')] * len(completions)", "returned nan at index 0"),
    "wrong length": ("return [0.0]", "returned 1 rewards for 16 completions"),
    "wrong type": ("return 'oops'", "must return a list of floats, got str"),
}


def overrides(policy, run_dir, reward, *extra):
    return [f"model.path={policy}", f"train.run_dir={run_dir}", "train.steps=4", "train.prompts_per_step=4",
            "rollout.samples_per_prompt=4", "rollout.max_new_tokens=5", "train.checkpoint_every=0",
            "task.eval_size=8", "train.eval_every=0", f"task.reward={reward}", *extra]


def faulty_reward(tmp_path, fault: str) -> str:
    path = tmp_path / "flaky_reward.py"
    path.write_text(
        "calls = []\n"
        "def score(completions, **fields):\n"
        f"    calls.append(len(completions))\n"
        f"    if calls.count({STEP_ROWS}) == 3:\n"
        f"        {fault}\n"
        "    return [float(len(c)) for c in completions]\n")
    return f"{path}:score"


def assert_clean_stop(code, err, run_dir, message):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("fastrlhf: error: ") and message in err, err
    assert f"steps 1-2 are saved; continue with: fastrlhf train --resume {run_dir}" in err, err
    assert (run_dir / "checkpoints" / "step_000002" / "state.json").is_file()
    assert not (run_dir / "final").exists()


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_a_reward_function_failing_mid_run_stops_cleanly(tiny_policy, tmp_path, capsys, fault):
    code, message = FAULTS[fault]
    reward = faulty_reward(tmp_path, code)
    exit_code = main(["train", *overrides(tiny_policy, tmp_path / "r", reward), "--quiet"])
    err = capsys.readouterr().err
    assert_clean_stop(exit_code, err, tmp_path / "r", message)
    assert f"'{reward}'" in err  # the user's file.py:function, not an internal module name


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def reward_server(behaviour):
    """A local reward server: correct for the first training batches, then `behaviour`."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            n = len(body["completions"])
            seen.append(n)
            if seen.count(STEP_ROWS) >= 3:
                if behaviour == "hang":
                    time.sleep(3)
                    return
                payload = b"<html>not json</html>"
            else:
                payload = json.dumps({"rewards": [float(len(c)) for c in body["completions"]]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("behaviour,message", [("hang", "timed out"), ("garbage", "not JSON")])
def test_an_http_reward_server_failing_mid_run_stops_cleanly(tiny_policy, tmp_path, capsys, behaviour, message):
    server = reward_server(behaviour)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/score"
        code = main(["train", *overrides(tiny_policy, tmp_path / "r", url, "task.reward_timeout=0.5",
                                         "task.reward_retries=1"), "--quiet"])
    finally:
        server.shutdown()
    assert_clean_stop(code, capsys.readouterr().err, tmp_path / "r", message)


def test_a_hung_reward_function_trips_the_watchdog(tiny_policy, tmp_path):
    reward = faulty_reward(tmp_path, "import time; time.sleep(600)")
    run_dir = tmp_path / "r"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fastrlhf.cli", "train",
                           *overrides(tiny_policy, run_dir, reward, "train.hang_timeout=3", "train.checkpoint_every=1"),
                           "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - started < 60
    line = done.stderr.strip().splitlines()[-1]
    assert "no progress for" in line and "step 3: reward.score" in line and "--resume" in line, done.stderr
    report = next(run_dir.glob("hang-*.txt")).read_text()
    assert "time.sleep(600)" in report or "flaky_reward.py" in report  # the stuck frame is in the dump
    assert (run_dir / "checkpoints" / "step_000002" / "state.json").is_file()


def test_with_progress_shown_the_error_is_still_the_only_stderr_line(tiny_policy, tmp_path, capsys):
    """Progress goes to stdout; a failed run's stderr is its one error line (it used to follow progress lines)."""
    reward = faulty_reward(tmp_path, FAULTS["raises"][0])
    code = main(["train", *overrides(tiny_policy, tmp_path / "r", reward)])
    out, err = capsys.readouterr()
    assert "step 2/4" in out and "start held-out" in out
    assert_clean_stop(code, err, tmp_path / "r", FAULTS["raises"][1])
