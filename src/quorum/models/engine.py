"""Which engine runs a model: `auto`, `onnx` (ONNX Runtime, CPU), `int8` (its int8 graph, CPU) or `torch` (any device).

Imports nothing heavy at the top, so the CLI checks `--engine` before torch loads.
"""

from __future__ import annotations

import importlib.util

from quorum.errors import QuorumError

ENGINES = ("auto", "onnx", "int8", "torch")
ONNX_RUNTIME = ("onnx", "int8")  # the engines that run a bundle's graph under ONNX Runtime, on the CPU


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def check_engine(engine: str, device: str) -> None:
    """The cheap checks: a wrong combination fails in a second, before any model loads."""
    if engine not in ENGINES:
        raise QuorumError(f"unknown engine '{engine}': choose one of {', '.join(ENGINES)}")
    if engine in ONNX_RUNTIME and device in ("cuda", "mps"):
        raise QuorumError(f"--engine {engine} runs on the CPU, not {device}: use --device cpu, or --engine torch")
    if engine in ONNX_RUNTIME and not onnxruntime_installed():
        raise QuorumError(f"--engine {engine} needs onnxruntime: pip install onnxruntime, or use --engine torch")


def resolve_engine(engine: str, device_type: str) -> str:
    """`auto`: ONNX Runtime on the CPU (when installed), torch on CUDA and MPS; never int8, which costs accuracy."""
    check_engine(engine, device_type)
    if engine == "auto":
        return "onnx" if device_type == "cpu" and onnxruntime_installed() else "torch"
    return engine


def device_for_engine(engine: str, device: str) -> str:
    """`--engine onnx` or `int8` with `--device auto` means the CPU, even where a GPU is visible."""
    return "cpu" if engine in ONNX_RUNTIME and device == "auto" else device
