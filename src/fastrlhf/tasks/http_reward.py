"""A reward function served over HTTP: `HTTPReward(url)` is a callable reward function.

It follows the reward-function convention of `fastrlhf.tasks.rewards`
(`reward(completions: list[str], **fields) -> list[float]`), so a reward model or a verifier can
run as a separate service (another machine, another Python environment, a GPU box).

Wire protocol (one request per batch of at most `batch_size` completions):

    POST <url>
    Content-Type: application/json
    {"completions": ["...", "..."], "<field>": [v0, v1], ...}

    every field is a list with one entry per completion, in the same order (e.g. "prompts",
    "answer" from the prompt file); values are whatever JSON the prompt file held.

    200 OK
    Content-Type: application/json
    {"rewards": [0.5, 1.0]}

    "rewards" is a list of numbers, exactly one per completion, in the same order; each must be
    finite (no NaN / Infinity); JSON true / false count as 1 / 0. Other keys are ignored.

    Status codes: a 5xx answer is retried (the server may be overloaded or restarting); any
    other non-200 answer is an error at once (the request is wrong and will stay wrong). Put a
    reason in the body: its first 200 characters appear in the error the user sees.

Connection errors, timeouts and 5xx answers are retried `retries` times, waiting
backoff * 2^k seconds before retry k (0.5 s, 1 s, 2 s by default). Every failure that remains is
a one-line `UserError` naming the URL and the problem; there is never a silent default reward.
`fastrlhf.tasks.reward_server` is a reference server speaking this protocol.

Left out: authentication headers, HTTP keep-alive / connection pooling, concurrent batches,
streaming. Proxies follow the usual `http_proxy` / `https_proxy` / `no_proxy` variables.
"""

from __future__ import annotations

import http.client
import json
import math
import numbers
import time
import urllib.error
import urllib.request

from fastrlhf.errors import UserError

BODY_PREVIEW_CHARS = 200


def is_http_reward(spec: str) -> bool:
    """True when a reward spec names a URL rather than a `module:function`."""
    return spec.startswith(("http://", "https://"))


class _Retryable(Exception):
    """A failed try worth repeating; the message, if it is the last one, is `problem after N tries detail`."""

    def __init__(self, problem: str, detail: str = ""):
        super().__init__(problem)
        self.problem, self.detail = problem, detail


class HTTPReward:
    """Reward function that POSTs batches of completions to `url` (protocol in the module docstring)."""

    def __init__(self, url: str, *, batch_size: int = 64, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.5):
        if not is_http_reward(url):
            raise UserError(f"reward URL '{url}' must start with http:// or https://")
        if batch_size < 1 or timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("HTTPReward needs batch_size >= 1, timeout > 0, retries >= 0, backoff >= 0")
        self.url = url
        self.batch_size = batch_size
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def __repr__(self) -> str:
        return f"HTTPReward({self.url!r}, batch_size={self.batch_size}, timeout={self.timeout})"

    def __call__(self, completions: list[str], **fields: list) -> list[float]:
        for key, values in fields.items():
            if len(values) != len(completions):
                raise ValueError(f"field '{key}' has {len(values)} rows for {len(completions)} completions")
        rewards: list[float] = []
        for start in range(0, len(completions), self.batch_size):
            stop = start + self.batch_size
            payload = {"completions": list(completions[start:stop])}
            payload.update({key: list(values[start:stop]) for key, values in fields.items()})
            rewards.extend(self._score_batch(payload, start))
        return rewards

    def _fail(self, problem: str) -> UserError:
        return UserError(f"reward server {self.url}: {problem}")

    def _score_batch(self, payload: dict, offset: int) -> list[float]:
        """Rewards for one batch; `offset` is the batch's first row (for messages)."""
        try:
            body = json.dumps(payload, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise self._fail(f"cannot send the fields as JSON ({_one_line(exc)})") from None
        text = self._post_with_retries(body)
        try:
            answer = json.loads(text)
        except ValueError:
            raise self._fail(f"response is not JSON: {_preview(text)!r}") from None
        return self._check_rewards(answer, len(payload["completions"]), offset)

    def _post_with_retries(self, body: bytes) -> str:
        tries = self.retries + 1
        for attempt in range(tries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._post(body)
            except _Retryable as failure:
                last = failure
        raise self._fail(f"{last.problem} after {tries} {'try' if tries == 1 else 'tries'}{last.detail}")

    def _post(self, body: bytes) -> str:
        """One POST; the response text, `_Retryable` for transient failures, `UserError` for others."""
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            status, detail = f"HTTP {exc.code} {exc.reason}", f": {_error_body(exc)!r}"
            if exc.code >= 500:
                raise _Retryable(status, detail) from None
            raise self._fail(status + detail) from None
        except TimeoutError:
            raise _Retryable("timed out", f" (timeout {self.timeout:g} s each)") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retryable("timed out", f" (timeout {self.timeout:g} s each)") from None
            raise _Retryable("unreachable", f" ({_one_line(exc.reason)})") from None
        except (OSError, http.client.HTTPException) as exc:  # reset / dropped connection, bad status line
            raise _Retryable("connection failed", f" ({_one_line(exc)})") from None

    def _check_rewards(self, answer, expected: int, offset: int) -> list[float]:
        rewards = answer.get("rewards") if isinstance(answer, dict) else None
        if not isinstance(rewards, list):
            raise self._fail(f'response has no "rewards" list: {_preview(json.dumps(answer))!r}')
        if len(rewards) != expected:
            raise self._fail(f"returned {len(rewards)} rewards for {expected} completions")
        for index, value in enumerate(rewards):
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise self._fail(f"reward {value!r} at index {offset + index} is not a finite number")
        return [float(value) for value in rewards]


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        return _preview(exc.read().decode("utf-8", errors="replace"))
    except (OSError, http.client.HTTPException):
        return ""


def _preview(text: str) -> str:
    return " ".join(text.split())[:BODY_PREVIEW_CHARS]


def _one_line(exc) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
