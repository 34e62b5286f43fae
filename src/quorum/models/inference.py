"""One inference path: a member's uint8 pixels in, its class probabilities out.

Validation during training, `quorum predict`, the report's `--data` scoring and its timing all
call a model through one of these, so the pixels a model sees and the arithmetic it runs on them
are written once. Two engines behind the same call:
- `TorchInference`: the model in torch, on any device (training's validation always uses it);
- `OnnxInference`: the bundle's model.onnx under ONNX Runtime, on the CPU, where it ran these
  backbones 1.5-4x faster than torch (benchmarks/RESULTS.md). Both normalise with the same
  `Normalizer` and take the same softmax, so only the network's own arithmetic differs.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from quorum.calibration import calibrate
from quorum.data.preprocess import Preprocessing
from quorum.device import autocast
from quorum.models.classifier import Classifier

LOGITS_OUTPUT, FEATURES_OUTPUT = "logits", "features"  # model.onnx's outputs
# Images per `session.run`: a batch runs as slices of this many, spread over `OnnxInference`'s threads. Slices of 8
# took mobilenet_v2-224's int8 graph 1.9 CPU ms an image against 2.4 for 32 at once (its activations stay in cache;
# ResNet50 and mobilenet_v2-64: no change), and small slices keep both threads busy to the end of a batch.
SLICE_IMAGES = 8


class TorchInference:
    """A model on a device: uint8 pixels (n, 3, size, size) -> softmax probabilities (n, classes).

    `start` > 0 means the input is already the input of block `start` (phase 1's cached features),
    so it is neither normalised nor run through the blocks before it.
    """

    def __init__(self, model: Classifier, preprocessing: Preprocessing, device: torch.device,
                 channels_last: bool = False):
        self.model, self.preprocessing, self.device = model, preprocessing, torch.device(device)
        self.normalize = preprocessing.normalizer().to(self.device)
        # NHWC: oneDNN on the CPU ran these backbones 1.2-1.7x faster with it (benchmarks/RESULTS.md),
        # tensor cores take it without transposes. Off while training: the trainer owns the weights' layout.
        self.channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor, start: int = 0) -> np.ndarray:
        self.model.eval()
        x = inputs.to(self.device, non_blocking=True)
        if start == 0:
            x = self._normalized(x)
        with autocast(self.device):
            logits = self.model(x, start=start)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    @torch.inference_mode()
    def with_features(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, penultimate features (n, width)) of uint8 pixels."""
        self.model.eval()
        with autocast(self.device):
            logits, features = self.model.logits_and_features(self._normalized(inputs.to(self.device)))
        return torch.softmax(logits.float(), dim=1).cpu().numpy(), features.float().cpu().numpy()

    def _normalized(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.normalize(pixels)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class Inference(Protocol):
    def __call__(self, inputs: torch.Tensor, start: int = 0) -> np.ndarray: ...

    def with_features(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]: ...


class OnnxInference:
    """model.onnx under ONNX Runtime on the CPU: uint8 pixels (n, 3, size, size) -> softmax probabilities.

    A batch runs as slices of up to SLICE_IMAGES, at least one per thread; with `threads` > 1 (give a session of one
    intra-op thread, `onnx_session(path, 1)`), that many slices run at once (ONNX Runtime releases the GIL and a
    session's `run` is thread-safe). So no thread waits at every operator for a peer another process has preempted,
    as one session's intra-op threads do on a shared CPU: predict --engine int8 ran 1.2-1.5x faster so on 2 cores
    (benchmarks/RESULTS.md, "int8speed"; not measured on more). Each image's result is its own either way.
    """

    def __init__(self, session, preprocessing: Preprocessing, threads: int = 1):
        self.session, self.preprocessing = session, preprocessing
        self.normalize = preprocessing.normalizer()
        self.input = session.get_inputs()[0].name
        # Graphs exported since the unknown score moved to features have a second output; older ones do not.
        self.has_features = FEATURES_OUTPUT in [output.name for output in session.get_outputs()]
        self.outputs = [LOGITS_OUTPUT, FEATURES_OUTPUT] if self.has_features else [LOGITS_OUTPUT]
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="onnx") if threads > 1 else None

    def __call__(self, inputs: torch.Tensor, start: int = 0) -> np.ndarray:
        if start:
            raise ValueError("OnnxInference runs the whole network: cached features need TorchInference")
        return self.with_features(inputs)[0]

    @torch.inference_mode()
    def with_features(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, penultimate features, or None for a graph without them) of uint8 pixels."""
        x = self.normalize(inputs.cpu()).numpy()
        # At most SLICE_IMAGES each, and a slice for every thread (many cores, a small batch): each image in one slice.
        pieces = max(self.threads, -(-len(x) // SLICE_IMAGES))
        slices = np.array_split(x, min(pieces, len(x))) if len(x) > 1 else [x]
        if self.pool is not None and len(slices) > 1:
            results = list(self.pool.map(self._run, slices))
        else:
            results = [self._run(piece) for piece in slices]
        outputs = [np.concatenate(parts) for parts in zip(*results)]
        probs = torch.softmax(torch.from_numpy(outputs[0]), dim=1).numpy()
        return probs, outputs[1] if self.has_features else None

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.outputs, {self.input: x})


class Calibrated:
    """An inference whose probabilities are temperature-scaled (`calibration.calibrate`): every label is
    unchanged, the probabilities become calibrated ones. Wraps either engine, so both calibrate alike."""

    def __init__(self, run: Inference, temperature: float):
        self.run, self.temperature = run, float(temperature)
        self.preprocessing = run.preprocessing

    def __call__(self, inputs: torch.Tensor, start: int = 0) -> np.ndarray:
        return self._calibrated(self.run(inputs, start))

    def with_features(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        probs, features = self.run.with_features(inputs)
        return self._calibrated(probs), features

    def _calibrated(self, probs: np.ndarray) -> np.ndarray:
        return probs if self.temperature == 1.0 else calibrate(probs, self.temperature)


def onnx_session(path: Path, threads: int):
    """An ONNX Runtime session that shares the machine politely: `threads` threads that sleep, not spin,
    while they wait (a spinning thread on a shared 2-core machine steals the core its peer needs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise to a user
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cpu_cores() -> int:
    """Cores this process may use (a container or taskset may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def engine_threads(processes: int = 1) -> int:
    """ONNX Runtime's threads per process: the cores, shared by the processes on this machine. The decoding
    workers are not subtracted: they sleep once their batches are ready, and idle engine threads sleep too
    (no spinning), so the two take turns (measured in benchmarks/RESULTS.md)."""
    return max(1, cpu_cores() // max(1, processes))
