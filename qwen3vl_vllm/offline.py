"""Offline API over ``vllm.LLM`` with the upstream ``process(inputs)`` interface.

``Qwen3VLEmbedder`` and ``Qwen3VLReranker`` take the same input dicts as the reference
implementation and return the same vectors/scores, computed by vLLM in batches. Prompts come
from ``inputs`` and are rendered with the packaged templates; pixels come from ``media``
(resized exactly like qwen-vl-utils) and reach vLLM at their final size, so vLLM's processor does
not resize them again.

Both classes are context managers that shut the engine down. Creating one installs the
exit guard (``exitguard``): a script that finished its work exits with its own code even when
vLLM aborts during interpreter teardown.

Example::

    from qwen3vl_vllm import Qwen3VLEmbedder
    with Qwen3VLEmbedder("Qwen/Qwen3-VL-Embedding-2B") as model:
        vectors = model.process([{"text": "a cat"}, {"image": "cat.png"}])
"""

from __future__ import annotations

import os
import warnings

from typing import Any, Mapping, Sequence

from .media import fetch_image, fetch_video, vllm_video_metadata
from .sources import DEFAULT_POLICY, MediaPolicy
from .inputs import (DEFAULT_SETTINGS, MediaSettings, RERANK_MAX_LENGTH,
                     embedding_conversation, rerank_conversation, rerank_request)
from .truncation import RERANK_SUFFIX_TOKENS, truncate_pair_tokens
from . import exitguard
from . import video_fit as fitting
from .video_fit_hook import collecting
from .errors import InputError
from .settings import RESERVED_CPU_ENV, chat_template_text, effective_engine_kwargs, image_tokens

exitguard.record_exit_codes()  # before a script's `sys.exit(main())` looks sys.exit up

PROGRESS_THRESHOLD = 64
# vLLM's CPU worker keeps one core for the front-end (reserve 1 of 2 here: half the compute).
# Offline, the front-end prepares every input before the engine runs and then waits, so the
# reserved core would sit idle: give it to the model unless the user chose otherwise.
# Measured on the 2-core CI machine, reranking 1x20 unseen pairs: 1.03 s -> 0.66 s per call.


def _engine_kwargs(kind: str, user: dict, settings: MediaSettings = DEFAULT_SETTINGS) -> dict:
    """``vllm.LLM`` keyword arguments: the package's engine settings merged with the user's
    (``settings.effective_engine_kwargs``, the rule the plugin applies to ``vllm serve``)."""
    from vllm.config import PoolerConfig

    kw = effective_engine_kwargs(kind, user, settings)
    if isinstance(kw["pooler_config"], dict):
        kw["pooler_config"] = PoolerConfig(**kw["pooler_config"])
    return kw


class _Engine:
    kind = ""

    def __init__(self, model_name_or_path: str, *, settings: MediaSettings = DEFAULT_SETTINGS,
                 policy: MediaPolicy = DEFAULT_POLICY, video_fit: str | None = None,
                 **engine_kwargs: Any):
        from vllm import LLM

        self.video_fit = fitting.mode(video_fit)  # checked before the engine starts
        exitguard.install()
        if RESERVED_CPU_ENV not in os.environ:  # read by the engine processes started below
            os.environ[RESERVED_CPU_ENV] = "0"
        self.settings = settings
        self.policy = policy
        self.model_name_or_path = model_name_or_path
        self.llm = LLM(model=model_name_or_path,
                       **_engine_kwargs(self.kind, dict(engine_kwargs), settings))
        self.tokenizer = self.llm.get_tokenizer()
        self.template = chat_template_text(self.kind)

    # -- media -> vLLM multi_modal_data
    def _multimodal(self, parts: list[dict], where: str) -> tuple[dict, int]:
        images, videos = [], []
        n_img = n_vid = 0
        for part in parts:
            if part["type"] == "image":
                images.append(fetch_image(part, f"{where}.image[{n_img}]", self.policy))
                n_img += 1
            elif part["type"] == "video":
                clip, meta = fetch_video(part, f"{where}.video[{n_vid}]", self.policy)
                videos.append((clip.permute(0, 2, 3, 1).numpy(), vllm_video_metadata(meta)))
                n_vid += 1
        data = {}
        if images:
            data["image"] = images
        if videos:
            data["video"] = videos
        return data, n_img + n_vid

    def _prompt(self, conversation: list[dict], parts: list[dict], where: str) -> dict:
        text = self.tokenizer.apply_chat_template(conversation, chat_template=self.template,
                                                  tokenize=False, add_generation_prompt=True)
        prompt: dict = {"prompt": text}
        data, _ = self._multimodal(parts, where)
        self._check_length(text, data, where)
        if data:
            prompt["multi_modal_data"] = data
            prompt["mm_processor_kwargs"] = {"do_resize": False}
        return prompt

    def _check_length(self, text: str, data: dict, where: str) -> None:
        """Refuse an over-long input by name before vLLM refuses the whole batch. Videos are
        not counted here: the engine fits them (``video_fit``), or names them if it cannot."""
        limit = self.llm.llm_engine.model_config.max_model_len
        n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        n += sum(image_tokens(im.width, im.height) - 1 for im in data.get("image", []))
        if n > limit:
            raise InputError(where, f"the input is {n} tokens, longer than max_model_len={limit}",
                             "Shorten the text or send smaller/fewer images or frames")

    def _run(self, prompts: list[dict], call, where) -> tuple[Any, list[dict]]:
        """Run one engine call, collecting what was done to each prompt's videos.

        Returns ``(outputs, metadata)``: one dict per prompt, ``{"video_frames": [(used,
        prepared), ...], "prompt_tokens": n}`` (empty for prompts without media). A fitted video
        warns (``VideoFitWarning``) naming its input; a refused one raises ``InputError``.
        """
        with collecting(self.video_fit) as reports:
            try:
                outputs = call()
            except fitting.VideoFitError as e:
                named = [i for i, p in enumerate(prompts) if id(p.get("multi_modal_data")) == e.data_id]
                raise InputError(where(named[0]) if named else "inputs", str(e)) from None
        # reports name their prompt by its media object, which vLLM passes through unchanged
        # (not by text: two inputs with the same video placeholder render the same prompt)
        by_data = {r["data_id"]: r for r in reports if r.get("data_id") is not None}
        meta: list[dict] = [{"video_frames": [], "prompt_tokens": None} for _ in prompts]
        for i, p in enumerate(prompts):
            report = by_data.get(id(p.get("multi_modal_data")))
            if report is None or not p.get("multi_modal_data"):
                continue
            meta[i] = {"video_frames": list(report["frames"]), "prompt_tokens": report["prompt_tokens"]}
            fitted = [f"{u} of {n}" for u, n in report["frames"] if u < n]
            if fitted:
                warnings.warn(fitting.VideoFitWarning(
                    f"{where(i)}: video frames reduced to fit max_model_len "
                    f"({', '.join(fitted)} frames; prompt {report['prompt_tokens']} tokens)"),
                    stacklevel=3)
        return outputs, meta

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) or getattr(
                getattr(engine, "engine_core", None), "shutdown", None)
            if shutdown is not None:
                shutdown()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Qwen3VLEmbedder(_Engine):
    """Qwen3-VL-Embedding on vLLM: ``process(inputs) -> np.ndarray (N, dim)``, in input order."""

    kind = "embedding"

    def prompts(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict]:
        if isinstance(inputs, Mapping):
            raise InputError("inputs", "expected a list of input dicts, got one dict",
                             "Wrap it in a list: [item]")
        out = []
        for i, item in enumerate(inputs):
            conv = embedding_conversation(item, index=i, settings=self.settings)
            out.append(self._prompt(conv, conv[1]["content"], f"inputs[{i}]"))
        return out

    def process(self, inputs: Sequence[Mapping[str, Any]], normalize: bool = True,
                dimensions: int | None = None, precision: str = "float32", *,
                return_metadata: bool = False):
        """Embed ``inputs`` -> (N, dimensions or hidden) array, in input order.

        ``precision`` may be "int8", "binary" or "ubinary" (see ``quantize``). A bad item raises
        ``InputError``/``MediaError`` naming it before anything is computed. With
        ``return_metadata=True`` the result is ``(vectors, metadata)``: per input, the frames
        each video used of those prepared and the prompt's length (see ``video_fit``).
        """
        import numpy as np
        from vllm import PoolingParams

        from .quantize import PRECISIONS, quantize

        if precision not in PRECISIONS:
            raise InputError("precision", f"must be one of {PRECISIONS}, got {precision!r}")
        dim = self.llm.llm_engine.model_config.get_hidden_size()
        if dimensions is not None:
            if isinstance(dimensions, bool) or not isinstance(dimensions, int):
                raise InputError("dimensions", f"must be a whole number, got {dimensions!r}")
            if not 1 <= dimensions <= dim:
                raise InputError("dimensions", f"must be between 1 and {dim}, got {dimensions}",
                                 "The model card advises at least 64")
        prompts = self.prompts(inputs)
        if not prompts:
            empty = np.zeros((0, dimensions or dim), dtype=np.float32)
            return (empty, []) if return_metadata else empty
        params = PoolingParams(dimensions=dimensions, use_activation=normalize)
        outputs, meta = self._run(prompts, lambda: self.llm.embed(
            prompts, pooling_params=params, use_tqdm=len(prompts) >= PROGRESS_THRESHOLD),
            lambda i: f"inputs[{i}]")
        vectors = quantize(np.asarray([o.outputs.embedding for o in outputs], dtype=np.float32), precision)
        return (vectors, meta) if return_metadata else vectors


class Qwen3VLReranker(_Engine):
    """Qwen3-VL-Reranker on vLLM: ``process({"query", "documents", ...}) -> list[float]``."""

    kind = "reranker"

    def __init__(self, model_name_or_path: str, *, max_length: int = RERANK_MAX_LENGTH,
                 **kwargs: Any):
        kwargs.setdefault("max_model_len", max_length + RERANK_SUFFIX_TOKENS)
        self.max_length = max_length
        super().__init__(model_name_or_path, **kwargs)

    def pair_prompts(self, inputs: Mapping[str, Any]) -> list[dict]:
        req = rerank_request(inputs, settings=self.settings)
        query_data, _ = self._multimodal(req.query, "query")  # once, not once per document
        out = []
        for i, doc in enumerate(req.documents):
            conv = rerank_conversation(req.instruction, req.query, doc)
            doc_data, _ = self._multimodal(doc, f"documents[{i}]")
            # the prompt holds the query's media before the document's, per modality
            data = {k: query_data.get(k, []) + doc_data.get(k, [])
                    for k in ("image", "video") if query_data.get(k) or doc_data.get(k)}
            out.append(self._pair_prompt(conv, data, f"documents[{i}]"))
        return out

    def _pair_prompt(self, conversation, data, where):
        chat = self.tokenizer.apply_chat_template(conversation, tokenize=False,
                                                  add_generation_prompt=True)
        ids = self.tokenizer(chat, add_special_tokens=False)["input_ids"]
        # media pads the engine will add: one token per 32x32 pixels of each resized image
        extra = sum(image_tokens(im.width, im.height) - 1 for im in data.get("image", []))
        prompt: dict = {"prompt": chat}
        if len(ids) + extra - RERANK_SUFFIX_TOKENS > self.max_length:
            if data.get("video"):
                raise InputError(where, f"the pair is longer than max_length={self.max_length} "
                                 "tokens and contains a video; truncation with videos is not "
                                 "supported", "Shorten the texts or use fewer frames")
            special = set(self.tokenizer.all_special_ids)
            prompt = {"prompt_token_ids": truncate_pair_tokens(ids, special, self.max_length,
                                                                 extra_special=extra)}
        if data:
            prompt["multi_modal_data"] = data
            prompt["mm_processor_kwargs"] = {"do_resize": False}
        return prompt

    def process(self, inputs: Mapping[str, Any], *, return_metadata: bool = False):
        """One score per document, in order; ``return_metadata=True``: ``(scores, metadata)``
        with, per document, the frames each video of the pair used and the pair's length."""
        prompts = self.pair_prompts(inputs)
        outputs, meta = self._run(prompts, lambda: self.llm.classify(
            prompts, use_tqdm=len(prompts) >= PROGRESS_THRESHOLD), lambda i: f"documents[{i}]")
        scores = [float(o.outputs.probs[-1]) for o in outputs]
        return (scores, meta) if return_metadata else scores
