"""What a predict run is, so that rows of two different runs are never mixed.

Resumed progress and merged shards must come from the same run: the same files of the same folder,
the same members (what of each changes a row on its engine, not just the names) and the options that change a row.
Batch size, device, workers and the number of processes may differ: they do not change a row. The
engine that ran each member may not: ONNX Runtime and torch agree within 1e-4 in probability, so a
near tie can fall the other way (README: "Engines").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from quorum import files
from quorum.data.predictions_csv import paths_digest
from quorum.errors import QuorumError
from quorum.models.bundle import INT8_ONNX, WEIGHTS, ModelInfo

if TYPE_CHECKING:
    from quorum.predict.options import PredictOptions

# Each key, as a person would name it in a message.
LABELS = {"folder": "folder", "files": "number of files", "listing": "file names", "members": "members",
          "classes": "classes", "tie_breaker": "tie-breaker", "lazy": "--lazy", "probs": "--probs",
          "min_agreement": "--min-agreement", "shard": "--shard", "engines": "engine",
          "unknown": "the unknown line (--unknown-keep)", "vote": "the vote:"}
# Which `member_digest` made "members": an identity written by an older quorum (none recorded) hashed all of
# model.json, so its members differ once, for a reason a message can name.
DIGEST = 2


def identity(folder: Path, relative_paths: list[str], infos: list[ModelInfo], options: PredictOptions, *,
             tie_breaker: str, engines: dict[str, str], unknown: dict, vote: dict) -> dict:
    """A plain-JSON description of the run; equal dicts mean interchangeable rows.

    The options that change a row, with those resolved for these members: the tie-breaker's name, each
    member's engine, the unknown line and the vote (the rule, its fitted weights and the TTA views)."""
    return {"folder": str(Path(folder).resolve()), "files": len(relative_paths),
            "listing": paths_digest(relative_paths), "digest": DIGEST,
            "members": {info.path.name: member_digest(info, engines[info.path.name]) for info in infos},
            "classes": list(infos[0].classes), "tie_breaker": tie_breaker, "lazy": options.lazy,
            "probs": options.probs, "min_agreement": options.min_agreement, "shard": str(options.shard),
            "engines": engines, "unknown": unknown, "vote": vote}


def describe_vote(voting: dict) -> str:
    weights = voting["weights"]
    shown = f" ({', '.join(f'{name} {w:.2f}' for name, w in weights.items())})" if weights else ""
    temperature = voting.get("temperature")  # not in a record from before the vote's temperature
    calibrated = f", vote temperature {temperature:.3f}" if temperature is not None else ""
    return f"--vote {voting['rule']}{shown} --tta {voting['tta']}{calibrated}"


def member_digest(info: ModelInfo, engine: str) -> str:
    """Hash of what of a member changes its rows on `engine`: model.json but its `int8` block (a record of the
    int8 graph, which `export --int8` adds or rewrites), the weights, and on int8 the int8 graph itself (exported
    again, it is another graph: from the same weights, so its weights tag alone cannot tell)."""
    fields = {key: value for key, value in info.raw.items() if key != "int8"}
    sha = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for name in (WEIGHTS, INT8_ONNX) if engine == "int8" else (WEIGHTS,):
        try:
            sha.update(bytes.fromhex(files.sha256(info.path / name)))
        except OSError as exc:  # worded as bundle.load_model words it, which would fail next
            raise QuorumError(f"cannot load the weights of {info.path} ({exc.strerror or exc}): "
                              "fine-tune it again") from None
    return sha.hexdigest()[:16]


def difference(one: dict, other: dict, where: tuple[str, str] = ("then", "now"),
               ignore: tuple[str, ...] = ()) -> str | None:
    """The first way two runs differ, in words (`where` says where each was seen), or None if they match."""
    if one.get("digest") != other.get("digest"):
        older = where[0] if one.get("digest") != DIGEST else where[1]
        return f"{older} an older quorum identified the members otherwise: predict those rows again"
    engines_differ = one.get("engines") != other.get("engines")  # then so may the digests: the engine is the why
    for key, label in LABELS.items():
        a, b = one.get(key), other.get(key)
        if key in ignore or a == b:
            continue
        if key == "listing":
            return "the folder's file names differ (the same number of files)"
        if key == "members" and isinstance(a, dict) and isinstance(b, dict) and list(a) == list(b):
            if engines_differ:
                continue
            changed = next(name for name in a if a[name] != b[name])
            if (one.get("engines") or {}).get(changed) == "int8":
                return (f"member {changed} has a different model.json, weights or int8 graph {where[0]} and "
                        f"{where[1]} (fine-tuned, calibrated or exported with --int8 again?)")
            return (f"member {changed} has a different model.json or weights {where[0]} and {where[1]} "
                    "(fine-tuned or calibrated again?)")
        if key == "engines" and isinstance(a, dict) and isinstance(b, dict) and list(a) == list(b):
            changed = next(name for name in a if a[name] != b[name])
            return (f"member {changed} ran on {a[changed]} {where[0]} but on {b[changed]} {where[1]} "
                    "(give the same --engine)")
        if key == "members":
            a, b = ", ".join(a or []), ", ".join(b or [])
        if key == "vote":  # a hand-edited record may lack one: said, not a crash
            a, b = (describe_vote(x) if isinstance(x, dict) else "unrecorded" for x in (a, b))
        if key == "engines":  # other members
            a, b = (", ".join(f"{name} {e}" for name, e in x.items()) if isinstance(x, dict) else "unrecorded"
                    for x in (a, b))
        return f"{label} {a} {where[0]} but {b} {where[1]}"
    return None
