"""The one error type users see.

A `UserError` is bad input from the user (config, dataset, checkpoint, CLI arguments): the CLI prints
its message on one line and exits with code 2, without a traceback. Anything else is our bug and
keeps its traceback.
"""


class UserError(Exception):
    """Bad user input; the message names the file / key and the problem in one line."""


class WorkerLost(UserError):
    """A worker process of the run (runtime.backend=ray) died and the run cannot go on without it — a
    trainer rank, or every rollout worker. One line naming it; the loop adds the resume command."""
