"""fastrlhf: RLHF training that is faster, cheaper and sturdier.

See docs/architecture.md for the map of the package.
"""

__version__ = "0.1.0"
