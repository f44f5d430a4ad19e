"""Run the offline embedder on the parity cases in a separate process; write results to .npz.

Usage: python offline_worker.py CHECKPOINT OUT.npz TMPDIR
The exit guard makes this process exit 0 once the results are written, even when vLLM aborts at
interpreter teardown (SPEC §4).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def fuzz_cases(kind: str) -> list:
    """The fuzzer's inputs of one kind, when the test session passed them (``QWEN3VL_FUZZ_CASES``)."""
    import os
    import pickle

    path = os.environ.get("QWEN3VL_FUZZ_CASES")
    return pickle.loads(Path(path).read_bytes())[kind] if path else []


def main() -> int:
    import numpy as np

    from cases import mixed_batch, noise_image, parity_cases
    from qwen3vl_vllm.errors import InputError, MediaError
    from qwen3vl_vllm.offline.engines import Qwen3VLEmbedder

    ckpt, out, tmp = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    cases = parity_cases(tmp)
    results: dict[str, object] = {}
    errors: dict[str, str] = {}
    with Qwen3VLEmbedder(ckpt, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.25,
                         max_num_seqs=16) as model:
        names = list(cases)
        vectors = model.process([cases[n] for n in names])
        for name, vec in zip(names, vectors, strict=True):
            results[f"case/{name}"] = vec
        from cases import matrix_cases

        matrix = matrix_cases(tmp / "matrix")
        for name, vec in zip(matrix, model.process(list(matrix.values())), strict=True):
            results[f"matrix/{name}"] = vec
        results["raw/text"] = model.process([cases["text"]], normalize=False)[0]
        results["dim32/text"] = model.process([cases["text"]], dimensions=32)[0]
        results["int8/text"] = model.process([cases["text"]], precision="int8")[0]
        results["mixed32"] = model.process(mixed_batch(tmp))
        bad = [{"text": "ok"}, {"image": b"\x89PNG\r\n\x1a\nnot really"}, {"text": "also ok"}]
        try:
            model.process(bad)
            errors["bad_item"] = "no error raised"
        except MediaError as e:
            errors["bad_item"] = f"{type(e).__name__}: {e}"
        try:
            model.process([cases["text"]], dimensions=10_000)
            errors["bad_dimensions"] = "no error raised"
        except InputError as e:
            errors["bad_dimensions"] = f"{type(e).__name__}: {e}"
        # the bad-input matrix, offline: each a typed error naming the item; the engine carries on
        from test_bad_inputs import client_cases

        for name, (item, exc, fragment) in client_cases(tmp / "bad").items():
            try:
                model.process([{"text": "fine"}, item])
                errors[f"matrix/{name}"] = "no error raised"
            except (MediaError, InputError) as e:
                errors[f"matrix/{name}"] = f"{type(e).__name__}: {e}"
        try:
            model.process([{"text": "hello " * 9000}])
            errors["matrix/text over max length"] = "no error raised"
        except Exception as e:  # noqa: BLE001 - recorded, the test asserts the type
            errors["matrix/text over max length"] = f"{type(e).__name__}: {e}"
        results["after_matrix"] = model.process([cases["text"]])[0]
        _ = noise_image
        from cases import exif_photo, long_text

        results["real/phone"] = model.process([{"image": str(exif_photo(tmp / "real" / "phone.jpg"))}])[0]
        for words in (2500, 4500):
            item = {"text": long_text(words)}
            results[f"real/long{words}"] = model.process([item], truncate=True)[0]
            try:
                model.process([item])
                errors[f"real/long{words}-default"] = "no error raised"
            except InputError as e:
                errors[f"real/long{words}-default"] = f"{type(e).__name__}: {e}"
        for case in fuzz_cases("embedding"):  # the differential fuzzer's inputs, one call each
            try:
                results[f"fuzz/{case.name}"] = model.process([case.item], truncate=case.truncate)[0]
            except Exception as e:  # noqa: BLE001 - recorded: the test tells typed errors apart
                errors[f"fuzz/{case.name}"] = f"{type(e).__name__}: {e}"
    np.savez(out, **{k: np.asarray(v) for k, v in results.items()})
    out.with_suffix(".json").write_text(json.dumps(errors))
    print("offline worker: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
