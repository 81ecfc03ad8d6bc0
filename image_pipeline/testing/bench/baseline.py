"""The baseline's worker process: the ancestor bot's whole life, one prompt per fresh Python process.

``baseline_one`` is what ``python -m image_pipeline.testing.bench --baseline-one`` runs: it opens the sheet
by title through gspread, reads column A and row 2, generates with ``InferenceClient``, posts with
``requests``, deletes row 2 and appends to Done, each step tried 3 times 5 s apart. Its heavy imports
stay inside the function, and this package imports nothing but the standard library at the top, so the
baseline's process does not pay for them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

ANCESTOR_DONE_HEADER = ["Prompt", "Status", "Info", "Timestamp"]
SPREADSHEET_TITLE = "Image Prompt"  # the sandbox's, and the ancestor's default title


def _baseline_retry(what: str, fn: Callable[[], Any], attempts: int = 3, delay_s: float = 5.0) -> Any:
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts:
                raise
            print(
                f"baseline retry: {what} failed ({type(exc).__name__}), again in {delay_s:g}s",
                file=sys.stderr,
            )
            time.sleep(delay_s)
    raise AssertionError("unreachable")


def baseline_one(env: dict[str, str] | None = None) -> int:
    """The ancestor bot's whole life: one prompt, then exit (see the package docstring)."""
    import io
    from datetime import datetime

    import gspread
    import requests
    from huggingface_hub import InferenceClient

    env = dict(os.environ) if env is None else env
    sheets_base = env["GOOGLE_SHEETS_API_BASE_URL"].rstrip("/")
    drive_base = env.get("GOOGLE_DRIVE_API_BASE_URL", sheets_base).rstrip("/")

    class LoopbackHTTPClient(gspread.HTTPClient):
        def request(self, method: str, endpoint: str, *args: Any, **kwargs: Any) -> Any:
            endpoint = endpoint.replace("https://sheets.googleapis.com", sheets_base).replace(
                "https://www.googleapis.com", drive_base
            )
            return super().request(method, endpoint, *args, **kwargs)

    gc = gspread.service_account(filename=env["GOOGLE_SERVICE_ACCOUNT_FILE"], http_client=LoopbackHTTPClient)
    gc.set_timeout(30)
    sh = _baseline_retry("open", lambda: gc.open(env.get("GOOGLE_SHEET_TITLE", SPREADSHEET_TITLE)))
    process = _baseline_retry("worksheet", lambda: sh.worksheet("Process"))
    prompts = _baseline_retry("read column A", lambda: process.col_values(1))
    if len(prompts) < 2:
        print("no prompts left")
        return 0
    row = _baseline_retry("read row 2", lambda: process.row_values(2))
    prompt = row[0] if row else ""
    client = InferenceClient(model=env["HF_INFERENCE_BASE_URL"], token=env.get("HF_TOKEN"), timeout=120)
    try:
        image = _baseline_retry("generate", lambda: client.text_to_image(prompt))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        url = f"{env['TELEGRAM_API_BASE_URL'].rstrip('/')}/bot{env['TELEGRAM_TOKEN']}/sendPhoto"

        def send() -> Any:
            response = requests.post(
                url,
                data={"chat_id": env["TELEGRAM_CHAT_ID"], "caption": prompt},
                files={"photo": ("image.png", buf.getvalue(), "image/png")},
                timeout=60,
            )
            response.raise_for_status()
            return response.json()["result"]

        result = _baseline_retry("sendPhoto", send)
        status, info = "SUCCESS", f"message_id {result['message_id']}"
    except Exception as exc:
        status, info = "FAILED", f"{type(exc).__name__}"
    _baseline_retry("delete row 2", lambda: process.delete_rows(2))
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    done = _baseline_retry("Done worksheet", lambda: sh.worksheet("Done"))
    _baseline_retry("append Done", lambda: done.append_row([prompt, status, info, stamp]))
    print(f"{status}: {prompt[:60]}")
    return 0 if status == "SUCCESS" else 1
