"""`predict --shard I/N`: one share of a folder per job (SLURM job arrays, Kubernetes indexed jobs); `merge`.

1. Shard I of N is every N-th file of the sorted file list, starting at file I, with I counted from 0
   as SLURM_ARRAY_TASK_ID (--array=0-<N-1>) and JOB_COMPLETION_INDEX count. Strided shares differ by
   at most one file and each samples the whole folder, so no job gets all of one slow sub-folder.
2. Row k of shard I is file I + k*N: that is how `merge` puts the rows back in the folder's order.
3. Beside each part, `<part>.json` says which run and shard it holds (`run_identity`), so merge can
   refuse parts of different runs and name a missing or repeated shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from quorum.data.predictions_csv import paths_digest
from quorum.errors import QuorumError
from quorum.predict import run_identity
from quorum.predict.options import WHOLE, Shard, parse_shard
from quorum.predict.table import (
    assemble,
    columns,
    member_columns,
    read_predictions,
    sidecar,
)


def check_out(out: Path, parts: list[Path]) -> None:
    """The merged CSV never replaces a part (by any spelling or link): until it is written, a part holds the
    run's only copy of its rows."""
    if any(Path(out).resolve() == Path(part).resolve() for part in parts):
        raise QuorumError(f"--out {out} is one of the parts being merged: choose another --out")


def merge(parts: list[Path]) -> pd.DataFrame:
    """The parts of one sharded run joined into the table one run over the whole folder gives."""
    parts = [Path(part) for part in parts]
    described = {part: _read_sidecar(part) for part in parts}
    first, run = parts[0], described[parts[0]]["run"]
    count = parse_shard(run["shard"]).count
    by_index: dict[int, Path] = {}
    for part, info in described.items():
        shard = parse_shard(info["run"]["shard"])
        if shard.count != count:
            raise QuorumError(f"{part} is shard {shard} but {first} is shard {run['shard']}: "
                              "merge the parts of one run")
        differs = run_identity.difference(run, info["run"], (f"in {first}", f"in {part}"), ignore=("shard",))
        if differs:
            raise QuorumError(f"{part} and {first} come from different runs: {differs}")
        if shard.index in by_index:
            raise QuorumError(f"shard {shard} is given twice: {by_index[shard.index]} and {part}")
        by_index[shard.index] = part
    missing = [index for index in range(count) if index not in by_index]
    if missing:
        raise QuorumError(f"missing shard {missing[0]} of {count} (have {', '.join(map(str, sorted(by_index)))}): "
                          f"run `quorum predict {run['folder']} --shard {missing[0]}/{count}` and merge again")
    names = list(run["members"])
    tables = [_read_part(by_index[index], Shard(index, count), described[by_index[index]], run)
              for index in range(count)]
    frame = assemble(tables, list(range(run["files"])), names)
    fingerprints = [""] * run["files"]  # the parts' own: the folder may not be on this machine
    for index in range(count):
        for position, value in zip(Shard(index, count).positions(run["files"]),
                                   described[by_index[index]].get("fingerprints", [])):
            fingerprints[position] = value
    frame.attrs.update(members=names, tie_breaker=run["tie_breaker"], min_agreement=run["min_agreement"],
                       lazy=run["lazy"], folder=run["folder"], fingerprints=fingerprints, unknown=run.get("unknown"),
                       identity={**run, "shard": str(WHOLE)}, vote=run.get("vote"))
    return frame


def _read_sidecar(part: Path) -> dict:
    try:
        info = json.loads(sidecar(part).read_text())
        parse_shard(info["run"]["shard"])
        return info
    except (OSError, ValueError, KeyError, TypeError, QuorumError):
        raise QuorumError(f"{part} has no readable {sidecar(part).name} beside it: only CSVs written by "
                          "`quorum predict --shard I/N` can be merged") from None


def _read_part(part: Path, shard: Shard, info: dict, run: dict) -> pd.DataFrame:
    """A part's rows, indexed by their positions in the whole file list, checked against its sidecar."""
    names = list(run["members"])
    table = read_predictions(part, names)
    expected = columns(names, tuple(run["classes"]), run["probs"], run["min_agreement"] is not None)
    positions = shard.positions(run["files"])
    if (table.columns.tolist() != expected or len(table) != len(positions)
            or paths_digest(table["path"].tolist()) != info["paths"]):
        raise QuorumError(f"{part} is not the CSV its {sidecar(part).name} describes (edited or replaced?): "
                          f"predict shard {shard} again")
    labels = table[["prediction", *(member_columns(name)[0] for name in names)]].to_numpy().ravel()
    unknown = sorted({label for label in labels if label is not None} - set(run["classes"]))
    if unknown:
        raise QuorumError(f"{part} has label(s) the members do not have ({', '.join(map(repr, unknown[:3]))}; their "
                          f"classes: {', '.join(run['classes'])}): edited? predict shard {shard} again")
    table.index = positions
    return table
