"""The A1111 backend (real HTTP through requests) against the loopback A1111 emulator."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from image_pipeline.domain.checks import FAIL, OK, SKIP
from image_pipeline.domain.errors import PromptRejected, ServiceBlocked, TransientError
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.services.images.a1111 import A1111Generator, match_checkpoint
from image_pipeline.testing.emulators.a1111 import A1111Emulator

PASSWORD = "pw-for-tests-4417"


@pytest.fixture
def a1111() -> Iterator[A1111Emulator]:
    with A1111Emulator() as emulator:
        yield emulator


def generator(emulator: A1111Emulator, **overrides) -> A1111Generator:
    fields = {
        "base_url": emulator.base_url,
        "width": 64,
        "height": 64,
        "retry_base_delay_s": 0.01,
        "timeout_s": 10.0,
    }
    fields.update(overrides)
    return A1111Generator(**fields)


def request(prompt: str = "a red fox", *, model: str = "", **kw) -> GenerationRequest:
    base = {"negative_prompt": "blurry", "width": 64, "height": 64, "seed": 42}
    base.update(kw)
    return GenerationRequest(prompt=prompt, model=model, model_from_row=bool(model), **base)


class ServerSeeded(A1111Generator):
    """Leaves the seed to the server (sends -1), so only the server's ``info`` can tell it."""

    def _pick_seed(self, request: GenerationRequest) -> int | None:
        return None


def test_happy_path_records_size_and_the_seed_and_model_the_server_reports(a1111) -> None:
    image = ServerSeeded(base_url=a1111.base_url, retry_base_delay_s=0.01).generate(
        request(width=96, height=64)
    )
    [job] = a1111.jobs
    [body] = a1111.txt2img_bodies
    assert body["seed"] == -1 and job["seed"] != -1
    assert image.seed == job["seed"]  # read from info, not chosen by us
    assert (image.width, image.height) == (96, 64)
    with Image.open(io.BytesIO(image.png)) as png:
        assert png.format == "PNG" and png.size == (96, 64)
    assert (image.model, image.provider, image.backend) == ("sd_xl_base_1.0", "a1111", "a1111")
    assert body["steps"] == 30 and body["cfg_scale"] == 7.0 and body["sampler_name"] == "DPM++ 2M"
    assert "override_settings" not in body  # no model named: the loaded checkpoint


def test_our_seed_is_sent_and_recorded(a1111) -> None:
    image = generator(a1111).generate(request(seed=1234))
    assert a1111.txt2img_bodies[0]["seed"] == 1234 and image.seed == 1234 == a1111.jobs[0]["seed"]


@pytest.mark.parametrize("name", ["juggernautXL_v9", "juggernautXL_v9.safetensors", "juggernaut"])
def test_a_rows_checkpoint_goes_in_override_settings(a1111, name: str) -> None:
    title = a1111.checkpoint("juggernautXL_v9.safetensors").title
    image = generator(a1111).generate(request(model=name))
    [body] = a1111.txt2img_bodies
    assert body["override_settings"] == {"sd_model_checkpoint": title}
    assert body["override_settings_restore_afterwards"] is True
    assert a1111.jobs[0]["model"] == title and image.model == "juggernautXL_v9"
    # the listing is fetched once per run, not per image
    generator_ = generator(a1111)
    generator_.generate(request(model=name))
    generator_.generate(request(model="sd_xl_base_1.0"))
    assert a1111.count("sd-models") == 2


def test_checkpoint_names_match_every_alias_the_listing_shows(a1111) -> None:
    ckpt = a1111.checkpoint("flux/flux1-dev-fp8.safetensors")
    listing = [c.listing() for c in a1111.checkpoints]
    for alias in (ckpt.title, ckpt.model_name, ckpt.shorthash, ckpt.sha256, ckpt.name, ckpt.stem):
        assert match_checkpoint(listing, alias) == ckpt.title, alias
    assert match_checkpoint(listing, "no-such-model") is None


def test_an_unknown_checkpoint_is_the_rows_fault_and_never_reaches_txt2img(a1111) -> None:
    gen = generator(a1111)
    with pytest.raises(PromptRejected) as caught:
        gen.generate(request(model="dreamshaper_8"))
    message = str(caught.value)
    assert "dreamshaper_8" in message and "juggernautXL_v9.safetensors" in message
    assert a1111.count("txt2img") == 0
    assert a1111.count("sd-models") == 2  # fetched again once, in case it was just added
    with pytest.raises(PromptRejected):
        gen.generate(request(model="dreamshaper_8"))
    assert a1111.count("sd-models") == 2  # not refetched for the same missing name


def test_a_checkpoint_added_during_the_run_is_found_on_the_refresh(a1111) -> None:
    gen = generator(a1111)
    gen.generate(request(model="juggernautXL_v9"))
    a1111.add_checkpoint("dreamshaper_8.safetensors")
    image = gen.generate(request(model="dreamshaper_8"))
    assert image.model == "dreamshaper_8" and a1111.count("sd-models") == 2


def test_an_unknown_default_checkpoint_is_the_configurations_fault(a1111) -> None:
    gen = generator(a1111, model="missing_xl")
    with pytest.raises(ServiceBlocked, match="A1111_MODEL 'missing_xl'"):
        gen.generate(GenerationRequest("a fox", None, "missing_xl", 64, 64, 1))
    assert a1111.count("txt2img") == 0


def test_login_accepted_missing_and_wrong() -> None:
    with A1111Emulator(api_auth=f"ann:{PASSWORD}") as emulator:
        assert generator(emulator, user="ann", password=PASSWORD).generate(request()).width == 64
        with pytest.raises(ServiceBlocked, match="set A1111_USER and A1111_PASSWORD"):
            generator(emulator).generate(request())
        with pytest.raises(ServiceBlocked, match="--api-auth") as caught:
            generator(emulator, user="ann", password="wrong-password-123").generate(request())
        assert "wrong-password-123" not in str(caught.value)
        assert emulator.count("txt2img") == 3  # no retry of a refused login


def test_api_not_enabled_says_start_it_with_api() -> None:
    emulator = A1111Emulator(api_enabled=False)
    with emulator, pytest.raises(ServiceBlocked, match="--api") as caught:
        generator(emulator).generate(request())
    assert caught.value.status == 404 and emulator.count("txt2img") == 1


def test_sdnext_without_a_model_is_the_services_fault() -> None:
    emulator = A1111Emulator(flavour="sdnext", loaded=None)
    with emulator, pytest.raises(ServiceBlocked, match="no model is loaded"):
        generator(emulator).generate(request())


def test_422_about_a_row_field_fails_the_prompt_about_ours_blocks_the_service(a1111) -> None:
    a1111.fail_next("422:width", endpoints=["txt2img"])
    with pytest.raises(PromptRejected, match="width"):
        generator(a1111).generate(request())
    a1111.fail_next("422:steps", endpoints=["txt2img"])
    with pytest.raises(ServiceBlocked, match="steps"):
        generator(a1111).generate(request())


def test_out_of_memory_is_retried_once_then_decided(a1111) -> None:
    a1111.fail_next("oom", endpoints=["txt2img"])
    assert generator(a1111).generate(request()).width == 64  # memory freed: the retry works
    a1111.fail_next("oom", "oom", endpoints=["txt2img"])
    with pytest.raises(ServiceBlocked, match="default size 64x64"):
        generator(a1111).generate(request())
    a1111.fail_next("oom", "oom", endpoints=["txt2img"])
    with pytest.raises(PromptRejected, match="size 128x128"):
        generator(a1111).generate(request(width=128, height=128))
    assert a1111.count("txt2img") == 6  # never a third try


def test_a_read_timeout_interrupts_the_running_job() -> None:
    with A1111Emulator(generation_s=3.0) as emulator:
        with pytest.raises(TransientError, match="did not answer within 0.3s"):
            generator(emulator, timeout_s=0.3, retry_attempts=1).generate(request())
        deadline = time.monotonic() + 5
        while not emulator.jobs and time.monotonic() < deadline:
            time.sleep(0.01)
    assert emulator.count("interrupt") == 1
    assert emulator.jobs_interrupted == 1 and emulator.jobs[0]["interrupted"]


def test_connection_refused_is_transient_through_the_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gen = A1111Generator(base_url=f"http://127.0.0.1:{port}", retry_attempts=2, retry_base_delay_s=0.01)
    with pytest.raises(TransientError, match="cannot connect"):
        gen.generate(request())


def test_cloudflare_524_is_transient_once_and_a_service_fault_when_it_persists(a1111) -> None:
    a1111.fail_next("cloudflare_524", endpoints=["txt2img"])
    assert generator(a1111).generate(request()).width == 64
    a1111.fail_next("cloudflare_524", "cloudflare_524", endpoints=["txt2img"])
    with pytest.raises(ServiceBlocked, match="proxy"):
        generator(a1111, retry_attempts=2).generate(request())


def test_other_500_is_transient(a1111) -> None:
    a1111.fail_next(500, 500, endpoints=["txt2img"])
    with pytest.raises(TransientError, match="HTTP 500"):
        generator(a1111, retry_attempts=2).generate(request())


@pytest.mark.parametrize("concurrency", [1, 4])
def test_four_concurrent_generations_never_run_two_jobs_at_once(concurrency: int) -> None:
    with A1111Emulator(generation_s=0.05) as emulator:
        gen = generator(emulator, concurrency=concurrency)
        results: list[object] = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(gen.generate(request(f"p{i}", seed=i))))
            for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    assert len(results) == 4 and emulator.jobs_run == 4
    assert emulator.max_concurrent_jobs == 1
    # with concurrency 4 the server's own queue holds the others inside their requests
    print(f"concurrency {concurrency}: longest server queue {emulator.queue_lock.max_waiting}")


def test_per_job_overhead_of_20_jobs() -> None:
    with A1111Emulator(generation_s=0.05) as emulator:
        gen = generator(emulator)
        started = time.monotonic()
        for i in range(20):
            gen.generate(request(f"p{i}", seed=i))
        wall = time.monotonic() - started
    overhead_ms = (wall - 20 * 0.05) / 20 * 1000
    print(f"20 jobs of 0.05 s: wall {wall:.2f}s, overhead {overhead_ms:.1f} ms per job (64x64)")
    assert emulator.jobs_run == 20


def test_preflight_all_ok(a1111) -> None:
    checks = generator(a1111, model="juggernautXL_v9").preflight()
    assert [c.status for c in checks] == [OK, OK, OK, OK]
    assert "juggernautXL_v9.safetensors [" in checks[3].detail
    loaded = generator(a1111).preflight()[3]
    assert loaded.status == OK and "sd_xl_base_1.0" in loaded.detail


def test_preflight_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    checks = A1111Generator(base_url=f"http://127.0.0.1:{port}").preflight()
    assert [c.status for c in checks] == [FAIL, SKIP, SKIP, SKIP]


def test_preflight_api_disabled() -> None:
    with A1111Emulator(api_enabled=False) as emulator:
        checks = generator(emulator).preflight()
    assert [c.status for c in checks] == [OK, FAIL, SKIP, SKIP] and "--api" in checks[1].fix


def test_preflight_login() -> None:
    with A1111Emulator(api_auth=f"ann:{PASSWORD}") as emulator:
        missing = generator(emulator).preflight()
        wrong = generator(emulator, user="ann", password="nope-nope").preflight()
        right = generator(emulator, user="ann", password=PASSWORD).preflight()
    assert [c.status for c in missing] == [OK, OK, FAIL, SKIP]
    assert [c.status for c in wrong] == [OK, OK, FAIL, SKIP] and "A1111_PASSWORD" in wrong[2].fix
    assert [c.status for c in right] == [OK, OK, OK, OK]


def test_preflight_default_checkpoint_missing_or_nothing_loaded(a1111) -> None:
    missing = generator(a1111, model="missing_xl").preflight()
    assert missing[3].status == FAIL and "juggernautXL_v9" in missing[3].fix
    with A1111Emulator(flavour="sdnext", loaded=None) as emulator:
        nothing = generator(emulator).preflight()
    assert nothing[3].status == FAIL and "no checkpoint is loaded" in nothing[3].detail
