"""Configs -> vLLM arguments (dry runs), rejections, Kubernetes manifests."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qwen3vl_vllm.ops.config import ConfigError, load_config
from qwen3vl_vllm.prompts.engine import chat_template_text

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
GPU_CONFIGS = [c for c in CONFIGS if not c.name.startswith("tiny-")]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qwen3vl_vllm.ops.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=60)


def _flags(argv: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    key = None
    for tok in argv:
        if tok.startswith("--"):
            key = tok
            out.setdefault(key, [])
        elif key:
            out[key].append(tok)
    return out


def test_all_six_configs_exist():
    assert {c.name for c in CONFIGS} >= {"embedding-2b.yaml", "embedding-8b.yaml", "reranker-2b.yaml",
                                         "reranker-8b.yaml", "tiny-embedding-cpu.yaml",
                                         "tiny-reranker-cpu.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_dry_run_flags(config):
    res = _cli("serve", "--config", str(config), "--dry-run")
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    argv = shlex.split(line)
    assert "vllm" in argv and argv[argv.index("vllm") + 1] == "serve"
    flags = _flags(argv[argv.index("serve") + 2:])
    cfg = yaml.safe_load(config.read_text())
    embedding = "embedding" in config.name
    assert flags["--runner"] == ["pooling"]
    assert flags["--convert"] == ["embed" if embedding else "classify"]
    pooler = json.loads(flags["--pooler-config"][0])
    assert pooler == {"seq_pooling_type": "LAST", "use_activation": True}
    hf = json.loads(flags["--hf-overrides"][0])
    if embedding:
        assert hf == {"is_matryoshka": True}
    else:
        assert hf["architectures"] == ["Qwen3VLForSequenceClassification"]
        assert hf["classifier_from_token"] == ["no", "yes"] and hf["is_original_qwen3_reranker"] is True
    # the plugin sets the template from the package (no file anywhere); plain vLLM gets its text
    assert "--chat-template" not in flags
    from qwen3vl_vllm.ops.config import load_config
    from qwen3vl_vllm.ops.launcher import resolve_model, vllm_args

    loaded = load_config(config)
    plain = vllm_args(loaded, resolve_model(loaded.model, build=False), plugin=False)
    kind = "embedding" if embedding else "reranker"
    assert plain[plain.index("--chat-template") + 1] == chat_template_text(kind)
    mm = json.loads(flags["--mm-processor-kwargs"][0])
    assert mm == {"images_kwargs": {"min_pixels": cfg["media"]["min_pixels"],
                                    "max_pixels": cfg["media"]["max_pixels"]}}
    video = json.loads(flags["--media-io-kwargs"][0])["video"]
    assert video["video_backend"] == "qwen3vl" and video["qwen3vl_max_frames"] == cfg["media"]["max_frames"]
    assert json.loads(flags["--limit-mm-per-prompt"][0]) == {
        "image": cfg["media"]["images_per_prompt"], "video": cfg["media"]["videos_per_prompt"]}
    assert flags["--host"] == ["127.0.0.1"]
    assert flags["--port"] == [str(cfg["server"]["port"])]
    assert flags["--data-parallel-size"] == [str(cfg["parallel"]["data_parallel_size"])]
    assert flags["--tensor-parallel-size"] == [str(cfg["parallel"]["tensor_parallel_size"])]
    if "api_server_count" in cfg["parallel"]:
        assert flags["--api-server-count"] == [str(cfg["parallel"]["api_server_count"])]
    else:  # unset: vLLM's one on CPU, the plugin's choice on GPU
        assert "--api-server-count" not in flags
    assert flags["--max-model-len"] == [str(cfg["max_model_len"])]
    assert "--allowed-local-media-path" not in flags  # no local files by default
    assert flags["--allowed-media-domains"] == ["remote-fetch-is-off.invalid"]  # remote fetch off
    env = dict(a.split("=", 1) for a in argv[:argv.index("vllm")])
    assert int(env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]) > 5  # outlives httpx/openai pools (5 s)


def test_set_overrides_and_local_dir(tmp_path):
    res = _cli("serve", "--config", "configs/embedding-2b.yaml", "--dry-run", "--set", "server.port=9123",
               "--set", f"media.local_media_dir={tmp_path}", "--set", "parallel.tensor_parallel_size=2")
    assert res.returncode == 0, res.stderr
    argv = shlex.split(res.stdout)
    flags = _flags(argv[argv.index("serve") + 2:])
    assert flags["--port"] == ["9123"]
    assert flags["--allowed-local-media-path"] == [str(tmp_path.resolve())]
    assert flags["--tensor-parallel-size"] == ["2"]


@pytest.mark.parametrize("content,fragment", [
    ("model: x\nservre:\n  port: 1\n", "unknown key(s) servre"),
    ("model: x\nserver:\n  prot: 1\n", "unknown key(s) server.prot; allowed in server: host, port"),
    ("model: x\nserver:\n  port: eighty\n", "server.port: expected integer, got str 'eighty'"),
    ("model: x\nmedia:\n  remote_fetch: maybe\n", "media.remote_fetch: expected true/false"),
    ("kind: embedding\n", "model: missing (required)"),
    ("model: x\nkind: classifier\n", "kind: 'classifier' is not one of auto, embedding, reranker"),
    ("model: x\nparallel:\n  tensor_parallel_size: 0\n", "parallel.tensor_parallel_size: must be > 0"),
])
def test_rejections_exit_2_and_name_the_key(tmp_path, content, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert fragment in str(err.value)
    res = _cli("serve", "--config", str(path), "--dry-run")
    assert res.returncode == 2
    assert fragment in res.stderr


def test_undetectable_kind_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: some/Other-Model\n")
    res = _cli("serve", "--config", str(path), "--dry-run")
    assert res.returncode == 2 and "set kind: embedding or kind: reranker" in res.stderr


def test_help_for_every_subcommand():
    for sub in ("serve", "deploy", "make-checkpoint", "demo"):
        res = _cli(sub, "--help")
        assert res.returncode == 0 and "usage:" in res.stdout


@pytest.mark.parametrize("config", GPU_CONFIGS, ids=lambda p: p.name)
def test_kubernetes_manifest_is_valid(config, tmp_path):
    import kubernetes_validate

    out = tmp_path / "m.yaml"
    res = _cli("deploy", "k8s", "--config", str(config), "-o", str(out))
    assert res.returncode == 0, res.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "Service"]
    for d in docs:
        kubernetes_validate.validate(d, "1.30.0", strict=True)  # raises when invalid
    cm, dep, svc = docs
    assert yaml.safe_load(cm["data"]["config.yaml"]) == yaml.safe_load(config.read_text())
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    cfg = yaml.safe_load(config.read_text())
    gpus = cfg["parallel"]["data_parallel_size"] * cfg["parallel"]["tensor_parallel_size"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert c["env"][0]["valueFrom"]["secretKeyRef"]["key"] == "api-key"
    assert any(v.get("configMap") for v in pod["volumes"])
    assert svc["spec"]["ports"][0]["port"] == cfg["server"]["port"]


def test_committed_manifests_are_current():
    for config in GPU_CONFIGS:
        res = _cli("deploy", "k8s", "--config", f"configs/{config.name}")
        assert res.stdout == (ROOT / "deploy" / config.name).read_text(), (
            f"deploy/{config.name} is stale: regenerate with qwen3vl-vllm deploy k8s")


@pytest.mark.parametrize("overrides", [[], ["server.port=9000"],
                                       ["server.port=9100", "parallel.data_parallel_size=2",
                                        "model=Qwen/Qwen3-VL-Embedding-8B"]])
def test_deploy_configmap_holds_the_effective_config(overrides):
    """The pod serves the ConfigMap's config, so it must agree with the Deployment's ports,
    probes, model and parallelism (with --set, the file alone would not)."""
    from qwen3vl_vllm.ops.config import load_config

    sets = [a for o in overrides for a in ("--set", o)]
    res = _cli("deploy", "k8s", "--config", "configs/embedding-2b.yaml", *sets)
    assert res.returncode == 0, res.stderr
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    served = load_config(None, data=yaml.safe_load(configmap["data"]["config.yaml"]),
                         overrides=["server.host=0.0.0.0"])  # what the pod's command adds
    expected = load_config(str(ROOT / "configs" / "embedding-2b.yaml"), overrides)
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    assert served.server.port == expected.server.port == c["ports"][0]["containerPort"]
    assert service["spec"]["ports"][0]["port"] == served.server.port
    assert served.server.host == "0.0.0.0"
    assert served.model == expected.model and served.parallel == expected.parallel
    gpus = served.parallel.data_parallel_size * served.parallel.tensor_parallel_size
    assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert served.instructions == expected.instructions


def test_truncate_and_decode_limits_reach_the_server_env():
    from qwen3vl_vllm.ops.config import load_config
    from qwen3vl_vllm.ops.launcher import server_env

    cfg = load_config("configs/tiny-embedding-cpu.yaml", ["server.truncate=true",
                                                          "media.max_decode_seconds=5",
                                                          "media.max_decoded_bytes_per_request=1000"])
    env = server_env(cfg, base={})
    assert env["QWEN3VL_TRUNCATE"] == "1" and env["QWEN3VL_MAX_DECODE_SECONDS"] == "5"
    assert env["QWEN3VL_MAX_REQUEST_DECODED_BYTES"] == "1000"
    assert server_env(load_config("configs/tiny-embedding-cpu.yaml"), base={})["QWEN3VL_TRUNCATE"] == "0"
    with pytest.raises(Exception, match="media.max_decode_seconds: must be >= 0"):
        load_config("configs/tiny-embedding-cpu.yaml", ["media.max_decode_seconds=-1"])


def test_item_limit_reaches_the_server_env():
    from qwen3vl_vllm.ops.config import load_config
    from qwen3vl_vllm.ops.launcher import server_env

    env = server_env(load_config("configs/tiny-embedding-cpu.yaml"), base={})
    assert env["QWEN3VL_MAX_ITEMS_PER_REQUEST"] == "2048"
    env = server_env(load_config("configs/tiny-embedding-cpu.yaml", ["server.max_items_per_request=0"]), base={})
    assert env["QWEN3VL_MAX_ITEMS_PER_REQUEST"] == "0"
    res = _cli("serve", "--config", "configs/tiny-embedding-cpu.yaml", "--set",
               "server.max_items_per_request=96", "--dry-run")
    assert res.returncode == 0 and "QWEN3VL_MAX_ITEMS_PER_REQUEST=96" in res.stdout, res.stdout[:500]
    with pytest.raises(Exception, match="server.max_items_per_request: must be >= 0"):
        load_config("configs/tiny-embedding-cpu.yaml", ["server.max_items_per_request=-1"])


def test_text_limits_reach_the_server_env():
    from qwen3vl_vllm.ops.config import load_config
    from qwen3vl_vllm.ops.launcher import server_env

    env = server_env(load_config("configs/tiny-embedding-cpu.yaml"), base={})
    assert env["QWEN3VL_MAX_TEXT_CHARS"] == "4194304"
    assert env["QWEN3VL_MAX_REQUEST_TEXT_CHARS"] == "16777216"
    assert env["QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT"] == str(512 * 1024 ** 2)
    assert env["QWEN3VL_BODY_TIMEOUT_S"] == "60" and env["QWEN3VL_MAX_HEADER_BYTES"] == "65536"
    assert env["QWEN3VL_HEADER_TIMEOUT_S"] == "30"
    env = server_env(load_config("configs/tiny-embedding-cpu.yaml", ["server.max_text_chars=0",
                                                                   "server.max_request_text_chars=5"]), base={})
    assert env["QWEN3VL_MAX_TEXT_CHARS"] == "0" and env["QWEN3VL_MAX_REQUEST_TEXT_CHARS"] == "5"
    res = _cli("serve", "--config", "configs/tiny-embedding-cpu.yaml", "--set", "server.max_text_chars=123",
               "--set", "server.max_request_text_chars=456", "--set", "server.max_request_bytes_in_flight=789",
               "--set", "server.body_timeout_s=12", "--set", "server.max_header_bytes=345",
               "--set", "server.header_timeout_s=7", "--dry-run")
    assert res.returncode == 0, res.stdout[:500]
    assert "QWEN3VL_MAX_TEXT_CHARS=123" in res.stdout and "QWEN3VL_MAX_REQUEST_TEXT_CHARS=456" in res.stdout
    assert "QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT=789" in res.stdout and "QWEN3VL_BODY_TIMEOUT_S=12" in res.stdout
    assert "QWEN3VL_MAX_HEADER_BYTES=345" in res.stdout and "QWEN3VL_HEADER_TIMEOUT_S=7" in res.stdout
    for key in ("server.max_text_chars", "server.max_request_text_chars", "server.max_request_bytes_in_flight",
                "server.body_timeout_s", "server.max_header_bytes", "server.header_timeout_s"):
        with pytest.raises(Exception, match=f"{key}: must be >= 0"):
            load_config("configs/tiny-embedding-cpu.yaml", [f"{key}=-1"])
