"""Would it refuse the next prompt too? The run's own evidence about answers no rule explains.

A refusal that a documented rule ties to the prompt (a content filter, a photo Telegram will not take)
fails the prompt at once. An answer that only the fallback rule calls the prompt's ("another 400") may
just as well be ours: a parameter a provider stopped taking, a proxy's rule, a service we have not met.
Such a prompt is a *suspect*, and the run decides with what else it sees:

- the same service refused another prompt with the same answer: it is not about one prompt, so the run
  stops and every prompt stays queued (the refusal of a service, with its text);
- the same service accepted another prompt of the run: the answer was about this prompt, which fails;
- neither: nothing is known yet, so the prompt stays queued with an attempt counted, like a transient
  fault (a prompt that meets it alone in three runs is quarantined).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from image_pipeline.domain.errors import ServiceBlocked


@dataclass
class Suspects:
    served: set[str] = field(default_factory=set)  # services that accepted a prompt of this run
    by_answer: dict[str, str] = field(default_factory=dict)  # answer signature -> the first prompt's id
    pending: dict[str, str] = field(default_factory=dict)  # prompt id -> service, undecided

    def accepted(self, service: str) -> None:
        self.served.add(service)

    def refused(self, key: str, service: str, answer: str, text: str) -> None:
        """A prompt refused with an answer no rule explains; raises when a second prompt got it too."""
        first = self.by_answer.setdefault(answer, key)
        if first != key:
            raise ServiceBlocked(
                f"{text} — the same answer for two prompts ({first}, {key}), so it is not about one "
                "prompt: check the service's configuration; every prompt stays queued",
                service=service,
            )
        self.pending[key] = service

    def verdicts(self) -> dict[str, bool]:
        """For each suspect: True when it fails (its service accepted another prompt), False when it
        stays queued."""
        return {key: service in self.served for key, service in self.pending.items()}
