"""The members of a vote: which models, checked against each other before any weights load, then loaded.

A member is named by its folder under the models dir: that is what `--model` and `--tie-breaker`
take and what the CSV's member columns are called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from quorum.console import say
from quorum.errors import QuorumError
from quorum.models import onnx_export
from quorum.models.bundle import (
    INT8_ONNX,
    MODEL_JSON,
    ONNX,
    WEIGHTS,
    ModelInfo,
    find_models,
    find_unfinished,
    load_model,
    read_info,
    unreadable_weights,
)
from quorum.models.engine import ONNX_RUNTIME, resolve_engine
from quorum.models.inference import (
    Calibrated,
    Inference,
    OnnxInference,
    TorchInference,
    cpu_cores,
    onnx_session,
)
from quorum.models.temperature import temperature
from quorum.predict.vote import default_tie_breaker


@dataclass(frozen=True)
class Member:
    name: str
    info: ModelInfo
    run: Inference  # uint8 pixels -> calibrated probabilities
    cost: float  # weights x input pixels: a cheap stand-in for FLOPs, to run cheap members first
    engine: str = "torch"  # "onnx", "int8" or "torch"


def select_models(models_dir: Path, names: tuple[str, ...] | list[str] = ()) -> list[Path]:
    """The folders of the models named (in that order), or of every model in `models_dir` (by name)."""
    models_dir = Path(models_dir)
    available = {path.name: path for path in find_models(models_dir)}
    if not names:
        unfinished = find_unfinished(models_dir)
        if not available:
            raise QuorumError(f"no models in {models_dir}: fine-tune one with `quorum finetune BACKBONE` "
                              "or point --models-dir at a folder of models")
        if unfinished:  # never a member fewer without a word
            listed = ", ".join(str(path) for path in unfinished)
            say(f"[yellow]Warning: left out {listed}: no {MODEL_JSON} (an unfinished or damaged model; fine-tune it "
                f"again); using the {len(available)} other model(s)[/yellow]")
        return list(available.values())
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise QuorumError(f"--model {repeated[0]} is given more than once: each model votes once")
    chosen = []
    for name in names:
        if name in available:
            chosen.append(available[name])
        elif (models_dir / name).is_dir():  # there but broken: read_info says exactly how
            chosen.append(models_dir / name)
        else:
            choices = ", ".join(available) or "none yet (fine-tune one with `quorum finetune BACKBONE`)"
            raise QuorumError(f"unknown model '{name}' in {models_dir}: choose from {choices}")
    return chosen


def read_members(model_dirs: list[Path]) -> list[ModelInfo]:
    """Every member's model.json, checked to vote over the same classes in the same order."""
    if not model_dirs:
        raise QuorumError("no models to vote with: give at least one --model")
    infos = [read_info(path) for path in model_dirs]
    check_classes(infos)
    return infos


def check_classes(infos: list[ModelInfo]) -> None:
    # A vote adds up class *indices*, so a different order is as wrong as a different class.
    first = infos[0]
    differ = [info for info in infos[1:] if info.classes != first.classes]
    if differ:
        listed = ", ".join(f"{info.path.name} has [{', '.join(info.classes)}]" for info in [first, *differ])
        raise QuorumError(f"models disagree on classes: {listed}; "
                          "pick models fine-tuned on the same classes with --model")


def tie_breaker_index(infos: list[ModelInfo], name: str | None = None) -> int:
    """The member named `name`, or by default the one with the best validation accuracy (first by name on a tie)."""
    names = [info.path.name for info in infos]
    if name is None:
        return default_tie_breaker([info.val_accuracy for info in infos], names)
    if name not in names:
        raise QuorumError(f"--tie-breaker {name} is not one of the members: choose from {', '.join(names)}")
    return names.index(name)


def member_engines(infos: list[ModelInfo], engine: str, device_type: str, quiet: bool = False) -> list[str]:
    """Each member's engine, "onnx", "int8" or "torch", for `--engine` `engine` on a `device_type` device.

    auto: ONNX Runtime on the CPU for every member whose model.onnx is current (finetune writes it),
    torch for the rest (an export takes 5-40 s: predict does not spend that, or write into a model's
    folder, unasked; `describe_engines` names them). onnx: a member without a current model.onnx is
    exported now, once, or runs on torch if its folder is read-only or the export fails. int8: each
    member's model.int8.onnx where it is current (`quorum export --int8` writes it), else as onnx.
    """
    resolved = resolve_engine(engine, device_type)
    if resolved == "torch":
        return ["torch"] * len(infos)
    engines = []
    for info in infos:
        if resolved == "int8" and onnx_export.is_current(info.path, graph=INT8_ONNX):
            engines.append("int8")
            continue
        current = onnx_export.is_current(info.path)
        if not current and engine in ONNX_RUNTIME:
            try:
                say(f"Exporting {info.path / ONNX} (once; `quorum export` does it ahead of time)", quiet)
                onnx_export.export_onnx(info.path)
                current = True
            except onnx_export.OnnxUnavailable as exc:
                say(f"[yellow]{info.path.name} runs on torch: {exc}[/yellow]", quiet)
        engines.append("onnx" if current else "torch")
    float_graphs = [info.path.name for info, e in zip(infos, engines) if resolved == "int8" and e != "int8"]
    if float_graphs:  # said once, for all of them
        say(f"[yellow]No current model.int8.onnx for {', '.join(float_graphs)}: float32 there "
            "(`quorum export --int8` adds it)[/yellow]", quiet)
    return engines


def load_members(infos: list[ModelInfo], device: torch.device, engines: list[str] | None = None,
                 threads: int | None = None, quiet: bool = False) -> list[Member]:
    """Each member ready to run on its engine (`member_engines`; torch for all by default), its probabilities
    calibrated by its temperature (models/temperature.py). `threads`: the slices of a batch an ONNX Runtime member
    runs at once (`OnnxInference`; the members run one after another), default all cores."""
    engines = engines or ["torch"] * len(infos)
    members = []
    for info, engine in zip(infos, engines):
        if engine in ONNX_RUNTIME:
            graph = info.path / (INT8_ONNX if engine == "int8" else ONNX)
            session = onnx_session(graph, 1)  # its threads: slices of each batch at once (`OnnxInference`)
            check_input_size(session, info, graph)
            run = OnnxInference(session, info.preprocessing, threads or cpu_cores())
        else:
            model, _ = load_model(info.path, device)
            run = TorchInference(model, info.preprocessing, device, channels_last=True)
        run = Calibrated(run, temperature(info, quiet))
        members.append(Member(info.path.name, info, run, cost(info), engine))
    return members


def check_input_size(session, info: ModelInfo, graph: Path) -> None:
    """An ONNX graph fixes the pixels it takes; an edited image_size in model.json must not feed it others."""
    size = tuple(session.get_inputs()[0].shape[2:])
    if size != (info.image_size, info.image_size):
        raise QuorumError(f"{info.path / MODEL_JSON}: image_size is {info.image_size} but {graph} takes "
                          f"{'x'.join(map(str, size))} pixels: restore the file or fine-tune the model again")


def cost(info: ModelInfo) -> float:
    """Numbers in the weights file x input pixels, read from the file's header: the same for every engine,
    so members run in the same order (and --lazy skips the same runs) whichever engine runs them."""
    from safetensors import safe_open

    try:
        with safe_open(str(info.path / WEIGHTS), framework="pt") as weights:
            numbers = sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    except Exception as exc:
        raise unreadable_weights(info.path, exc) from None
    return float(numbers) * info.image_size**2


ENGINE_NAMES = {"onnx": "onnx (ONNX Runtime)", "int8": "int8 (ONNX Runtime, int8 graphs)", "torch": "torch"}


def describe_engines(names: list[str], engines: list[str], requested: str, device_type: str) -> str:
    """For the line that starts a run: "engine onnx (ONNX Runtime)", or which members run on which."""
    if len(set(engines)) == 1:
        hint = ("; `quorum export` adds the model.onnx that ONNX Runtime runs faster"
                if engines[0] == "torch" and requested != "torch" and resolve_engine(requested, device_type) != "torch"
                else "")
        return f"engine {ENGINE_NAMES[engines[0]]}{hint}"
    main = max(set(engines), key=engines.count)
    others = [f"{engine} for {', '.join(n for n, e in zip(names, engines) if e == engine)}"
              for engine in ENGINE_NAMES if engine in engines and engine != main]
    hint = " (no current model.onnx: `quorum export` adds it)" if "torch" in engines and main != "torch" else ""
    return f"engine {ENGINE_NAMES[main]}, but {'; '.join(others)}{hint}"
