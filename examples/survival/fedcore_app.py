"""Flower components of the survival example (see pyproject.toml [tool.flwr.app.components])."""

from pathlib import Path

from fedcore.flower import make_client_app, make_server_app

APP_DIR = Path(__file__).resolve().parent

server_app = make_server_app(app_dir=APP_DIR)
client_app = make_client_app(app_dir=APP_DIR)
