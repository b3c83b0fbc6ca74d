"""The transport layer: the only package that imports ``flwr``."""

from fedcore.flower.client_app import make_client_app
from fedcore.flower.server_app import make_server_app

__all__ = ["make_client_app", "make_server_app"]
