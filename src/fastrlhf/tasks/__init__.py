"""Built-in tasks (prompts, rewards, SFT demonstrations) and loaders for user prompts / rewards.

`BUILTIN_TASKS` names the built-in tasks; `config.task.name` must be one of them:
- "arithmetic": "47+815=" -> "862", exact-match reward (`arithmetic`);
- "preference": sort-the-digits responses judged by a learned reward model (`preference`);
- "worked_addition": addition with column-by-column working, long-tailed response lengths (`worked_addition`).
"""

BUILTIN_TASKS = ("arithmetic", "preference", "worked_addition")

MAX_NEW_TOKENS = {"worked_addition": 96}  # a task's default rollout.max_new_tokens, when not 8
DEFAULT_MAX_NEW_TOKENS = 8  # the other tasks


def task_max_new_tokens(name: str) -> int:
    """The default `rollout.max_new_tokens` of built-in task `name`."""
    return MAX_NEW_TOKENS.get(name, DEFAULT_MAX_NEW_TOKENS)
