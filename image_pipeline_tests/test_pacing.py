"""Posts are spaced so that Telegram's per-chat cap never answers 429."""

from __future__ import annotations

import contextlib
import io
import threading
from pathlib import Path

import pytest
from PIL import Image

from image_pipeline.services.publisher.pacing import ChatPacer
from image_pipeline.services.publisher.telegram import TelegramPublisher
from image_pipeline.testing.emulators.telegram import DEFAULT_CHANNEL_ID, DEFAULT_TOKEN, TelegramEmulator


def test_pacer_spaces_posts_evenly_with_a_fake_clock() -> None:
    now = [1000.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    pacer = ChatPacer(20, clock=lambda: now[0], sleep=sleep)
    waits = [pacer.wait_turn("c") for _ in range(4)]
    assert waits == [0.0, 3.0, 3.0, 3.0]
    assert pacer.wait_turn("other chat") == 0.0
    now[0] += 10
    assert pacer.wait_turn("c") == 0.0
    assert ChatPacer(0).wait_turn("c") == 0.0


def test_spacing_counts_from_when_the_previous_post_was_answered() -> None:
    """Telegram's window counts accepted posts: a slow upload must push the next post back."""
    now = [1000.0]

    def sleep(s: float) -> None:
        now[0] += s

    pacer = ChatPacer(20, clock=lambda: now[0], sleep=sleep)
    accepted = []
    for upload_s in (0.1, 2.5, 0.1, 0.1):
        pacer.wait_turn("c")
        now[0] += upload_s  # the upload, answered at its end
        pacer.sent("c")
        accepted.append(now[0])
    gaps = [b - a for a, b in zip(accepted, accepted[1:], strict=False)]
    assert min(gaps) >= 3.0 and gaps == pytest.approx([5.5, 3.1, 3.1])


def test_spacing_holds_across_processes_through_the_state_file(tmp_path: Path) -> None:
    """Two pacers that share nothing but the state file keep the spacing between them: each one's turn
    comes from what the other wrote. One clock for both (the time a real one would read), so the gaps
    are the pacers' decisions, not the scheduler's."""
    state = tmp_path / "pacing.json"
    now = [1000.0]

    def sleep(s: float) -> None:
        now[0] += s

    first, second = (ChatPacer(600, state, clock=lambda: now[0], sleep=sleep) for _ in range(2))  # 0.1 s
    stamps = []
    for pacer in (first, second, first, second):
        pacer.wait_turn("c")
        stamps.append(now[0])
        now[0] += 0.01  # the send itself
        pacer.sent("c")
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert gaps == pytest.approx([0.11, 0.11, 0.11])  # 0.1 s from each answered send
    assert (first.waited_s, second.waited_s) == pytest.approx((0.1, 0.2))


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "navy").save(buf, format="PNG")
    return buf.getvalue()


def _post_many(emulator: TelegramEmulator, per_minute: float, count: int) -> None:
    pub = TelegramPublisher(
        token=DEFAULT_TOKEN,
        chat_id=str(DEFAULT_CHANNEL_ID),
        api_base_url=emulator.base_url,
        posts_per_minute=per_minute,
        retry_attempts=1,
    )
    threads = [
        threading.Thread(target=lambda i=i: _safe_publish(pub, f"p{i}"), daemon=True) for i in range(count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def _safe_publish(pub: TelegramPublisher, pid: str) -> None:
    from image_pipeline.domain.errors import TransientError

    with contextlib.suppress(TransientError):  # a 429 after the single attempt: counted by the emulator
        pub.publish(prompt_id=pid, png=png(), caption=pid)


def test_paced_posts_meet_no_429_where_unpaced_ones_do() -> None:
    # the real cap scaled down: 4 posts per 2 s into one chat is 120 a minute
    with TelegramEmulator(per_chat_per_minute=4) as emulator:
        emulator.rate_window_s = 2.0
        _post_many(emulator, per_minute=0, count=8)
        assert emulator.count_429 > 0
    with TelegramEmulator(per_chat_per_minute=4) as emulator:
        emulator.rate_window_s = 2.0
        _post_many(emulator, per_minute=110, count=8)
        assert emulator.count_429 == 0
        assert len(emulator.messages_for(DEFAULT_CHANNEL_ID)) == 8
