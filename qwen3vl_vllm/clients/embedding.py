"""Thin clients for a qwen3vl-vllm server, built on the openai SDK.

They build the reference's multimodal chat prompt from the same upstream input dicts (via
``inputs``). Image files travel as their original bytes (in-memory images pre-resized like the
reference, as lossless PNG); a frame list travels as its sampled original frames in one ``data:video/jpeg;base64,<f1>,<f2>,...`` URL and a video file as itself (with the
item's fps/max_frames as data-URL parameters); the server prepares both as the reference does.

Settings resolve as argument, then environment variable, then default:
``base_url`` (``QWEN3VL_BASE_URL``, ``http://127.0.0.1:8000/v1``), ``api_key``
(``QWEN3VL_API_KEY``, ``EMPTY``), ``model`` (``QWEN3VL_MODEL``, else the server's first model),
``timeout`` (``QWEN3VL_TIMEOUT``, 120 s), ``max_retries`` (``QWEN3VL_MAX_RETRIES``, 2),
``backoff`` (``QWEN3VL_BACKOFF``, 0.5 s, doubled per retry up to ``backoff_max``, 8 s),
``max_concurrency`` (``QWEN3VL_MAX_CONCURRENCY``, 8). Every call is idempotent, so connection
errors, timeouts, 429, 500, 502, 503 and 504 are retried; anything else surfaces at once as a typed
error naming the item. ``http_client`` takes an
``httpx.Client``/``httpx.AsyncClient`` (e.g. with a ``MockTransport``), so tests need no server.

Example::

    from qwen3vl_vllm import EmbeddingClient
    client = EmbeddingClient(base_url="http://127.0.0.1:8000/v1")
    vectors = client.embed([{"text": "a cat"}, {"image": "cat.png"}], dimensions=256)
"""

from __future__ import annotations

import asyncio
import base64
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

from qwen3vl_vllm.media.sources import DEFAULT_POLICY, MediaPolicy
from qwen3vl_vllm.prompts.inputs import DEFAULT_SETTINGS, MediaSettings
from qwen3vl_vllm.clients.messages import embedding_body
from qwen3vl_vllm.errors import (APIConnectionError, APIError, APITimeoutError, InputError,
                                 ServiceUnavailableError, error_for_status)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


def _body(response: Any, where: str, frames: list | None = None) -> Any:
    """The JSON of a raw response; a server that fitted a video to ``max_model_len`` says so in
    ``X-Qwen3VL-Video-Frames`` (see ``video_fit``), and the client warns naming the input.
    ``frames``, when given, receives the header's ``(used, prepared)`` pairs."""
    import warnings

    from qwen3vl_vllm.prompts.video_fit import HEADER, VideoFitWarning, parse_header

    pairs = parse_header(response.headers.get(HEADER))
    if frames is not None:
        frames.extend(pairs)
    fitted = [f"{u} of {n}" for u, n in pairs if u < n]
    if fitted:
        warnings.warn(VideoFitWarning(f"{where}: the server reduced video frames to fit "
                                      f"max_model_len ({', '.join(fitted)} frames)"), stacklevel=4)
    return response.json()


def _setting(value: Any, env: str, default: Any, cast=str):
    if value is not None:
        return value
    raw = os.environ.get(env)
    if raw not in (None, ""):
        return cast(raw)
    return default


def _decode_embedding(data: Any):
    import numpy as np

    if isinstance(data, str):
        return np.frombuffer(base64.b64decode(data), dtype="<f4").astype(np.float32)
    return np.asarray(data, dtype=np.float32)


# ------------------------------------------------------------------ clients


# 500 included: the server keeps 5xx for its own faults (input faults that name an item are
# 400s), and every call here is idempotent
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


# 5xx messages vLLM 0.32 gives while its engine stops under a request (seen in the fault test)
ENGINE_GONE = ("EngineCore encountered an issue", "EngineDeadError", "Engine core is dead",
               "engine is dead", "cannot schedule new futures after shutdown", "shutting down")


def _retryable(exc: Exception) -> bool:
    return (isinstance(exc, (APIConnectionError, ServiceUnavailableError))
            or getattr(exc, "status", None) in RETRY_STATUSES)


class _Settings:
    def __init__(self, *, base_url, api_key, model, timeout, max_retries, max_concurrency,
                 settings, policy, backoff=None, backoff_max=None):
        self.base_url = _setting(base_url, "QWEN3VL_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
        self.api_key = _setting(api_key, "QWEN3VL_API_KEY", "EMPTY")
        self.model = _setting(model, "QWEN3VL_MODEL", None)
        self.timeout = float(_setting(timeout, "QWEN3VL_TIMEOUT", 120.0, float))
        self.max_retries = int(_setting(max_retries, "QWEN3VL_MAX_RETRIES", 2, int))
        self.backoff = float(_setting(backoff, "QWEN3VL_BACKOFF", 0.5, float))
        self.backoff_max = float(_setting(backoff_max, "QWEN3VL_BACKOFF_MAX", 8.0, float))
        if self.max_retries < 0 or self.backoff < 0:
            raise ValueError("max_retries and backoff must be >= 0")
        self.max_concurrency = int(_setting(max_concurrency, "QWEN3VL_MAX_CONCURRENCY", 8, int))
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.settings = settings
        self.policy = policy

    def delay(self, attempt: int) -> float:
        """Backoff before retry ``attempt`` (0-based): doubling, capped, with 0-25 % jitter."""
        import random

        base = min(self.backoff * (2 ** attempt), self.backoff_max)
        return base * (1 + random.random() * 0.25)

    def give_up(self, err: Exception, attempt: int) -> bool:
        """True when ``err`` after ``attempt`` retries is final (then its message says how many)."""
        if attempt < self.max_retries and _retryable(err):
            return False
        if attempt and isinstance(err, APIError):
            err.args = (f"{err.args[0]} (after {attempt + 1} attempts)",)
        return True


def _map_openai_error(exc: Exception, where: str) -> Exception:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return APITimeoutError(f"{where}: no answer within the timeout ({exc})")
    if isinstance(exc, openai.APIConnectionError):
        return APIConnectionError(f"{where}: cannot reach the server ({exc}). Is it running?")
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            message = body["error"].get("message", message)
        text = f"{where}: HTTP {exc.status_code}: {message or exc}"
        if exc.status_code >= 500 and any(m in str(message) for m in ENGINE_GONE):
            # the server is going away (its engine stopped under the request): retryable
            return ServiceUnavailableError(text + " (the server is shutting down or restarting)",
                                           status=exc.status_code, body=body)
        return error_for_status(exc.status_code, text, body)
    return exc


def _check_dimensions(dimensions: Any) -> None:
    if dimensions is None:
        return
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        raise InputError("dimensions", f"must be a positive whole number, got {dimensions!r}",
                         "Use e.g. 64, 128, 256 ... up to the model's size")


def _check_list(inputs: Any) -> None:
    if isinstance(inputs, Mapping):
        raise InputError("inputs", "expected a list of input dicts, got one dict", "Wrap it in a list")


class _Base:
    """Settings resolution and the openai SDK client, shared by sync and async clients."""

    _sdk_class = "OpenAI"

    def __init__(self, *, base_url: str | None = None, api_key: str | None = None,
                 model: str | None = None, timeout: float | None = None,
                 max_retries: int | None = None, max_concurrency: int | None = None,
                 http_client: Any = None, settings: MediaSettings = DEFAULT_SETTINGS,
                 policy: MediaPolicy = DEFAULT_POLICY, backoff: float | None = None,
                 backoff_max: float | None = None):
        import openai

        self._s = _Settings(base_url=base_url, api_key=api_key, model=model, timeout=timeout,
                            max_retries=max_retries, max_concurrency=max_concurrency,
                            settings=settings, policy=policy, backoff=backoff,
                            backoff_max=backoff_max)
        # retries are ours (configurable backoff, typed errors); the SDK makes one attempt
        self._openai = getattr(openai, self._sdk_class)(
            base_url=self._s.base_url, api_key=self._s.api_key, timeout=self._s.timeout,
            max_retries=0, http_client=http_client)


class _Client(_Base):
    """Model lookup, retried calls and lifetime shared by the sync clients."""

    @property
    def model(self) -> str:
        """The served model name (argument, ``QWEN3VL_MODEL``, else the server's first model)."""
        if self._s.model is None:
            try:
                self._s.model = self._openai.models.list().data[0].id
            except Exception as e:  # noqa: BLE001
                raise _map_openai_error(e, "models") from None
        return self._s.model

    def _call(self, path: str, body: dict, where: str, frames: list | None = None) -> Any:
        import time

        import httpx

        attempt = 0
        while True:
            try:
                response = self._openai.post(path, body=body, cast_to=httpx.Response)
            except Exception as e:  # noqa: BLE001
                err = _map_openai_error(e, where)
            else:
                return _body(response, where, frames)
            if self._s.give_up(err, attempt):
                raise err
            time.sleep(self._s.delay(attempt))
            attempt += 1

    def close(self) -> None:
        self._openai.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _AsyncClient(_Base):
    """The async counterpart of ``_Client``."""

    _sdk_class = "AsyncOpenAI"

    async def model(self) -> str:
        if self._s.model is None:
            try:
                page = await self._openai.models.list()
                self._s.model = page.data[0].id
            except Exception as e:  # noqa: BLE001
                raise _map_openai_error(e, "models") from None
        return self._s.model

    async def _call(self, path: str, body: dict, where: str) -> Any:
        import httpx

        attempt = 0
        while True:
            try:
                response = await self._openai.post(path, body=body, cast_to=httpx.Response)
            except Exception as e:  # noqa: BLE001
                err = _map_openai_error(e, where)
            else:
                return _body(response, where)
            if self._s.give_up(err, attempt):
                raise err
            await asyncio.sleep(self._s.delay(attempt))
            attempt += 1

    async def close(self) -> None:
        await self._openai.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
        return False


class EmbeddingClient(_Client):
    """Embeddings from a qwen3vl-vllm (or plain vLLM) server, identical to the reference."""

    def embed(self, inputs: Sequence[Mapping[str, Any]], *, instruction: str | None = None,
              dimensions: int | None = None, encoding_format: str = "base64",
              precision: str = "float32", truncate: bool = False):
        """Embed every input (one request each, bounded concurrency) -> array in input order.

        Vectors travel as base64 float32 by default; ``precision`` packs them afterwards
        ("int8", "binary", "ubinary"; see ``quantize``). ``truncate=True`` embeds an over-long
        input's first ``max_model_len`` tokens, as the reference does (else the server answers
        400). Media errors are raised, naming the item, before any request is sent.
        """
        import numpy as np

        from qwen3vl_vllm.quantize import quantize

        _check_list(inputs)
        _check_dimensions(dimensions)
        bodies = [embedding_body(item, index=i, model=self.model, instruction=instruction,
                                 dimensions=dimensions, encoding_format=encoding_format,
                                 settings=self._s.settings, policy=self._s.policy, truncate=truncate)
                  for i, item in enumerate(inputs)]
        if not bodies:
            return np.zeros((0, dimensions or 0), dtype=np.float32)

        def one(i: int):
            resp = self._call("/embeddings", bodies[i], f"inputs[{i}]")
            return _decode_embedding(resp["data"][0]["embedding"])

        with ThreadPoolExecutor(max_workers=min(self._s.max_concurrency, len(bodies))) as pool:
            vectors = list(pool.map(one, range(len(bodies))))
        return quantize(np.stack(vectors), precision)


    def embed_each(self, inputs: Sequence[Mapping[str, Any]], *, instruction: str | None = None,
                   dimensions: int | None = None, truncate: bool = False) -> list:
        """Embed every input, going on past bad items: one entry per input, in order.

        An entry is ``(vector, info)``, the float32 vector and ``{"prompt_tokens": n,
        "video_frames": [(used, prepared), ...]}`` (the server's ``usage`` and its
        ``X-Qwen3VL-Video-Frames``), or the item's own error: an ``InputError``/``MediaError``
        found here, or the server's ``BadRequestError``/``RequestTooLargeError``/
        ``UnprocessableEntityError`` for it. Errors that are not the item's (the server down
        after the retries, 5xx, a wrong key) raise, so a job can stop and resume later.

        Example::

            entries = EmbeddingClient().embed_each([{"text": "a cat"}, {"image": "missing.png"}])
            # [(array([...], dtype=float32), {"prompt_tokens": 14, ...}), MediaError(...)]
        """
        from qwen3vl_vllm.errors import BadRequestError, RequestTooLargeError, UnprocessableEntityError

        _check_list(inputs)
        _check_dimensions(dimensions)
        item_errors = (InputError, BadRequestError, RequestTooLargeError, UnprocessableEntityError)

        def one(i: int):
            try:
                body = embedding_body(inputs[i], index=i, model=self.model, instruction=instruction,
                                      dimensions=dimensions, encoding_format="base64",
                                      settings=self._s.settings, policy=self._s.policy,
                                      truncate=truncate)
                frames: list = []
                resp = self._call("/embeddings", body, f"inputs[{i}]", frames)
            except item_errors as e:
                return e
            usage = resp.get("usage") or {}
            return (_decode_embedding(resp["data"][0]["embedding"]),
                    {"prompt_tokens": usage.get("prompt_tokens"), "video_frames": frames})

        if not inputs:
            return []
        with ThreadPoolExecutor(max_workers=min(self._s.max_concurrency, len(inputs))) as pool:
            return list(pool.map(one, range(len(inputs))))


class AsyncEmbeddingClient(_AsyncClient):
    """The async twin of ``EmbeddingClient`` (same settings, ``await client.embed(...)``)."""

    async def embed(self, inputs: Sequence[Mapping[str, Any]], *, instruction: str | None = None,
                    dimensions: int | None = None, encoding_format: str = "base64",
                    precision: str = "float32", truncate: bool = False):
        import numpy as np

        from qwen3vl_vllm.quantize import quantize

        _check_list(inputs)
        _check_dimensions(dimensions)
        if not inputs:  # nothing to embed: no request at all, as the sync twin
            return np.zeros((0, dimensions or 0), dtype=np.float32)
        model = await self.model()
        bodies = [embedding_body(item, index=i, model=model, instruction=instruction,
                                 dimensions=dimensions, encoding_format=encoding_format,
                                 settings=self._s.settings, policy=self._s.policy, truncate=truncate)
                  for i, item in enumerate(inputs)]
        sem = asyncio.Semaphore(self._s.max_concurrency)

        async def one(i: int):
            async with sem:
                resp = await self._call("/embeddings", bodies[i], f"inputs[{i}]")
            return _decode_embedding(resp["data"][0]["embedding"])

        vectors = await asyncio.gather(*(one(i) for i in range(len(bodies))))
        if not vectors:
            return np.zeros((0, dimensions or 0), dtype=np.float32)
        return quantize(np.stack(vectors), precision)
