"""int8 with the first k convolutions in float32: what each k costs in accuracy and speed (issue 22)

    python benchmarks/studies/int8_front.py TEST MODEL_DIR... [--fronts 0 1 2 3 4 5] [--speed]

For each bundle (a copy: nothing in it is written) and each k, the int8 graph `quorum export --int8` would try with the
first k convs in float32 (`quantize_graph(front=k)`, ranges calibrated once): its validation and test accuracy
against the float32 graph's (change in points), the images it labels unlike float32 (of the validation and the TEST
images: TEST holds one folder per class) and the mean KL divergence of its softmax from float32's on the test images
(label-free, so less noisy than the accuracy); with `--speed`, every graph's speed-up over float32 (ONNX Runtime,
batch 32, all graphs interleaved, median of 7 one-second runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared modules are
from common import interleaved_speeds, table  # noqa: E402
from quorum.data.images import scan_images  # noqa: E402
from quorum.models.bundle import ONNX, read_info  # noqa: E402
from quorum.models.inference import LOGITS_OUTPUT, engine_threads, onnx_session  # noqa: E402
from quorum.models.quantize import CalibrationReader, Labelled, quantize_graph, training_images  # noqa: E402


def logits(labelled: Labelled, graph: Path) -> np.ndarray:
    session = onnx_session(graph, 1)
    with torch.inference_mode():
        return np.concatenate([session.run([LOGITS_OUTPUT], {"pixels": labelled.normalize(labelled.x[k: k + 100])
                                                             .numpy()})[0] for k in range(0, len(labelled.x), 100)])


def kl(fp32: np.ndarray, int8: np.ndarray) -> float:
    p, q = torch.log_softmax(torch.from_numpy(fp32), 1), torch.log_softmax(torch.from_numpy(int8), 1)
    return float((p.exp() * (p - q)).sum(1).mean())


def speed_ups(graphs: dict[str, Path], size: int) -> dict[str, float]:
    x = np.random.default_rng(0).normal(size=(32, 3, size, size)).astype(np.float32)
    sessions = {name: onnx_session(graph, engine_threads()) for name, graph in graphs.items()}
    speeds = interleaved_speeds({name: (lambda s=s: s.run(None, {"pixels": x})) for name, s in sessions.items()}, 32, 7)
    return {name: statistics.median(v) / statistics.median(speeds["fp32"]) for name, v in speeds.items()}


def front_rows(model_dir: Path, test: Path, fronts: list[int], speed: bool) -> list[list[str]]:
    info = read_info(model_dir)
    paths = scan_images(test).images
    sets = {"val": Labelled.validation(info), "test": Labelled(info, paths, [path.parent.name for path in paths])}
    fp32 = {name: logits(labelled, model_dir / ONNX) for name, labelled in sets.items()}
    rows, graphs = [], {"fp32": model_dir / ONNX}
    with tempfile.TemporaryDirectory() as scratch:
        reader, ranges = CalibrationReader(info, training_images(info)), Path(scratch) / "ranges.json"
        for front in fronts:
            graphs[front] = Path(scratch) / f"front{front}.onnx"
            quantize_graph(model_dir / ONNX, graphs[front], reader, front=front, calibration_cache_path=ranges)
            int8 = {name: logits(labelled, graphs[front]) for name, labelled in sets.items()}
            cells = []
            for name, labelled in sets.items():
                before, after = fp32[name].argmax(1), int8[name].argmax(1)
                change = 100 * ((after == labelled.y).mean() - (before == labelled.y).mean())
                cells += [f"{change:+.2f}", f"{(before != after).sum()} of {len(before)}"]
            rows.append([model_dir.name, str(front), *cells, f"{kl(fp32['test'], int8['test']):.4f}"])
        if speed:
            for row, ratio in zip(rows, list(speed_ups(graphs, info.image_size).values())[1:]):
                row.append(f"{ratio:.2f}x")
    return rows


def main(args: argparse.Namespace) -> int:
    header = ["model", "float32 convs", "val change", "val unlike fp32", "test change", "test unlike fp32",
              "test KL from fp32", *(["speed-up"] * args.speed)]
    rows = [row for model_dir in args.models for row in front_rows(model_dir, args.test, args.fronts, args.speed)]
    print("\n".join(table(header, rows)))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test", type=Path, help="test images, one folder per class")
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--fronts", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--speed", action="store_true")
    sys.exit(main(parser.parse_args()))
