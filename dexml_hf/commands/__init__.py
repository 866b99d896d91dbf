"""Subcommands of ``dexml-hf``; one module a command, each with ``register(subparsers)``."""
