"""Config -> vLLM arguments; start, health-check and stop a vLLM OpenAI server.

Used by the demo, the tests and ``qwen3vl-vllm serve --config FILE``. The server is a
child process in its own process group, bound to 127.0.0.1 by default on a free port; ``stop()``
sends SIGTERM to the group, then SIGKILL after a grace period, so nothing is left behind and an
exit-time abort of the server (SPEC §4) never reaches the caller's exit code.

Example::

    from qwen3vl_vllm.ops.launcher import ServerProcess
    with ServerProcess("/tmp/ckpt/Qwen3-VL-Embedding-tiny-random", extra_args=["--dtype", "float32"]) as srv:
        print(srv.base_url)     # http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def vllm_env(cache_root: str | os.PathLike | None = None) -> dict:
    """Environment for a vLLM child on these machines (SPEC §4).

    It sets no ``VLLM_CPU_KVCACHE_SPACE``: vLLM lets that legacy variable override every other KV
    cache setting, so a default here would replace the plugin's size for the served model (the
    2B reranker's 10,245-token prompt needs 1.1 GiB in bf16). A config's ``cpu_kvcache_gib`` or
    the user's own variable still applies."""
    env = dict(os.environ)
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if cache_root is not None:
        env.setdefault("VLLM_CACHE_ROOT", str(cache_root))
    return env


def serve_command(model: str | None, *, host: str = "127.0.0.1", port: int | None = None,
                  extra_args: Sequence[str] = ()) -> list[str]:
    """The ``vllm serve`` command line (through this interpreter, so the venv's vLLM runs)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    if model is not None:
        cmd += [model, "--host", host, "--port", str(port)]
    return cmd + list(extra_args)


class ServerStartError(RuntimeError):
    pass


BUILTIN = {"builtin:tiny-embedding": "embedding", "builtin:tiny-reranker": "reranker"}
from qwen3vl_vllm.serving.embed_inputs import (INSTRUCTIONS_ENV, RAW_ENV, TRUNCATE_ENV)  # noqa: E402  (light: no vLLM import)
from qwen3vl_vllm.serving.body_pool import IN_FLIGHT_ENV as BODIES_IN_FLIGHT_ENV  # noqa: E402
from qwen3vl_vllm.serving.body_pool import TIMEOUT_ENV as BODY_TIMEOUT_ENV  # noqa: E402
from qwen3vl_vllm.serving.head_limit import HEADER_ENV, TIMEOUT_ENV as HEADER_TIMEOUT_ENV  # noqa: E402
from qwen3vl_vllm.serving.policy import MAX_BODY_ENV  # noqa: E402  (light: no vLLM import)
from qwen3vl_vllm.serving.request_limits import MAX_ITEMS_ENV, MAX_REQUEST_TEXT_ENV, MAX_TEXT_ENV  # noqa: E402
from qwen3vl_vllm.prompts.video_fit import (DEFAULT_MODE as VIDEO_FIT_DEFAULT, FIT_ENV)  # noqa: E402  (light: no vLLM import)
from qwen3vl_vllm.serving.settings import (KEEP_ALIVE_ENV, MIDDLEWARES, REMOTE_MEDIA_ENV,
                                           REMOTE_OFF_DOMAIN)
from qwen3vl_vllm.media.budget import (IN_FLIGHT_ENV, REQUEST_BYTES_ENV, SECONDS_ENV)  # noqa: E402  (light: no vLLM import)


def resolve_model(model: str, *, build: bool, root: str | os.PathLike = ".cache") -> str:
    """``builtin:tiny-*`` -> the project's tiny checkpoint (built when ``build``); else as given."""
    kind = BUILTIN.get(model)
    if kind is None:
        return model
    from qwen3vl_vllm.testing.checkpoint import default_name, ensure_checkpoint

    base = Path(root).resolve() / "checkpoints"
    if build:
        return str(ensure_checkpoint(base, kind=kind, size="tiny"))
    return str(base / default_name(kind, "tiny"))


def resolve_kind(cfg, model: str) -> str:
    from qwen3vl_vllm.ops.config import ConfigError
    from qwen3vl_vllm.serving.detect import detect_kind

    if cfg.kind != "auto":
        return cfg.kind
    kind = BUILTIN.get(cfg.model) or detect_kind(model)
    if kind is None:
        raise ConfigError(f"kind: cannot detect whether {cfg.model!r} is an embedding or a reranker "
                          "checkpoint; set kind: embedding or kind: reranker")
    return kind


def engine_kwargs(cfg, model: str) -> dict:
    """The engine settings a config gives: ``settings.effective_engine_kwargs`` with the
    config's media bounds, limits and lengths as the user's values."""
    from qwen3vl_vllm.prompts.inputs import MediaSettings
    from qwen3vl_vllm.prompts.engine import effective_engine_kwargs

    m = cfg.media
    settings = MediaSettings(min_pixels=m.min_pixels, max_pixels=m.max_pixels, fps=m.fps,
                             max_frames=m.max_frames)
    user = {"limit_mm_per_prompt": {"image": m.images_per_prompt, "video": m.videos_per_prompt}}
    if cfg.max_model_len is not None:
        user["max_model_len"] = cfg.max_model_len
    if cfg.batching.max_num_batched_tokens is not None:
        user["max_num_batched_tokens"] = cfg.batching.max_num_batched_tokens
    return effective_engine_kwargs(resolve_kind(cfg, model), user, settings)


# media_io_kwargs keys only the plugin's video loader understands
PLUGIN_ONLY_VIDEO_KEYS = ("video_backend", "qwen3vl_fps", "qwen3vl_max_frames", "qwen3vl_total_pixels")


def vllm_args(cfg, model: str, *, plugin: bool = True) -> list[str]:
    """Every flag of the equivalent ``vllm serve`` command.

    ``plugin=False`` gives the closest plain-vLLM command (no middleware, vLLM's own video
    loader), e.g. to compare against with the plugin disabled (``VLLM_PLUGINS``).
    """
    import json

    from qwen3vl_vllm.prompts.engine import chat_template_text

    kind = resolve_kind(cfg, model)
    d = engine_kwargs(cfg, model)
    m = cfg.media
    media_io = d["media_io_kwargs"]
    if not plugin:
        media_io = {"video": {k: v for k, v in media_io["video"].items()
                              if k not in PLUGIN_ONLY_VIDEO_KEYS}}
    j = lambda v: json.dumps(v, separators=(",", ":"))  # noqa: E731
    args = [model, "--host", cfg.server.host, "--port", str(cfg.server.port),
            "--runner", d["runner"], "--convert", d["convert"],
            "--pooler-config", j(d["pooler_config"]),
            "--hf-overrides", j(d["hf_overrides"]),
            "--mm-processor-kwargs", j(d["mm_processor_kwargs"]),
            "--media-io-kwargs", j(media_io),
            "--limit-mm-per-prompt", j(d["limit_mm_per_prompt"]),
            "--dtype", cfg.dtype,
            "--max-model-len", str(d["max_model_len"]),
            "--max-num-batched-tokens", str(d["max_num_batched_tokens"]),
            "--max-num-seqs", str(cfg.batching.max_num_seqs),
            "--data-parallel-size", str(cfg.parallel.data_parallel_size),
            "--tensor-parallel-size", str(cfg.parallel.tensor_parallel_size)]
    if cfg.parallel.api_server_count is not None:  # else vLLM's (CPU) or the plugin's (GPU) choice
        args += ["--api-server-count", str(cfg.parallel.api_server_count)]
    if not plugin:  # with the plugin, it sets the template itself (no file: the text)
        args += ["--chat-template", chat_template_text(kind)]
    if cfg.served_model_name:
        args += ["--served-model-name", cfg.served_model_name]
    if m.local_media_dir:
        args += ["--allowed-local-media-path", str(Path(m.local_media_dir).resolve())]
    if not m.remote_fetch:  # vLLM's own domain check, with a domain that cannot exist
        args += ["--allowed-media-domains", REMOTE_OFF_DOMAIN]
    elif m.allowed_domains:
        args += ["--allowed-media-domains", *m.allowed_domains]
    for mw in (MIDDLEWARES if plugin else ()):
        args += ["--middleware", mw]
    if cfg.engine.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(cfg.engine.gpu_memory_utilization)]
    if cfg.engine.enforce_eager:
        args += ["--enforce-eager"]
    return args + list(cfg.engine.extra_args)


def server_env(cfg, base: dict | None = None) -> dict:
    """Environment of the server: API key, body, item and text limits, CPU sizing."""
    env = vllm_env() if base is None else dict(base)
    key = os.environ.get(cfg.server.api_key_env)
    if key:
        env["VLLM_API_KEY"] = key
    else:
        env.pop("VLLM_API_KEY", None)
    env[MAX_BODY_ENV] = str(cfg.server.max_request_bytes)
    env[BODIES_IN_FLIGHT_ENV] = str(cfg.server.max_request_bytes_in_flight)
    env[BODY_TIMEOUT_ENV] = str(cfg.server.body_timeout_s)
    env[HEADER_ENV] = str(cfg.server.max_header_bytes)
    env[HEADER_TIMEOUT_ENV] = str(cfg.server.header_timeout_s)
    env[MAX_ITEMS_ENV] = str(cfg.server.max_items_per_request)
    env[MAX_TEXT_ENV] = str(cfg.server.max_text_chars)
    env[MAX_REQUEST_TEXT_ENV] = str(cfg.server.max_request_text_chars)
    env[KEEP_ALIVE_ENV] = str(cfg.server.keep_alive_s)
    if cfg.instructions:
        env[INSTRUCTIONS_ENV] = json.dumps(cfg.instructions, ensure_ascii=False, sort_keys=True)
    if cfg.server.raw_prompts:
        env[RAW_ENV] = "1"
    env[TRUNCATE_ENV] = "1" if cfg.server.truncate else "0"
    env[FIT_ENV] = cfg.server.video_fit
    env.update(decode_limit_env(cfg))
    env.pop(REMOTE_MEDIA_ENV, None)  # the config decides
    if cfg.media.remote_fetch and not cfg.media.allowed_domains:
        env[REMOTE_MEDIA_ENV] = "1"  # any public host (with domains, the flag lists them)
    if cfg.engine.cpu_kvcache_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.engine.cpu_kvcache_gib)
    return env


def decode_limit_env(cfg) -> dict[str, str]:
    """The config's decode limits as the variables the server reads (``budget``)."""
    m = cfg.media
    return {REQUEST_BYTES_ENV: str(m.max_decoded_bytes_per_request),
            IN_FLIGHT_ENV: str(m.max_decoded_bytes_in_flight),
            SECONDS_ENV: f"{m.max_decode_seconds:g}"}


def dry_run_command(cfg, model: str) -> str:
    import shlex

    env = []
    if os.environ.get(cfg.server.api_key_env):
        env.append(f'VLLM_API_KEY="${cfg.server.api_key_env}"')
    env += [f"{MAX_BODY_ENV}={cfg.server.max_request_bytes}",
            f"{BODIES_IN_FLIGHT_ENV}={cfg.server.max_request_bytes_in_flight}",
            f"{BODY_TIMEOUT_ENV}={cfg.server.body_timeout_s}",
            f"{HEADER_ENV}={cfg.server.max_header_bytes}",
            f"{HEADER_TIMEOUT_ENV}={cfg.server.header_timeout_s}",
            f"{MAX_ITEMS_ENV}={cfg.server.max_items_per_request}",
            f"{MAX_TEXT_ENV}={cfg.server.max_text_chars}",
            f"{MAX_REQUEST_TEXT_ENV}={cfg.server.max_request_text_chars}",
            f"{KEEP_ALIVE_ENV}={cfg.server.keep_alive_s}"]
    if cfg.instructions:
        env.append(f"{INSTRUCTIONS_ENV}=" + shlex.quote(
            json.dumps(cfg.instructions, ensure_ascii=False, sort_keys=True)))
    if cfg.server.raw_prompts:
        env.append(f"{RAW_ENV}=1")
    if cfg.server.truncate:
        env.append(f"{TRUNCATE_ENV}=1")
    if cfg.server.video_fit != VIDEO_FIT_DEFAULT:
        env.append(f"{FIT_ENV}={cfg.server.video_fit}")
    env += [f"{k}={v}" for k, v in decode_limit_env(cfg).items()]
    if cfg.media.remote_fetch and not cfg.media.allowed_domains:
        env.append(f"{REMOTE_MEDIA_ENV}=1")
    return " ".join(env + ["vllm", "serve"] + [shlex.quote(a) for a in vllm_args(cfg, model)])


class ServerProcess:
    def __init__(self, model: str | os.PathLike, *, host: str = "127.0.0.1", port: int | None = None,
                 extra_args: Sequence[str] = (), log_path: str | os.PathLike | None = None,
                 env: dict | None = None, startup_timeout: float = 300.0,
                 full_args: Sequence[str] | None = None, inherit_output: bool = False):
        self.full_args = list(full_args) if full_args is not None else None
        self.model = os.fspath(model)
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else None
        self.env = env or vllm_env()
        self.startup_timeout = startup_timeout
        self.inherit_output = inherit_output  # vLLM's log on our own stdout (the CLI), else none
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> "ServerProcess":
        if self.full_args is not None:
            cmd = serve_command(None, extra_args=self.full_args)
        else:
            cmd = serve_command(self.model, host=self.host, port=self.port, extra_args=self.extra_args)
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")
        out = self._log or (None if self.inherit_output else subprocess.DEVNULL)
        self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def poll_healthy(self, timeout: float | None = None, stop=lambda: False) -> str:
        """Poll ``/health`` until it answers 200: "healthy", or "exited" (the process ended),
        "timeout", "stopped" (``stop()`` became true). The one health loop of the launcher."""
        import httpx

        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while not stop():
            if self.proc is None or self.proc.poll() is not None:
                return "exited"
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return "healthy"
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                return "timeout"
            time.sleep(0.5)
        return "stopped"

    def wait_healthy(self, timeout: float | None = None) -> None:
        state = self.poll_healthy(timeout)
        if state == "exited":
            raise ServerStartError(f"vLLM server exited early (rc={self.proc.returncode if self.proc else None});"
                              f" see {self.log_path or 'its output'}")
        if state != "healthy":
            raise ServerStartError(f"vLLM server not healthy after {timeout or self.startup_timeout:.0f}s; "
                              f"see {self.log_path or 'its output'}")

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                rc = self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left in the group (engine core, workers)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if rc is None:
            rc = self.proc.wait(10)
        if self._log:
            self._log.close()
        return rc

    def __enter__(self) -> "ServerProcess":
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False


def run_config(cfg, model: str, *, log=print) -> int:
    """Start the server for ``cfg``, wait for /health, serve until SIGINT/SIGTERM; clean stop."""
    import signal as _signal

    server = ServerProcess(model, host=cfg.server.host, port=cfg.server.port,
                           env=server_env(cfg), full_args=vllm_args(cfg, model),
                           inherit_output=True)
    stop = {"requested": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["requested"] = True

    previous = {s: _signal.signal(s, on_signal) for s in (_signal.SIGINT, _signal.SIGTERM)}
    try:
        server.start()
        state = server.poll_healthy(stop=lambda: stop["requested"])
        if state == "exited":
            log(f"qwen3vl-vllm serve: vLLM exited during start-up (rc={server.proc.returncode})")
            return 1
        if state == "timeout":
            log("qwen3vl-vllm serve: not healthy in time; stopping")
            return 1
        if not stop["requested"]:
            log(f"qwen3vl-vllm serve: listening on {server.url} (OpenAI API at {server.base_url}, "
                f"model {model})")
        while not stop["requested"]:
            if server.proc.poll() is not None:
                log(f"qwen3vl-vllm serve: vLLM exited (rc={server.proc.returncode})")
                return 1
            time.sleep(0.5)
        log("qwen3vl-vllm serve: stopping")
        return 0
    finally:
        server.stop()
        for s, handler in previous.items():
            _signal.signal(s, handler)
