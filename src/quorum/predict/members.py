"""The members of a vote: which models, checked against each other before any weights load, then loaded.

A member is named by its folder under the models dir: that is what `--model` and `--tie-breaker`
take and what the CSV's member columns are called.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from quorum.errors import QuorumError
from quorum.models.bundle import ModelInfo, find_models, load_model, read_info
from quorum.models.classifier import count_parameters
from quorum.models.inference import TorchInference
from quorum.predict.vote import default_tie_breaker


@dataclass(frozen=True)
class Member:
    name: str
    info: ModelInfo
    run: TorchInference  # uint8 pixels -> probabilities
    cost: float  # parameters x input pixels: a cheap stand-in for FLOPs, to run cheap members first


def select_models(models_dir: Path, names: tuple[str, ...] | list[str] = ()) -> list[Path]:
    """The folders of the models named (in that order), or of every model in `models_dir` (by name)."""
    models_dir = Path(models_dir)
    available = {path.name: path for path in find_models(models_dir)}
    if not names:
        if not available:
            raise QuorumError(f"no models in {models_dir}: fine-tune one with `quorum finetune BACKBONE` "
                              "or point --models-dir at a folder of models")
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
    """The member named `name`, or by default the one with the best validation accuracy (first on a tie)."""
    names = [info.path.name for info in infos]
    if name is None:
        return default_tie_breaker([info.val_accuracy for info in infos])
    if name not in names:
        raise QuorumError(f"--tie-breaker {name} is not one of the members: choose from {', '.join(names)}")
    return names.index(name)


def load_members(infos: list[ModelInfo], device: torch.device) -> list[Member]:
    members = []
    for info in infos:
        model, _ = load_model(info.path, device)
        cost = float(count_parameters(model)) * info.image_size**2
        members.append(Member(info.path.name, info, TorchInference(model, info.preprocessing, device, channels_last=True),
                              cost))
    return members
