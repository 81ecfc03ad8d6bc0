"""A fallback chain of image backends (``IMAGE_BACKENDS``): a backend that refuses the service itself hands
the prompt to the next one in the same run; a prompt's own refusal never falls through.

What falls through, per backend: ``ServiceBlocked`` (credits, quota, a bad token, an unsupported provider, the
API not enabled, a workflow the server cannot run) and a ``TransientError`` that outlasted the backend's own
retries (an outage). Such a backend is left out for the rest of the run (an outage only for
``outage_skip_s``), so later prompts do not pay its retries again. ``PromptRejected`` is the prompt's own
fault and ends it where it is, as it does with one backend.

The chain does not know the ledger (services sit below lifecycle): the batch tells it which backends are
paused (``avoid``) and takes what it heard (``take_refusals``) to pause a backend whose credits ran out,
so the budget guard pauses that backend, not the pipeline, while another one can still work. When none is
left, the chain raises what the last backends said: with one backend the chain behaves as that backend.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import ClassVar

from pydantic import Field, PrivateAttr

from image_pipeline.domain.checks import WARN, Check
from image_pipeline.domain.errors import (
    BackendUnavailable,
    CreditsDepleted,
    PipelineError,
    PromptRejected,
    ServiceBlocked,
    ServiceWait,
    TransientError,
)
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.services.images.a1111 import A1111Generator
from image_pipeline.services.images.comfyui import ComfyUIGenerator
from image_pipeline.services.images.huggingface import HuggingFaceGenerator
from image_pipeline.services.images.interface import GeneratedImage, ImageGenerator
from image_pipeline.services.images.preview import OfflinePreviewGenerator


@dataclass(frozen=True)
class Refusal:
    """A backend refusing the service (or out past its retries) while the chain went on."""

    backend: str
    error: PipelineError

    @property
    def pauses(self) -> bool:
        """Credits or a quota: spending on this backend waits (for a person, or until the wait ends)."""
        return isinstance(self.error, (CreditsDepleted, ServiceWait))


class BackendChain(ImageGenerator):
    """The image backends of ``IMAGE_BACKENDS``, tried in order for each prompt."""

    order: list[str] = Field(
        description="Backend kinds in the order they are tried, e.g. [huggingface, a1111]."
    )
    huggingface: HuggingFaceGenerator | None = Field(
        default=None, description="Hugging Face, when in the order."
    )
    comfyui: ComfyUIGenerator | None = Field(default=None, description="A ComfyUI server, when listed.")
    a1111: A1111Generator | None = Field(
        default=None, description="AUTOMATIC1111 / Forge / SD.Next, when listed."
    )
    preview: OfflinePreviewGenerator | None = Field(
        default=None, description="The offline preview, when listed."
    )
    outage_skip_s: float = Field(
        default=300.0,
        description="How long a backend whose outage outlasted its retries is left out in a run.",
    )

    kind: ClassVar[str] = "chain"
    _down: dict[str, tuple[float, PipelineError]] = PrivateAttr(default_factory=dict)
    _refusals: list[Refusal] = PrivateAttr(default_factory=list)
    _state_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # ------------------------------------------------------------------ the members
    def members(self) -> list[tuple[str, ImageGenerator]]:
        out = []
        for name in self.order:
            member = getattr(self, name, None)
            if not isinstance(member, ImageGenerator):
                raise ServiceBlocked(
                    f"IMAGE_BACKENDS lists {name}, which is not configured", service="images"
                )
            if member._before_request is None:
                member._before_request = partial(self._raise_if_down, name)
            out.append((name, member))
        return out

    def _raise_if_down(self, name: str) -> None:
        down = self._is_down(name)
        if down is not None:
            raise down

    def member(self, name: str) -> ImageGenerator | None:
        return dict(self.members()).get(name)

    @property
    def is_preview(self) -> bool:
        return all(m.is_preview for _, m in self.members())

    def describe(self) -> str:
        return " -> ".join(m.describe() for _, m in self.members())

    def _provider(self) -> str:
        return self.members()[0][1]._provider()

    # ------------------------------------------------------------------ what the batch tells and takes
    def avoid(self, name: str, why: PipelineError) -> None:
        """Leave a backend out of this run (the ledger says it is paused)."""
        with self._state_lock:
            self._down[name] = (float("inf"), why)

    def take_refusals(self) -> list[Refusal]:
        with self._state_lock:
            taken, self._refusals = self._refusals, []
        return taken

    def _mark_down(self, name: str, exc: PipelineError) -> None:
        until = time.monotonic() + self.outage_skip_s if isinstance(exc, TransientError) else float("inf")
        with self._state_lock:
            self._down[name] = (until, exc)
            self._refusals.append(Refusal(name, exc))

    def _is_down(self, name: str) -> PipelineError | None:
        with self._state_lock:
            entry = self._down.get(name)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._down[name]
                return None
            return entry[1]

    # ------------------------------------------------------------------ generating
    def _request_for(
        self, name: str, member: ImageGenerator, request: GenerationRequest
    ) -> GenerationRequest:
        """The row's model goes to the backend it was chosen for: the one the row names, or else the first
        of the chain; a fallback of another kind uses its own default model (an SDXL repo id means
        nothing to an A1111 checkpoint list)."""
        if request.backend:
            model = request.model if request.model_from_row else member.model
        else:
            model = request.model if name == self.order[0] else member.model
        own = request.model_from_row and model == request.model
        return replace(request, model=model, backend="", model_from_row=own)

    def generate(self, request: GenerationRequest) -> GeneratedImage:
        members = self.members()
        if request.backend:
            named = [(n, m) for n, m in members if n == request.backend]
            if not named:
                raise PromptRejected(
                    f"the row asks for backend {request.backend}, which IMAGE_BACKENDS does not list "
                    f"({', '.join(self.order)})",
                    service="images",
                )
            members = named  # the row's own choice: no fallback to a backend it did not ask for
        heard: list[tuple[str, PipelineError]] = []
        for name, member in members:
            down = self._is_down(name)
            if down is not None:
                heard.append((name, down))
                continue
            try:
                image = member.generate(self._request_for(name, member, request))
            except PromptRejected:
                raise
            except (ServiceBlocked, TransientError) as exc:
                if self._is_down(name) is not exc:  # not what another prompt heard meanwhile
                    self._mark_down(name, exc)
                heard.append((name, exc))
                continue
            if heard:
                fell = "; ".join(f"{n}: {e}" for n, e in heard)
                image = replace(image, fallback=f"{name} after {fell}")
            return image
        if request.backend:
            # the row's own backend is out; the others may be fine, so only this row waits
            name, why = heard[0]
            raise BackendUnavailable(f"its backend {name} is out: {why}", service="images")
        raise _none_left(heard)

    def preflight(self) -> list[Check]:
        """Every backend's own checks, named by backend. One that fails only warns while another one
        passes (the chain still makes images, the doctor still says what to fix); all failing fail."""
        rows = [(name, member.preflight()) for name, member in self.members()]
        usable = any(not any(c.failed for c in checks) for _, checks in rows)
        out: list[Check] = []
        for name, checks in rows:
            for check in checks:
                check = replace(check, service=f"{check.service} ({name})")
                if check.failed and usable:
                    fix = check.fix or "fix it"
                    check = replace(
                        check, status=WARN, fix=f"{fix}; the next backends make the images meanwhile"
                    )
                out.append(check)
        return out


def _none_left(heard: list[tuple[str, PipelineError]]) -> PipelineError:
    """What the chain raises when every backend refused: the one answer when there was one, else a
    refusal of the same kind that names each backend's answer."""
    if len(heard) == 1:
        return heard[0][1]
    errors = [e for _, e in heard]
    message = "every image backend refused: " + "; ".join(f"{n}: {e}" for n, e in heard)
    if all(isinstance(e, TransientError) for e in errors):
        return TransientError(message, service="images")
    if all(isinstance(e, ServiceWait) for e in errors):
        until = min(e.until for e in errors if isinstance(e, ServiceWait))
        return ServiceWait(message, service="images", wait_s=until - time.time())
    if all(isinstance(e, (CreditsDepleted, ServiceWait)) for e in errors):
        return CreditsDepleted(message, service="images")
    return ServiceBlocked(message, service="images")
