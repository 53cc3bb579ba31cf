"""Built-in tasks (prompts, rewards, SFT demonstrations) and loaders for user prompts / rewards.

`BUILTIN_TASKS` names the built-in tasks; `config.task.name` must be one of them.
"""

BUILTIN_TASKS = ("arithmetic", "preference")
