"""vLLM's on-device pixel normalisation, bit-identical and ~2x faster on the CPU platform.

Why: with ``mm_device_do_normalize`` (vLLM's default for Qwen3-VL) the API server ships uint8
pixels (4x fewer bytes than float32) and the model's ``FusedMMInputNorm`` computes
``x * weight[c] + bias[c]`` on the device. On GPU that is a Triton kernel. On CPU vLLM runs the
eager reference, whose uint8-times-float32 multiply goes through type promotion value by value:
in the worker it was 4.7-13 ms of CPU per 512x512 photo and ~40 ms per 10-frame clip
(``benchmarks/account.py``), more than the whole HF processor in the API server.

``forward_cpu`` here converts to float32 once (uint8 and half types; float32 pixels, e.g.
a caller's own float video frames, are not converted) and then multiplies and adds in place. It is the
same two fp32 operations on the same values in the same order, so the output is bit-identical
(``tests/unit/test_serving_cost.py`` checks ``torch.equal`` against vLLM's own
``forward_native``); anything else goes to vLLM's code unchanged. One thread, 512x512 photo
(uint8): 2.1 -> 0.9 ms; 10-frame clip (float32, 2,860 patches): 10.7 -> 7.0 ms.
Installed by ``plugin.register()`` in every process; only CPU models ever call it.
"""

from __future__ import annotations

_SENTINEL = "_qwen3vl_vllm_cpu_norm"


def forward_cpu(self, pixel_values, visual_dtype):
    import torch

    if pixel_values.ndim != 2 or pixel_values.dtype not in (torch.uint8, torch.float32, torch.bfloat16,
                                                            torch.float16):
        return self.forward_native(pixel_values, visual_dtype)
    patches, size = self._unpack_2d(pixel_values)
    patch_size = self._patch_size(size)
    x = pixel_values.reshape(patches, self.channel, patch_size)
    weight, bias = self.weight.view(1, self.channel, 1), self.bias.view(1, self.channel, 1)
    if x.dtype == torch.float32:
        y = x.mul(weight)  # a new tensor: the caller's pixels stay as they are
    else:
        y = x.to(torch.float32)  # exact for uint8 and half types: what type promotion computes
        y.mul_(weight)
    y.add_(bias)
    return y.view(patches, size).to(visual_dtype)


def patch() -> str | None:
    """Install ``forward_cpu`` on vLLM's ``FusedMMInputNorm``; None when already installed."""
    from vllm.model_executor.layers.fusion import mm_input_norm

    cls = mm_input_norm.FusedMMInputNorm
    if getattr(cls.forward_cpu, _SENTINEL, False):
        return None
    setattr(forward_cpu, _SENTINEL, True)
    cls.forward_cpu = forward_cpu
    return "FusedMMInputNorm.forward_cpu"
