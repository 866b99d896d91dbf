"""A free loopback port for the multi-process tests (torchrun / accelerate launch rendezvous)."""

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
