"""`model.onnx`: a bundle's network as an ONNX graph, so engines other than torch can run it.

1. The graph is the Classifier alone: normalised float32 pixels (batch, 3, size, size) in, logits and
   the penultimate features (for the unknown score) out, with a dynamic batch axis. Resizing, cropping
   and mean/std stay in model.json (`Preprocessing`), so every engine is fed the same pixels by the same code.
2. torch's own exporter (`dynamo=True`, opset 18): the supported one since torch 2.9. It makes the
   "same" padding of timm's tf_* models constant, which the deprecated TorchScript exporter computes
   at run time: ONNX Runtime ran its EfficientNet-Lite graphs 1.2-2.0x faster (benchmarks/RESULTS.md).
3. The graph records the SHA-256 of the weights file it was exported from, so a model fine-tuned
   again is never run with a stale graph; and it is checked against torch before it is kept.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from quorum import files
from quorum.console import say
from quorum.errors import QuorumError
from quorum.models.bundle import ONNX, WEIGHTS, load_model, unreadable_weights
from quorum.models.inference import FEATURES_OUTPUT, LOGITS_OUTPUT, onnx_session

OPSET = 18
WEIGHTS_KEY = "quorum.weights_sha256"
TOLERANCE = 1e-4  # largest probability difference to torch that a kept graph may have


class OnnxUnavailable(QuorumError):
    """A bundle's model.onnx cannot be made or used (exporter missing, an unsupported layer, a read-only folder)."""


def weights_digest(model_dir: Path) -> str:
    try:
        return files.sha256(Path(model_dir) / WEIGHTS)
    except OSError as exc:  # e.g. model.safetensors deleted after the export
        raise unreadable_weights(model_dir, exc) from None


def is_current(model_dir: Path, digest: str | None = None, graph: str = ONNX) -> bool:
    """Whether model_dir/`graph` (model.onnx, or model.int8.onnx) exists, came from the weights there now,
    and gives the features output (a graph exported before the unknown score used features is stale)."""
    path = Path(model_dir) / graph
    if not path.is_file():
        return False
    try:
        import onnx

        saved = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: as good as missing
        return False
    tags = {p.key: p.value for p in saved.metadata_props}
    outputs = [output.name for output in saved.graph.output]
    return FEATURES_OUTPUT in outputs and tags.get(WEIGHTS_KEY) == (digest or weights_digest(model_dir))


def can_write(model_dir: Path) -> bool:
    return os.access(model_dir, os.W_OK | os.X_OK)


def export_onnx(model_dir: Path) -> Path:
    """Write model_dir/model.onnx from the bundle's saved weights; raise OnnxUnavailable if it cannot be made
    or does not match torch within TOLERANCE."""
    model_dir = Path(model_dir)
    if not can_write(model_dir):
        raise OnnxUnavailable(f"cannot write {model_dir / ONNX}: the folder is read-only")
    digest = weights_digest(model_dir)
    model, info = load_model(model_dir, "cpu")
    x = _normalised_pixels(info, n=3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on torch internals are not the user's concern
            program = torch.onnx.export(_WithFeatures(model), (x,), dynamo=True, external_data=False,
                                        opset_version=OPSET, input_names=["pixels"],
                                        output_names=[LOGITS_OUTPUT, FEATURES_OUTPUT], verbose=False,
                                        dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    except ImportError as exc:
        raise OnnxUnavailable(f"exporting needs {exc.name or 'onnxscript'}: pip install onnx onnxscript") from None
    except Exception as exc:
        raise OnnxUnavailable("torch.onnx.export failed "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    program.model.metadata_props[WEIGHTS_KEY] = digest
    with files.atomic_path(model_dir / ONNX) as tmp:
        program.save(tmp, external_data=False)
        _check_against_torch(tmp, model, x)
    return model_dir / ONNX


class _WithFeatures(torch.nn.Module):
    """The graph's two outputs: logits, and the penultimate features the unknown score measures distance in."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.logits_and_features(x)


def tag_weights(path: Path, digest: str) -> None:
    """Record in the graph at `path` the SHA-256 of the weights it came from (see `is_current`)."""
    import onnx

    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {**{p.key: p.value for p in graph.metadata_props}, WEIGHTS_KEY: digest})
    onnx.save(graph, str(path))


def _normalised_pixels(info, n: int) -> torch.Tensor:
    """Random uint8 pixels through the model's own normaliser: inputs in the range the model sees."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 3, info.image_size, info.image_size), dtype=torch.uint8, generator=generator)
    return info.preprocessing.normalizer()(pixels)


def _check_against_torch(path: Path, model, x: torch.Tensor) -> None:
    with torch.inference_mode():
        expected = torch.softmax(model(x), dim=1).numpy()
    logits = onnx_session(path, threads=1).run([LOGITS_OUTPUT], {"pixels": x.numpy()})[0]
    got = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    worst = float(np.abs(got - expected).max())
    if not worst <= TOLERANCE:  # also catches NaN
        raise OnnxUnavailable(f"the exported graph differs from torch by {worst:.1e} in probability "
                              f"(more than {TOLERANCE:.0e})")


def export_models(model_dirs: list[Path], force: bool = False, quiet: bool = False) -> list[Path]:
    """`quorum export`: model.onnx for each bundle that lacks a current one (every one with `force`).
    Stops at the first that cannot be exported, naming it; those before it are kept."""
    written = []
    for model_dir in model_dirs:
        model_dir = Path(model_dir)
        if not force and is_current(model_dir):
            say(f"{model_dir / ONNX} is current", quiet)
            continue
        began = time.perf_counter()
        try:
            written.append(export_onnx(model_dir))
        except OnnxUnavailable as exc:
            raise QuorumError(f"cannot export {model_dir.name}: {exc}") from None
        say(f"Wrote {model_dir / ONNX} ({time.perf_counter() - began:.1f} s, checked against torch)", quiet)
    return written
