"""Options several commands share, declared once so that their names, defaults and help agree."""

from __future__ import annotations

import typer

RUN = typer.Option(None, "--run", help="Run folder (or its model.safetensors); default: runs/latest.")
JSON = typer.Option(False, "--json", help="Print one JSON document on stdout instead of the table.")
DEVICE = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda or cuda:N.")
