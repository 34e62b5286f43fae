"""Which CPU runtime quorum ships (issue 11): torch eager (NCHW, channels_last), ONNX Runtime (threads that
sleep, and that spin) and OpenVINO, on the same exported graphs, interleaved in one process.

    pip install openvino   # only for this comparison; quorum itself needs onnxruntime
    python benchmarks/studies/bench_runtimes.py THREADS [REPEATS] [MODEL...]

Models are quorum Classifiers (blocks + head, 10 classes): MobileNetV2 at 64 and 224 px and ResNet50
at 224 with random weights, EfficientNet-Lite0/1/2 from the offline ImageNet weights in
../shared/weights. Prints, per model, the median images/s at batch 32 over REPEATS one-second runs
(range in brackets), each contender going first in turn, and the largest logit difference to torch.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared modules are
from common import WEIGHTS, interleaved_speeds
from quorum.models import weights
from quorum.models.inference import onnx_session
from quorum.models.registry import get_backbone

MODELS = {  # name: (backbone, size, weights)
    "mobilenet_v2-64": ("mobilenet_v2", 64, "none"),
    "mobilenet_v2-224": ("mobilenet_v2", 224, "none"),
    "resnet50-224": ("resnet50", 224, "none"),
    "lite0-64": ("timm/tf_efficientnet_lite0", 64, "tf_efficientnet_lite0"),
    "lite0-224": ("timm/tf_efficientnet_lite0", 224, "tf_efficientnet_lite0"),
    "lite1-240": ("timm/tf_efficientnet_lite1", 240, "tf_efficientnet_lite1"),
    "lite2-260": ("timm/tf_efficientnet_lite2", 260, "tf_efficientnet_lite2"),
}
BATCH = 32


def contenders(name: str, threads: int, folder: Path) -> dict:
    backbone, size, source = MODELS[name]
    torch.manual_seed(0)
    entry = get_backbone(backbone)
    model = weights.build(entry, 10, source if source == "none" else str(WEIGHTS / f"{source}.safetensors")).eval()
    x = torch.randn(BATCH, 3, size, size)
    path = folder / f"{name}.onnx"
    program = torch.onnx.export(model, (x[:2],), dynamo=True, external_data=False, opset_version=18, verbose=False,
                                input_names=["pixels"], output_names=["logits"],
                                dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    program.save(path, external_data=False)
    channels_last = weights.build(entry, 10, "none").eval()
    channels_last.load_state_dict(model.state_dict())
    channels_last = channels_last.to(memory_format=torch.channels_last)
    x_cl, xn = x.contiguous(memory_format=torch.channels_last), x.numpy()
    sleeping = onnx_session(path, threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    spinning = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])  # ORT's default: spins
    runs = {"torch NCHW": lambda: model(x).numpy(), "torch channels_last": lambda: channels_last(x_cl).numpy(),
            "onnxruntime": lambda: sleeping.run(None, {"pixels": xn})[0],
            "onnxruntime spinning": lambda: spinning.run(None, {"pixels": xn})[0]}
    try:
        import openvino

        compiled = openvino.Core().compile_model(str(path), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "f32"})  # else bf16 on CPUs with AMX: faster, but not within 1e-4
        request = compiled.create_infer_request()
        runs["openvino"] = lambda: request.infer({0: xn})[0].copy()
    except ImportError:
        pass
    with torch.inference_mode():
        expected = model(x).numpy()
        for way, run in runs.items():
            print(f"  {name} {way}: max |logit - torch| {np.abs(run() - expected).max():.1e}", file=sys.stderr)
    return runs


def main(threads: int, repeats: int, names: list[str]) -> None:
    torch.set_num_threads(threads)
    print(f"threads {threads}, batch {BATCH}, median of {repeats} one-second runs; load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            runs = contenders(name, threads, Path(folder))
            with torch.inference_mode():
                speeds = interleaved_speeds(runs, BATCH, repeats)
            median = {way: statistics.median(values) for way, values in speeds.items()}
            cells = [f"{way} {median[way]:.1f} [{min(speeds[way]):.0f}-{max(speeds[way]):.0f}]" for way in runs]
            ratio = (f"  openvino / onnxruntime {median['openvino'] / median['onnxruntime']:.2f}x"
                     if "openvino" in runs else "")
            print(f"{name:17} " + "  ".join(cells) + ratio + f"  load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("threads", type=int, help="torch and ONNX Runtime threads")
    parser.add_argument("repeats", type=int, nargs="?", default=5, help="one-second runs per contender (default 5)")
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"default all: {', '.join(MODELS)}")
    args = parser.parse_args()
    main(args.threads, args.repeats, args.models or list(MODELS))
