"""``image-pipeline-sandbox``: the three loopback emulators as a stand-in for Google, Hugging Face and Telegram.

The pipeline keeps its real clients (gspread, InferenceClient, requests) and only their base URLs and
credentials change, so ``make dev`` against the sandbox exercises the same code paths as production
without accounts, tokens or network access. Everything lives in memory: stopping the sandbox forgets it.
With ``comfyui=True`` and/or ``a1111=True`` it also serves a ComfyUI server and/or an AUTOMATIC1111 web API,
and its env makes them the image backends, in that order (``IMAGE_BACKENDS=comfyui:<URL>, a1111:<URL>``),
instead of Hugging Face. ``image-pipeline-sandbox`` serves ComfyUI unless told ``--no-comfyui``, so ``make
dev-sandbox`` shows runs made by the self-hosted backend.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType

from image_pipeline.domain.done_entries import DONE_COLUMNS
from image_pipeline.testing.emulators.a1111 import A1111Emulator
from image_pipeline.testing.emulators.base import EmulatorServer
from image_pipeline.testing.emulators.comfyui import ComfyUIEmulator
from image_pipeline.testing.emulators.google import GoogleEmulator
from image_pipeline.testing.emulators.huggingface import HuggingFaceEmulator
from image_pipeline.testing.emulators.telegram import ALERTS_CHANNEL_ID, DEFAULT_CHANNEL_ID, TelegramEmulator

SAMPLE_QUEUE = Path(__file__).resolve().parents[1] / "samples" / "process.csv"
SPREADSHEET_TITLE = "Image Prompt"
PROCESS_WORKSHEET = "Process"
DONE_WORKSHEET = "Done"
HF_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_DIR = Path("data/sandbox")
STATUS_INTERVAL_S = 10.0

# Characters that need no quoting in either a dotenv file or a POSIX shell.
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.,:/@%+=")


def read_sample_queue(path: Path = SAMPLE_QUEUE) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return [list(row) for row in csv.reader(fh)]


def dotenv_quote(value: str) -> str:
    """Quote ``value`` for a dotenv file that ``set -a; . file`` can also source.

    Single quotes keep spaces and shell metacharacters literal for both readers. python-dotenv also
    decodes backslash escapes of a backslash or a single quote inside them, so those two are escaped for
    it; a shell reads such values differently, but the sandbox's values (loopback URLs, test tokens, a
    key-file path) hold neither. python-dotenv expands ``${VAR}`` whatever the quoting.
    """
    if value and all(c in _SAFE_CHARS for c in value):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


class Sandbox:
    """Google, Hugging Face and Telegram emulators on loopback ports, plus the env that selects them."""

    def __init__(
        self,
        folder: Path,
        *,
        seed_rows: list[list[str]] | None = None,
        latency_s: float = 0.0,
        a1111: bool = False,
        comfyui: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.seed_rows = seed_rows
        self.latency_s = latency_s
        # The real per-user quotas (60 reads and 60 writes a minute), so a sandbox run hits 429s
        # exactly where production would.
        self.google = GoogleEmulator()
        self.hf = HuggingFaceEmulator()
        self.telegram = TelegramEmulator()
        # a self-hosted image server in place of Hugging Face, when asked (its knobs: generation_s, ...)
        self.a1111: A1111Emulator | None = A1111Emulator() if a1111 else None
        # seconds_per_job as a small GPU box takes: the UI shows the run waiting on it
        self.comfyui: ComfyUIEmulator | None = ComfyUIEmulator(seconds_per_job=1.0) if comfyui else None
        self.spreadsheet_id = ""
        self.key_file = self.folder / "service_account.json"
        self._started = False

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> Sandbox:
        if self._started:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            for emulator in self._emulators():
                emulator.start()
                if self.latency_s > 0:
                    emulator.set_latency(self.latency_s)
            self.google.write_service_account_file(self.key_file)
            process = self.seed_rows if self.seed_rows is not None else read_sample_queue()
            self.spreadsheet_id = self.google.create_spreadsheet(
                SPREADSHEET_TITLE,
                {
                    PROCESS_WORKSHEET: [list(row) for row in process],
                    DONE_WORKSHEET: [list(DONE_COLUMNS)],
                },
            )
        except BaseException:
            # Without this a failed start leaves server threads holding ports until the process exits.
            self._stop_emulators()
            raise
        self._started = True
        return self

    def stop(self) -> None:
        self._stop_emulators()
        self._started = False

    def _stop_emulators(self) -> None:
        # EmulatorServer.stop() is a no-op on a server that never started, so this is safe mid-start.
        for emulator in reversed(self._emulators()):
            emulator.stop()

    def _emulators(self) -> list[EmulatorServer]:
        optional = [e for e in (self.comfyui, self.a1111) if e is not None]
        return [self.google, self.hf, self.telegram, *optional]

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- what the pipeline needs
    def env(self) -> dict[str, str]:
        """The variables that point the pipeline's real backends at the emulators, and nothing else."""
        if not self._started:
            raise RuntimeError("the sandbox is not started")
        listed = [
            f"{name}:{emulator.base_url}"
            for name, emulator in (("comfyui", self.comfyui), ("a1111", self.a1111))
            if emulator is not None
        ]
        backends = {"IMAGE_BACKENDS": ", ".join(listed)} if listed else {}
        return {
            "GOOGLE_SERVICE_ACCOUNT_FILE": str(self.key_file.resolve()),
            "GOOGLE_SHEET_KEY": self.spreadsheet_id,
            "GOOGLE_SHEETS_API_BASE_URL": self.google.base_url,
            "GOOGLE_DRIVE_API_BASE_URL": self.google.base_url,
            "HF_TOKEN": self.hf.token,
            "HF_INFERENCE_BASE_URL": f"{self.hf.base_url}/models/{HF_MODEL}",
            "HF_MODEL": HF_MODEL,
            "TELEGRAM_TOKEN": self.telegram.token,
            "TELEGRAM_CHAT_ID": str(DEFAULT_CHANNEL_ID),
            "TELEGRAM_ALERT_CHAT_ID": str(ALERTS_CHANNEL_ID),
            "TELEGRAM_API_BASE_URL": self.telegram.base_url,
            **backends,
        }

    def write_env_file(self, path: Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={dotenv_quote(value)}" for key, value in self.env().items()]
        target.write_text(
            "# image-pipeline-sandbox: loopback emulators, valid only while `image-pipeline-sandbox` runs\n"
            + "\n".join(lines)
            + "\n",
            encoding="utf-8",
        )
        return target

    # ----------------------------------------------------------------- inspection
    def _data_rows(self, worksheet: str) -> int:
        rows = self.google.values(self.spreadsheet_id, worksheet)
        return sum(1 for row in rows[1:] if any(cell != "" for cell in row))

    def status_line(self) -> str:
        # Reads emulator state directly rather than over HTTP, so watching never spends the quota.
        posts = len(self.telegram.messages_for(DEFAULT_CHANNEL_ID))
        alerts = len(self.telegram.messages_for(ALERTS_CHANNEL_ID))
        return (
            f"[{time.strftime('%H:%M:%S')}] Process: {self._data_rows(PROCESS_WORKSHEET)} left, "
            f"Done: {self._data_rows(DONE_WORKSHEET)} rows, "
            f"Telegram: {posts} posted, {alerts} alerts"
        )


# --------------------------------------------------------------------------------------------- command


def _display(path: Path) -> str:
    """Relative to the cwd when possible, so the printed commands are short and copy-pasteable."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path.resolve())


def _banner(sandbox: Sandbox, env_file: Path) -> str:
    shown = _display(env_file)
    lines = [
        "image-pipeline-sandbox: loopback emulators are running",
        f"  google (oauth, sheets, drive): {sandbox.google.base_url}",
        f"  hugging face:                  {sandbox.hf.base_url}",
        f"  telegram:                      {sandbox.telegram.base_url}",
        *([f"  comfyui (images):              {sandbox.comfyui.base_url}"] if sandbox.comfyui else []),
        *([f"  a1111 (images):                {sandbox.a1111.base_url}"] if sandbox.a1111 else []),
        f"  spreadsheet {SPREADSHEET_TITLE!r}: {sandbox.spreadsheet_id}",
        f"env file: {shown}",
        "",
        *(f"export {key}={shlex.quote(value)}" for key, value in sandbox.env().items()),
        "",
        f"in another terminal: `make dev-sandbox` or `set -a; . {shlex.quote(shown)}; set +a; make dev`",
        "Ctrl-C stops the sandbox (its state is in memory only).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="image-pipeline-sandbox",
        description="Run loopback Google/Hugging Face/Telegram emulators and write the env that selects them.",
    )
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="folder for the key file and env file")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every emulator response")
    parser.add_argument(
        "--a1111", action="store_true", help="also serve an AUTOMATIC1111 API and make it the image backend"
    )
    parser.add_argument(
        "--no-comfyui",
        action="store_true",
        help="no ComfyUI server: Hugging Face's emulator makes the images (unless --a1111)",
    )
    parser.add_argument(
        "--env-file", type=Path, default=None, help="where to write the env file (default: DIR/sandbox.env)"
    )
    args = parser.parse_args(argv)
    env_file: Path = args.env_file if args.env_file is not None else args.dir / "sandbox.env"

    stop = threading.Event()

    # Only sets a flag: the main loop notices it within a fraction of a second and shuts down in order.
    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Sandbox(
            args.dir, latency_s=args.latency, a1111=args.a1111, comfyui=not args.no_comfyui
        ) as sandbox:
            sandbox.write_env_file(env_file)
            print(_banner(sandbox, env_file), flush=True)
            next_status = time.monotonic() + STATUS_INTERVAL_S
            while not stop.is_set():
                # Short sleeps instead of stop.wait(): a signal handler touching the Event's lock while
                # the main thread holds it inside wait() could deadlock.
                time.sleep(0.1)
                if time.monotonic() >= next_status:
                    print(sandbox.status_line(), flush=True)
                    next_status = time.monotonic() + STATUS_INTERVAL_S
            print("stopping the sandbox", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"stopped; {_display(env_file)} now points at closed ports", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
