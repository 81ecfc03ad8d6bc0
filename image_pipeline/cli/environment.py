"""The environment every command starts from: the ancestor's ``.env`` and a Dagster home with our dagster.yaml."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def load_env() -> None:
    from dotenv import load_dotenv

    # The ancestor kept TELEGRAM_TOKEN, TELEGRAM_CHAT_ID and HF_TOKEN in .env; real env wins over it.
    load_dotenv(Path.cwd() / ".env", override=False)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if not os.environ.get("DAGSTER_HOME"):
        home = Path.cwd() / ".dagster_home"
        home.mkdir(exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    project_yaml = Path.cwd() / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and project_yaml.exists():
        shutil.copy(project_yaml, home / "dagster.yaml")
