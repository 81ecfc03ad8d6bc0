"""The Hub side of a request: the Hub API a preflight and provider routing ask (``/api/whoami-v2``,
``/api/models/<id>?expand=inferenceProviderMapping``), the result downloads on fal's and replicate's
hosts, and the retired serverless API's 410."""

from __future__ import annotations

import hashlib
from typing import Any

from image_pipeline.testing.emulators.base import Request, Response
from image_pipeline.testing.emulators.huggingface.state import HuggingFaceState
from image_pipeline.testing.emulators.huggingface.wire import GONE_MESSAGE, INVALID_CREDENTIALS, _request_id


class HuggingFaceHub(HuggingFaceState):
    # ----------------------------------------------------------------- Hub API
    def _authorized(self, request: Request) -> bool:
        scheme, _, credential = request.header("authorization").partition(" ")
        return scheme.lower() == "bearer" and credential.strip() == self.token

    def _hub(self, request: Request, providers: dict[str, str] | None = None) -> Response:
        path = request.path.split("?")[0]
        if path == "/api/whoami-v2":
            if not self._authorized(request):
                return self._error(
                    401, {"error": INVALID_CREDENTIALS}, {"X-Error-Message": INVALID_CREDENTIALS}
                )
            token: dict[str, Any] = {"displayName": "image-pipeline", "role": self.token_role}
            if self.token_role == "fineGrained":
                token["fineGrained"] = {
                    "canReadGatedRepos": True,
                    "global": list(self.token_permissions),
                    "scoped": [],
                }
            return Response.json(
                {
                    "type": "user",
                    "id": "65f0c0ffee0123456789abcd",
                    "name": "pipeline-user",
                    "fullname": "Pipeline User",
                    "canPay": True,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": token},
                }
            )
        if path.startswith("/api/models/"):
            repo = path[len("/api/models/") :].strip("/")
            if repo in self.unknown_models or repo.count("/") != 1:
                headers = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
                return self._error(
                    404 if self._authorized(request) else 401, {"error": "Repository not found"}, headers
                )
            task = self.model_tasks.get(repo, "text-to-image")
            # a dict keyed by provider, in the user's order, as model_info gets it (hf_api.py ModelInfo)
            mapping = {
                provider: {"status": status, "providerId": self._provider_id(provider, repo), "task": task}
                for provider, status in (providers if providers is not None else self.providers).items()
            }
            return Response.json(
                {
                    "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
                    "id": repo,
                    "pipeline_tag": task,
                    "inferenceProviderMapping": mapping,
                }
            )
        return self._error(404, {"error": "Not Found"})

    def _download(self, request: Request) -> Response:
        stored = self.files.get(request.path)
        if stored is None:
            # what a storage bucket answers for a missing key; the client does not check the status
            return Response(
                404, b"<Error><Code>NoSuchKey</Code></Error>", {"Content-Type": "application/xml"}
            )
        body, content_type = stored
        return Response(200, body, {"Content-Type": content_type})

    def _gone(self) -> Response:
        return Response.json({"error": GONE_MESSAGE}, 410, {"x-amz-cf-id": _request_id()})
