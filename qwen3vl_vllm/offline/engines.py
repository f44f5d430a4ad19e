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

from qwen3vl_vllm.media.decode import fetch_image, fetch_video, vllm_video_metadata
from qwen3vl_vllm.media.sources import DEFAULT_POLICY, MediaPolicy
from qwen3vl_vllm.prompts.inputs import (DEFAULT_SETTINGS, MediaSettings, RERANK_MAX_LENGTH,
                                         embedding_conversation, rerank_conversation,
                                         rerank_request)
from qwen3vl_vllm.prompts.truncation import RERANK_SUFFIX_TOKENS, truncate_pair_tokens
from qwen3vl_vllm.prompts.render import DirectTemplate
from qwen3vl_vllm import exitguard
from qwen3vl_vllm.prompts import video_fit as fitting
from qwen3vl_vllm.prompts.video_reports import collecting
from qwen3vl_vllm.errors import InputError
from qwen3vl_vllm.prompts.engine import (RESERVED_CPU_ENV, chat_template_text,
                                         effective_engine_kwargs, image_tokens)

PROGRESS_THRESHOLD = 256
# Engine settings for offline use, each unless the user set it (environment variables, read
# when the first engine of the process starts):
# - vLLM's CPU worker keeps one core for the front-end (reserve 1 of 2 here: half the compute).
#   Offline, the front-end prepares every input before the engine runs and then waits, so the
#   reserved core would sit idle: give it to the model. Measured on the 2-core CI machine,
#   reranking 1x20 unseen pairs: 1.03 s -> 0.66 s per call.
# - The engine runs in this process (uni-process executor): offline, nothing overlaps with it,
#   and every step saved a round trip to the engine process. Measured here on 64 short texts
#   per call: 0.71x -> 1.05x the reference's rate.
OFFLINE_ENV = {RESERVED_CPU_ENV: "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# Engine arguments for offline use, unless the user passes them:
# - mm_device_do_normalize=False: the processor rescales and normalises pixels as the reference
#   does, instead of vLLM's uint8 path, whose mixed-dtype multiply runs at ~3 ns per value on
#   CPU (0.1 s per call for 6 screenshots; screenshots 0.86x -> 1.01x the reference here).
# - mm_processor_cache_gb=0: every call gives its media fresh ids (``_call_tag``), so vLLM's
#   processed-media cache can never answer a later call; it only filled up (4 GiB of float
#   pixels) and then slowed every call: screenshots after a mixed workload 1.06x -> 0.60x.
#   Within a call, a reranking query's image is still encoded once: the encoder cache and the
#   prefix cache key on its id.
OFFLINE_ENGINE_DEFAULTS = {"mm_device_do_normalize": False, "mm_processor_cache_gb": 0}
# media of one call are read and resized on this many threads (PIL releases the GIL)
MEDIA_THREADS = 4


def _engine_kwargs(kind: str, user: dict, settings: MediaSettings = DEFAULT_SETTINGS) -> dict:
    """``vllm.LLM`` keyword arguments: the package's engine settings merged with the user's
    (``settings.effective_engine_kwargs``, the rule the plugin applies to ``vllm serve``)."""
    from vllm.config import PoolerConfig

    kw = effective_engine_kwargs(kind, {**OFFLINE_ENGINE_DEFAULTS, **user}, settings)
    # the template `vllm serve` gets from the plugin: vLLM's own LLM.score()/chat() on this
    # engine then render as the reference does (and vLLM does not warn that a Qwen3 reranker
    # runs without one; this API renders its prompts itself and does not depend on it)
    kw.setdefault("chat_template", chat_template_text(kind))  # literal text: no file to write
    if isinstance(kw["pooler_config"], dict):
        kw["pooler_config"] = PoolerConfig(**kw["pooler_config"])
    return kw


class _SkipThreadWarning:
    """vLLM's CPU worker turns ``torch.set_num_threads`` into a warning once it has bound its
    threads; in-process, the renderer's per-request thread setting then warns on every call."""

    def filter(self, record) -> bool:
        return "torch.set_num_threads` after the thread binding" not in record.getMessage()


def _quiet_in_process_engine() -> None:
    import logging

    log = logging.getLogger("vllm.v1.worker.cpu_worker")
    if not any(isinstance(f, _SkipThreadWarning) for f in log.filters):
        log.addFilter(_SkipThreadWarning())


class _Engine:
    kind = ""

    def __init__(self, model_name_or_path: str, *, settings: MediaSettings = DEFAULT_SETTINGS,
                 policy: MediaPolicy = DEFAULT_POLICY, video_fit: str | None = None,
                 **engine_kwargs: Any):
        from vllm import LLM

        self.video_fit = fitting.mode(video_fit)  # checked before the engine starts
        exitguard.install()
        saved = {key: os.environ.get(key) for key in OFFLINE_ENV}
        for key, value in OFFLINE_ENV.items():  # read when the engine starts, below
            os.environ.setdefault(key, value)
        self.settings = settings
        self.policy = policy
        self.model_name_or_path = model_name_or_path
        try:
            self.llm = LLM(model=model_name_or_path,
                           **_engine_kwargs(self.kind, dict(engine_kwargs), settings))
        finally:
            # vLLM reads them while the engine starts only. Left set, they would reach every
            # process this one starts later: a `vllm serve` child would run without its worker
            # process (seen in benchmarks/frontend.py's rerank rows)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        _quiet_in_process_engine()
        self.tokenizer = self.llm.get_tokenizer()
        self.template = chat_template_text(self.kind)
        self._templates: dict = {}  # template -> DirectTemplate

    # -- media -> vLLM multi_modal_data
    def _multimodal(self, parts: list[dict], where: str, tag: str) -> tuple[dict, dict]:
        """The parts' media as ``multi_modal_data`` and their ids (``multi_modal_uuids``).

        ``tag`` names the media within this call (``_call_tag``): vLLM then keys its caches by
        the id instead of hashing every pixel (21 % of the front-end for frame lists), and the
        same object (a reranking query's image) gets the same id in every pair, so its encoder
        output and prefix are computed once.
        """
        data: dict = {}
        for part in parts:
            if part["type"] == "image":
                n = len(data.setdefault("image", []))
                data["image"].append(fetch_image(part, f"{where}.image[{n}]", self.policy))
            elif part["type"] == "video":
                n = len(data.setdefault("video", []))
                clip, meta = fetch_video(part, f"{where}.video[{n}]", self.policy, uint8=True)
                data["video"].append((clip.permute(0, 2, 3, 1).contiguous().numpy(), vllm_video_metadata(meta)))
        return data, {k: [f"{tag}.{k}{i}" for i in range(len(v))] for k, v in data.items()}

    def _media_all(self, jobs: list[tuple[list[dict], str, str]], *,
                   keep_errors: bool = False) -> list:
        """``_multimodal`` for many inputs, on threads when more than one has images. Results
        (and the first error, by input order) come back in input order; with ``keep_errors`` a
        bad input's slot holds its ``InputError`` instead. Videos stay on this thread: their
        clip resize is a torch op that already uses every core (the gain of threads is PIL's
        resize, which releases the GIL and runs on one core)."""

        def one(job):
            if not keep_errors:
                return self._multimodal(*job)
            try:
                return self._multimodal(*job)
            except InputError as e:
                return e

        kinds = [{p["type"] for p in parts} for parts, _, _ in jobs]
        with_media = sum("image" in k for k in kinds)
        if with_media < 2 or MEDIA_THREADS < 2 or any("video" in k for k in kinds):
            return [one(job) for job in jobs]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(MEDIA_THREADS, with_media)) as pool:
            return list(pool.map(one, jobs))

    @staticmethod
    def _call_tag() -> str:
        """A fresh prefix for media ids, unique per call: vLLM's caches never give one call's
        result to another, and no pixel is hashed to tell them apart."""
        import uuid

        return f"qwen3vl-{uuid.uuid4().hex}"

    def _render(self, conversations: list[list[dict]], template: str | None) -> tuple[list[str], list[list[int]]]:
        """Chat texts and their token ids, tokenised in one batched call (vLLM would tokenise
        each prompt on its own; token-id prompts skip that, and the count is free).

        The template is compiled once and rendered directly (``prompts.render``): 7 us a prompt
        instead of the 63 us of ``apply_chat_template``'s argument handling, checked against
        ``apply_chat_template`` on every call's first prompt.
        """
        if not conversations:
            return [], []
        if template not in self._templates:
            self._templates[template] = DirectTemplate(self.tokenizer, template)
        texts = self._templates[template].render(conversations)
        return texts, self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    @staticmethod
    def _engine_prompt(text: str | None, ids: list[int], data: dict, uuids: dict) -> dict:
        """A token-id prompt; ``text`` (the rendered chat, for reading) only when it is exactly
        what the ids say."""
        prompt: dict = {"prompt_token_ids": ids}
        if text is not None:
            prompt["prompt"] = text
        if data:
            prompt["multi_modal_data"] = data
            prompt["multi_modal_uuids"] = uuids
            prompt["mm_processor_kwargs"] = {"do_resize": False}
        return prompt

    def _fit_length(self, ids: list[int], data: dict, where: str, truncate: bool) -> list[int]:
        """The input's token ids when it fits ``max_model_len``; else, with ``truncate``, its
        first ``max_model_len`` tokens once the images are expanded (the reference's cut: it
        drops the generation prompt too), else an ``InputError`` naming it, before vLLM refuses
        the whole batch. Images come before the text in the prompt, so the cut falls in the
        text; one that would fall inside the media is refused. Videos are not counted here:
        the engine fits them (``video_fit``), or names them if it cannot."""
        limit = self.llm.llm_engine.model_config.max_model_len
        extra = sum(image_tokens(im.width, im.height) - 1 for im in data.get("image", []))
        n = len(ids) + extra
        if n <= limit:
            return ids
        if not truncate or data.get("video"):
            raise InputError(where, f"the input is {n} tokens, longer than max_model_len={limit}",
                             "Shorten the text or send smaller/fewer images or frames, or pass "
                             f"truncate=True to embed its first {limit} tokens as the reference does"
                             + (" (not with videos)" if truncate else ""))
        keep = limit - extra
        vision_end = self.tokenizer.convert_tokens_to_ids("<|vision_end|>")
        last_media = max((k for k, t in enumerate(ids) if t == vision_end), default=-1)
        if keep <= last_media:
            raise InputError(where, f"its images alone make the input longer than max_model_len={limit}",
                             "Send smaller or fewer images")
        return ids[:keep]

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
                err = InputError(where(named[0]) if named else "inputs", str(e))
                err.index = named[0] if named else None  # which prompt (embed_prompts drops it)
                raise err from None
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

    def prompts(self, inputs: Sequence[Mapping[str, Any]], *, truncate: bool = False,
                errors: str = "raise") -> list:
        """vLLM prompts (token ids, media and their ids) for ``inputs``, checked item by item;
        ``truncate``: over-long inputs cut as the reference cuts them (``_fit_length``).

        ``errors="raise"`` (the default) raises the first bad item's ``InputError``/``MediaError``;
        ``errors="return"`` puts it in that item's slot and prepares the rest, for jobs that go
        on past a bad item (``qwen3vl_vllm.index``)."""
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        keep = errors == "return"
        if isinstance(inputs, Mapping):
            raise InputError("inputs", "expected a list of input dicts, got one dict",
                             "Wrap it in a list: [item]")

        def attempt(fn, *args):  # the result, or (errors="return") the item's error
            try:
                return fn(*args)
            except InputError as e:
                if not keep:
                    raise
                return e

        out: list = [attempt(lambda it, i: embedding_conversation(it, index=i, settings=self.settings), item, i)
                     for i, item in enumerate(inputs)]
        tag = self._call_tag()
        good = [i for i, c in enumerate(out) if not isinstance(c, InputError)]
        convs = {i: out[i] for i in good}
        media = dict(zip(good, self._media_all(
            [(convs[i][1]["content"], f"inputs[{i}]", f"{tag}.{i}") for i in good], keep_errors=keep)))
        for i in good:
            if isinstance(media[i], InputError):
                out[i] = media[i]
        good = [i for i in good if not isinstance(media[i], InputError)]
        texts, ids = self._render([convs[i] for i in good], self.template)
        for i, text, tokens in zip(good, texts, ids):
            data, uuids = media[i]
            fitted = attempt(self._fit_length, tokens, data, f"inputs[{i}]", truncate)
            out[i] = fitted if isinstance(fitted, InputError) else self._engine_prompt(
                text if fitted is tokens else None, fitted, data, uuids)
        return out

    def _check_dimensions(self, dimensions: int | None) -> int:
        """The model's hidden size, after checking ``dimensions`` against it."""
        dim = self.llm.llm_engine.model_config.get_hidden_size()
        if dimensions is not None:
            if isinstance(dimensions, bool) or not isinstance(dimensions, int):
                raise InputError("dimensions", f"must be a whole number, got {dimensions!r}")
            if not 1 <= dimensions <= dim:
                raise InputError("dimensions", f"must be between 1 and {dim}, got {dimensions}",
                                 "The model card advises at least 64")
        return dim

    def process(self, inputs: Sequence[Mapping[str, Any]], normalize: bool = True,
                dimensions: int | None = None, precision: str = "float32", *,
                return_metadata: bool = False, truncate: bool = False):
        """Embed ``inputs`` -> (N, dimensions or hidden) array, in input order.

        ``precision`` may be "int8", "binary" or "ubinary" (see ``quantize``). A bad item raises
        ``InputError``/``MediaError`` naming it before anything is computed; so does an input
        longer than ``max_model_len`` unless ``truncate=True``, which embeds its first
        ``max_model_len`` tokens as the reference does. With ``return_metadata=True`` the result
        is ``(vectors, metadata)``: per input, the frames each video used of those prepared and
        the prompt's length (see ``video_fit``).
        """
        import numpy as np
        from vllm import PoolingParams

        from qwen3vl_vllm.quantize import PRECISIONS, quantize

        if precision not in PRECISIONS:
            raise InputError("precision", f"must be one of {PRECISIONS}, got {precision!r}")
        dim = self._check_dimensions(dimensions)
        prompts = self.prompts(inputs, truncate=truncate)
        if not prompts:
            empty = np.zeros((0, dimensions or dim), dtype=np.float32)
            return (empty, []) if return_metadata else empty
        params = PoolingParams(dimensions=dimensions, use_activation=normalize)
        outputs, meta = self._run(prompts, lambda: self.llm.embed(
            prompts, pooling_params=params, use_tqdm=len(prompts) >= PROGRESS_THRESHOLD),
            lambda i: f"inputs[{i}]")
        vectors = quantize(np.asarray([o.outputs.embedding for o in outputs], dtype=np.float32), precision)
        return (vectors, meta) if return_metadata else vectors

    def embed_prompts(self, prompts: Sequence[Any], *, normalize: bool = True,
                      dimensions: int | None = None) -> list:
        """Embed what ``prompts(..., errors="return")`` made, going on past bad items.

        Returns one entry per slot, in order: the item's ``InputError`` (from ``prompts``, or
        from the engine, e.g. a video that cannot fit ``max_model_len``), else ``(vector,
        metadata)`` with the float32 vector and ``{"video_frames": [(used, prepared), ...],
        "prompt_tokens": n}`` (the prompt's length once the media are expanded).

        Example::

            with Qwen3VLEmbedder(model) as m:
                for entry in m.embed_prompts(m.prompts(items, errors="return")):
                    print(entry if isinstance(entry, Exception) else entry[0][:4])
        """
        import numpy as np
        from vllm import PoolingParams

        self._check_dimensions(dimensions)
        out: list = list(prompts)
        todo = [i for i, p in enumerate(out) if not isinstance(p, InputError)]
        params = PoolingParams(dimensions=dimensions, use_activation=normalize)
        while todo:
            batch = [out[i] for i in todo]
            try:
                outputs, meta = self._run(batch, lambda: self.llm.embed(
                    batch, pooling_params=params, use_tqdm=False), lambda k: f"inputs[{todo[k]}]")
            except InputError as e:  # one prompt the engine refused: drop it and run the rest
                k = getattr(e, "index", None)
                if k is None:
                    raise
                out[todo.pop(k)] = e
                continue
            for i, o, m in zip(todo, outputs, meta, strict=True):
                tokens = m["prompt_tokens"] or len(getattr(o, "prompt_token_ids", None) or [])
                out[i] = (np.asarray(o.outputs.embedding, dtype=np.float32),
                          {"video_frames": m["video_frames"], "prompt_tokens": tokens})
            break
        return out


class Qwen3VLReranker(_Engine):
    """Qwen3-VL-Reranker on vLLM: ``process({"query", "documents", ...}) -> list[float]``."""

    kind = "reranker"

    def __init__(self, model_name_or_path: str, *, max_length: int = RERANK_MAX_LENGTH,
                 **kwargs: Any):
        kwargs.setdefault("max_model_len", max_length + RERANK_SUFFIX_TOKENS)
        self.max_length = max_length
        super().__init__(model_name_or_path, **kwargs)

    def pair_prompts(self, inputs: Mapping[str, Any]) -> list[dict]:
        """One vLLM prompt per document. The query's media are prepared once and keep one id
        in every pair, so vLLM encodes them once and serves the shared prefix from its cache."""
        req = rerank_request(inputs, settings=self.settings)
        tag = self._call_tag()
        query_data, query_ids = self._multimodal(req.query, "query", f"{tag}.query")
        convs, data, uuids = [], [], []
        docs_media = self._media_all([(doc, f"documents[{i}]", f"{tag}.doc{i}")
                                      for i, doc in enumerate(req.documents)])
        for doc, (doc_data, doc_ids) in zip(req.documents, docs_media):
            convs.append(rerank_conversation(req.instruction, req.query, doc))
            # the prompt holds the query's media before the document's, per modality
            keys = [k for k in ("image", "video") if query_data.get(k) or doc_data.get(k)]
            data.append({k: query_data.get(k, []) + doc_data.get(k, []) for k in keys})
            uuids.append({k: query_ids.get(k, []) + doc_ids.get(k, []) for k in keys})
        texts, ids = self._render(convs, None)  # the checkpoint's own template, as upstream
        return [self._pair_prompt(t, x, d, u, f"documents[{i}]")
                for i, (t, x, d, u) in enumerate(zip(texts, ids, data, uuids))]

    def _pair_prompt(self, text: str, ids: list[int], data: dict, uuids: dict, where: str) -> dict:
        # media pads the engine will add: one token per 32x32 pixels of each resized image
        extra = sum(image_tokens(im.width, im.height) - 1 for im in data.get("image", []))
        if len(ids) + extra - RERANK_SUFFIX_TOKENS > self.max_length:
            if data.get("video"):
                raise InputError(where, f"the pair is longer than max_length={self.max_length} "
                                 "tokens and contains a video; truncation with videos is not "
                                 "supported", "Shorten the texts or use fewer frames")
            special = set(self.tokenizer.all_special_ids)
            ids = truncate_pair_tokens(ids, special, self.max_length, extra_special=extra)
            text = None  # the rendered text is no longer what the ids say
        return self._engine_prompt(text, ids, data, uuids)

    def process(self, inputs: Mapping[str, Any], *, return_metadata: bool = False):
        """One score per document, in order; ``return_metadata=True``: ``(scores, metadata)``
        with, per document, the frames each video of the pair used and the pair's length."""
        prompts = self.pair_prompts(inputs)
        outputs, meta = self._run(prompts, lambda: self.llm.classify(
            prompts, use_tqdm=len(prompts) >= PROGRESS_THRESHOLD), lambda i: f"documents[{i}]")
        scores = [float(o.outputs.probs[-1]) for o in outputs]
        return (scores, meta) if return_metadata else scores
