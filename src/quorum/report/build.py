"""`quorum report`: score every model and their vote, and lay the numbers out as one comparison.

1. Predictions: each model's stored validation predictions (the default), or every model run now
   on a labelled folder (`data`). Stored ones are stacked into a vote only if every model was
   validated on the same images; otherwise each model is scored alone and the reason is noted.
2. Scores: `metrics.classification_metrics` for each model and for `vote.vote` of them all.
3. The table: one row per model plus the ensemble, with size and measured time per image, the engine
   each row was timed on and its kind (a member, a student distilled from an ensemble, the vote); and a row
   per int8 graph (`quorum export --int8`), so what int8 costs and saves reads beside its float32 model.
This module computes; `report.html.write_report` writes the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from quorum import files
from quorum.console import console, say
from quorum.errors import QuorumError
from quorum.models import onnx_export
from quorum.models.bundle import HISTORY, INT8_ONNX, WEIGHTS, ModelInfo
from quorum.predict.members import read_members, select_models, tie_breaker_index
from quorum.predict.table import expected_on_folder
from quorum.predict.validation import fitted_vote_temperature, fitted_weights
from quorum.predict.vote import MAJORITY_RULE, WEIGHTED, check_rule
from quorum.report.gallery import review_gallery, wrong_gallery
from quorum.report.reliability import Reliability, reliability
from quorum.report.rules import compare_rules
from quorum.report.scores import (
    describe_predictions,
    ensemble_scores,
    member_scores,
    scores,
)
from quorum.report.sources import (
    Labelled,
    check_labels_match,
    check_preds_classes,
    mismatch,
    read_labels,
    read_preds,
    read_validation,
    run_again,
    run_on_folder,
    stack_validation,
)
from quorum.report.validation_trust import trust

ENSEMBLE = "ensemble"
INT8 = " (int8)"  # an int8 graph's row: its model's name and this


@dataclass
class Report:
    infos: list[ModelInfo]
    source: str  # which images the scores are on
    members: dict[str, dict]  # name -> classification_metrics
    ensemble: dict | None  # scores.ensemble_scores, or None with the reason in `notes`
    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)
    preds: dict | None = None  # scores.describe_predictions of a predict CSV
    trust: pd.DataFrame | None = None  # predict.trust_table.trust_table of the vote where labels are known
    curve: pd.DataFrame | None = None  # predict.trust_table.coverage_curve of the same
    galleries: dict = field(default_factory=dict)  # gallery tiles: "review" and "wrong", with "*_note"
    reliability: dict[str, Reliability] = field(default_factory=dict)  # per model and `ensemble`: ECE, curves
    rules: dict | None = None  # report.rules.compare_rules: every vote rule on the same images
    int8: dict[str, dict] = field(default_factory=dict)  # "<model> (int8)" -> int8_scores' row

    @property
    def names(self) -> list[str]:
        return [info.path.name for info in self.infos]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.infos[0].classes

    def as_dict(self) -> dict:
        return {"source": self.source, "classes": list(self.classes), "notes": self.notes,
                "models": self.members, "ensemble": self.ensemble,
                "summary": self.table.astype(object).where(self.table.notna(), None).to_dict(orient="records"),
                "int8": self.int8, "preds": self.preds, "rules": self.rules, "trust": None if self.trust is None else
                self.trust.astype(object).where(self.trust.notna(), None).to_dict(orient="records")}


def build_report(models_dir: Path = Path("models"), names: tuple[str, ...] = (), tie_breaker: str | None = None,
                 data: Path | None = None, preds: Path | None = None, labels: Path | None = None,
                 device: str = "auto", engine: str = "auto", timing: bool = True, workers: int = 2,
                 quiet: bool = False, rule: str = MAJORITY_RULE, tta: int = 1) -> Report:
    """Everything `quorum report` shows, computed; nothing is written. `rule` scores the ensemble row;
    every rule is compared in `Report.rules`. `tta`: views per image and member (with it, the validation
    images are run again: the stored predictions have one view). The members run on `engine` (int8 as onnx:
    each int8 graph gets a row of its own, beside its float32 model's, whatever the engine)."""
    if labels is not None and preds is None:
        raise QuorumError("--labels holds the true labels of a --preds CSV: add --preds PREDICTIONS.csv")
    check_rule(rule)
    infos = read_members(select_models(models_dir, names))
    member_names = [info.path.name for info in infos]
    tie = tie_breaker_index(infos, tie_breaker)
    weights = fitted_weights(infos) if rule == WEIGHTED else None  # predict's own: from the validation split
    notes: list[str] = []
    # A wrong --preds should fail before any model runs.
    preds_frame, preds_part = (read_preds_part(Path(preds), labels, infos[0].classes) if preds is not None
                               else (None, None))
    # Said at once: the slow parts below (running models, timing them) would otherwise be silence.
    say(escape(f"Reporting on {len(infos)} model{'s' * (len(infos) != 1)} in {models_dir}: {', '.join(member_names)} "
               f"(tie-breaker {member_names[tie]})"), quiet)

    members = _Members(infos, device, engine, quiet)  # loaded once, for --data and timing alike
    int8_run = None  # the int8 graphs' probabilities where the models run now
    if data is not None:
        say(escape(f"Running every model on every image of {data}"), quiet)
        labelled = run_on_folder(Path(data), members.all(), tie, members.device, workers=workers, quiet=quiet, tta=tta)
        labelled, int8_run = split_int8(labelled, len(infos))
        source, metrics = labelled.source, member_scores(labelled, member_names, infos[0].classes)
        if labelled.skipped:
            notes.append(f"{labelled.skipped} unreadable file(s) in {data} were left out of every score")
    else:
        labelled, source, metrics = validation_scores(infos, notes)
        if tta > 1:
            if labelled is None or labelled.root is None:
                raise QuorumError(f"--tta {tta} runs the models again on the shared validation split, and "
                                  f"{'there is none' if labelled is None else 'its folder is not recorded'}: "
                                  "give the labelled images with --data")
            say(escape(f"Running every model on the {len(labelled.paths)} validation images, {tta} views each"), quiet)
            labelled = run_again(labelled, members.all(), tie, members.device, workers=workers, quiet=quiet, tta=tta)
            labelled, int8_run = split_int8(labelled, len(infos))
            source, metrics = labelled.source, member_scores(labelled, member_names, infos[0].classes)

    ensemble = None
    if len(infos) == 1:
        notes.append(f"only one model ({member_names[0]}): there is no vote to score; "
                     "fine-tune another with quorum finetune to compare an ensemble")
    elif labelled is not None:
        accuracies = [info.val_accuracy for info in infos]
        ensemble = ensemble_scores(labelled, member_names, infos[0].classes, tie, accuracies, rule, weights)
        if rule != MAJORITY_RULE:
            notes.append(f"the ensemble row votes by --vote {rule}"
                         + (" with weights fitted on the validation split: scored there, it is flattered (the rules "
                            "table cross-fits them)" if rule == WEIGHTED and data is None else ""))

    report = Report(infos, source, metrics, ensemble, pd.DataFrame(), notes, read_histories(infos, notes),
                    preds_part)
    report.int8 = int8_scores(members.int8_infos, metrics, int8_run)
    if report.int8 and int8_run is None:
        notes.append("int8 rows: each int8 graph's accuracy on its model's validation split, as quorum export --int8 "
                     "recorded it (model.json's int8); `vs float32` is against the float32 graph on the same images")
    if labelled is not None:  # the probabilities are calibrated ones: ECE with and without the temperatures
        from quorum.models.temperature import temperature

        report.reliability = reliability(labelled, member_names, [temperature(info, quiet) for info in infos],
                                         tie if ensemble is not None else None, rule, weights,
                                         fitted_vote_temperature(infos, rule, weights))
    if ensemble is not None:
        report.rules = compare_rules(labelled, tie, infos[0].classes, rules_weights(infos, data, notes))
        report.trust, report.curve = trust(labelled, tie)
        report.galleries["wrong"], report.galleries["wrong_note"] = wrong_gallery(labelled, member_names,
                                                                                  infos[0].classes, tie)
    if preds_part is not None:
        report.galleries["review"], report.galleries["review_note"] = review_gallery(
            Path(preds), preds_frame, preds_part["review"], preds_part["members"])
        preds_part["folder_check"] = folder_check(Path(preds), preds_frame, infos)
        if sorted(preds_part["members"]) != sorted(member_names):
            notes.append(f"--preds was voted by {', '.join(preds_part['members']) or 'no member'}, not by the "
                         f"models reported here ({', '.join(member_names)}): its figures are that run's")
        elif report.trust is not None:
            report.trust = expected_on_folder(preds_frame, preds_part["members"], report.trust)
        ran, rows = preds_part["ran"], preds_part["rows"] - len(preds_part["errors"])
        partly = {name: count for name, count in ran.items() if count < rows}
        if partly and "scores" in preds_part:
            notes.append("--preds is a --lazy run: each member is scored only on the rows where it ran ("
                         + ", ".join(f"{name} on {count} of {rows}" for name, count in partly.items())
                         + "), so its accuracy there is not comparable with the others'")
    if timing:
        say("Timing each model on this machine (a few seconds each; --no-timing skips this)", quiet)
    seconds = measure_times(members.all(), members.device.type == "cpu", quiet, notes) if timing else {}
    if not timing:
        notes.append("time per image was not measured (--no-timing)")
    report.table = summary_table(report, seconds, members.engines())
    return report


def folder_check(preds: Path, frame: pd.DataFrame, infos: list[ModelInfo]) -> list[str]:
    """predict's folder check (is the --preds folder like the labelled one?), where both folders are here."""
    from quorum.data.predictions_csv import read_sidecar, sidecar
    from quorum.predict.folder_check import compare, labelled_root

    try:
        folder = read_sidecar(preds, frame["path"].tolist())["folder"]
        frame.attrs["unknown"] = json.loads(sidecar(preds).read_text()).get("unknown")
    except (QuorumError, OSError, ValueError):
        return []
    return compare(frame, folder, labelled_root([info.path for info in infos]))


def rules_weights(infos: list[ModelInfo], data: Path | None, notes: list[str]) -> list[float] | None:
    """The weighted rule's weights for the rules table on --data (predict's, from the validation split);
    None (cross-fitted) on the validation split itself, or where the members share no split."""
    if data is None:
        return None
    try:
        return fitted_weights(infos)
    except QuorumError as exc:
        notes.append(f"rules table: {exc}; its weighted row is cross-fitted on --data instead")
        return None


def read_preds_part(preds: Path, labels: Path | None, classes) -> tuple[pd.DataFrame, dict]:
    frame, names = read_preds(preds)
    check_preds_classes(frame, preds, classes)
    truth = read_labels(labels) if labels is not None else None
    if truth is not None:
        check_labels_match(truth, frame, labels, preds)
    return frame, {"file": str(preds), **describe_predictions(frame, names, classes, truth)}


def validation_scores(infos: list[ModelInfo], notes: list[str]) -> tuple[Labelled | None, str, dict]:
    """Each model on its stored validation predictions; stacked for the vote when they share the images."""
    runs = [read_validation(info) for info in infos]
    own = {info.path.name: scores(run.y_true, run.probs.argmax(axis=1), info.classes) for info, run in zip(infos, runs)}
    reason = mismatch(infos, runs) if len(infos) > 1 else None
    if reason is None:
        labelled = stack_validation(infos, runs)
        return labelled, labelled.source, own
    notes.append(f"{reason}: the ensemble is not scored on validation predictions. Score every model on one "
                 "labelled folder with --data, or fine-tune them again so they share models/split.csv")
    return None, "each model's own validation images", own


# What the training curves draw from each history.csv.
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy"]


def read_histories(infos: list[ModelInfo], notes: list[str]) -> dict[str, pd.DataFrame]:
    """Each model's history.csv; one that is broken (emptied, edited) is left out of the curves with a note."""
    histories = {}
    for info in infos:
        path = info.path / HISTORY
        if not path.is_file():
            continue
        try:
            history = files.read_csv(path)
            numbers = history[HISTORY_COLUMNS].apply(pd.to_numeric, errors="raise")
        except (KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            notes.append(f"{path} is broken (it needs the columns {', '.join(HISTORY_COLUMNS)}): "
                         f"{info.path.name}'s training curves are left out")
            continue
        histories[info.path.name] = history.assign(**numbers)
    return histories


def split_int8(labelled: Labelled, n_members: int) -> tuple[Labelled, Labelled]:
    """A run of the members followed by their int8 graphs, as two: the members' (the vote's) and the graphs'."""
    return replace(labelled, probs=labelled.probs[:n_members]), replace(labelled, probs=labelled.probs[n_members:])


def int8_scores(infos: list[ModelInfo], metrics: dict[str, dict], run: Labelled | None) -> dict[str, dict]:
    """Per int8 graph: its scores on the images of `run` (the graphs run now), else the validation accuracy
    `quorum export --int8` recorded; `vs_float32`: its accuracy less its float32 model's on the same images."""
    names = [info.path.name for info in infos]
    if run is not None:
        found = member_scores(run, names, infos[0].classes) if infos else {}
        return {name + INT8: {"model": name, "metrics": found[name],
                              "vs_float32": found[name]["accuracy"] - metrics[name]["accuracy"]} for name in names}
    scores = {}
    for info, name in zip(infos, names):
        recorded = info.raw["int8"]
        accuracy = recorded["val_accuracy_int8"]
        scores[name + INT8] = {"model": name, "vs_float32": accuracy - recorded["val_accuracy_fp32"],
                               "metrics": {"accuracy": accuracy, "balanced_accuracy": None, "macro_f1": None,
                                           "images": metrics[name]["images"]}}
    return scores


class _Members:
    """The members on their engine, and the int8 graphs of those that have a current one, loaded on first use:
    a report from stored predictions with --no-timing loads no model at all."""

    def __init__(self, infos: list[ModelInfo], device: str, engine: str, quiet: bool):
        # The int8 graphs have rows of their own: with --engine int8 the members' rows are their float32 graphs.
        self.infos, self.requested, self.quiet = infos, device, quiet
        self.engine = "onnx" if engine == "int8" else engine
        self.int8_infos = [info for info in infos if info.raw.get("int8")
                           and onnx_export.is_current(info.path, graph=INT8_ONNX)]
        self.members, self.int8, self.device = None, [], None

    def get(self):
        if self.members is None:
            from quorum.device import pick_device
            from quorum.models.engine import device_for_engine
            from quorum.models.inference import engine_threads
            from quorum.predict.members import load_members, member_engines

            self.device = pick_device(device_for_engine(self.engine, self.requested))
            engines = member_engines(self.infos, self.engine, self.device.type, self.quiet)
            self.members = load_members(self.infos, self.device, engines, threads=engine_threads())
            int8 = load_members(self.int8_infos, self.device, ["int8"] * len(self.int8_infos), threads=engine_threads())
            self.int8 = [replace(member, name=member.name + INT8) for member in int8]
        return self.members

    def all(self):
        """The members, then the int8 graphs (named `<model> (int8)`)."""
        return self.get() + self.int8

    def engines(self) -> dict[str, str]:
        """What runs each member and int8 graph, by name; nothing where none was loaded."""
        return {member.name: member.engine for member in self.members + self.int8} if self.members else {}


def measure_times(members: list, on_cpu: bool, quiet: bool, notes: list[str]) -> dict[str, float]:
    """Seconds per image of each member, on the engine predict runs it on; a note when the machine was busy."""
    from quorum.report.timing import busy_cpu, seconds_per_image

    timings = seconds_per_image(members)
    busy = busy_cpu(timings) if on_cpu else None
    if busy:
        notes.append(f"{busy} while the models were timed: their times per image may be inflated; "
                     "run quorum report again when the machine is idle")
    return timings.seconds


def summary_table(report: Report, seconds: dict[str, float], engines: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per model, one per int8 graph, then the ensemble's (its cost: every member runs on every image).
    `engines`: what timed each row (Member.engine, by name)."""
    preds_scores = (report.preds or {}).get("scores", {})
    engines = engines or {}
    rows = []
    for info in report.infos:
        name, metrics = info.path.name, report.members[info.path.name]
        rows.append({**_model_columns(info, info.path / WEIGHTS), **_headline(metrics), **_ece(report, name),
                     "ms_per_image": _ms(seconds.get(name)), "engine": engines.get(name), "kind": _kind(info),
                     "preds_accuracy": preds_scores.get(name, {}).get("accuracy")})
    members = pd.DataFrame(rows)
    infos = {info.path.name: info for info in report.infos}
    for name, scored in report.int8.items():
        info = infos[scored["model"]]
        rows.append({**_model_columns(info, info.path / INT8_ONNX), "model": name, **_headline(scored["metrics"]),
                     "ece_raw": None, "ece": None, "ms_per_image": _ms(seconds.get(name)), "engine": "int8",
                     "kind": _kind(info), "vs_float32": scored["vs_float32"]})
    if report.ensemble is not None:
        total = lambda column: members[column].sum(min_count=len(members))  # noqa: E731 (None if any is missing)
        rows.append({"model": ENSEMBLE, "backbone": f"vote of {len(members)}", "image_size": None,
                     "parameters": total("parameters"), "size_mb": total("size_mb"),
                     **_headline(report.ensemble["metrics"]), **_ece(report, ENSEMBLE),
                     "ms_per_image": total("ms_per_image") if seconds else None,
                     "engine": ", ".join(dict.fromkeys(members["engine"].dropna())) or None, "kind": "vote",
                     "preds_accuracy": preds_scores.get(ENSEMBLE, {}).get("accuracy")})
    table = pd.DataFrame(rows).astype({"image_size": "Int64", "parameters": "Int64", "images": "Int64"})
    if "vs_float32" in table:  # after the columns every table has
        table = table[[column for column in table if column != "vs_float32"] + ["vs_float32"]]
    return table.drop(columns=["preds_accuracy"]) if not preds_scores else table


def _model_columns(info: ModelInfo, graph: Path) -> dict:
    """What a row says about the model itself; `graph`: the file whose size it is (weights, or the int8 graph)."""
    return {"model": info.path.name, "backbone": info.backbone, "image_size": info.image_size,
            "parameters": info.raw.get("num_params"),
            "size_mb": graph.stat().st_size / 1e6 if graph.is_file() else None}


def _kind(info: ModelInfo) -> str:
    """A student (`finetune --distill`) learned an ensemble's probabilities; any other model is a member."""
    return "student" if info.raw.get("distill") else "member"


def best_name(accuracies: dict[str, float]) -> str | None:
    """The model (or the ensemble) with the best accuracy; a tie goes to the ensemble, the one to use."""
    scored = {name: value for name, value in accuracies.items() if value is not None and not pd.isna(value)}
    return max(scored, key=lambda name: (scored[name], name == ENSEMBLE)) if scored else None


def _headline(metrics: dict) -> dict:
    return {key: metrics[key] for key in ("accuracy", "balanced_accuracy", "macro_f1", "images")}


def _ece(report: Report, name: str) -> dict:
    found = report.reliability.get(name)
    return {"ece_raw": found.ece_raw if found else None, "ece": found.ece if found else None}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def print_table(report: Report, quiet: bool = False) -> None:
    """The comparison, on stderr, with the notes that qualify it."""
    if quiet:
        return
    table = Table(title=escape(f"Scored on {report.source}"), title_justify="left")
    headers = {"model": "model", "backbone": "backbone", "image_size": "size", "parameters": "params",
               "size_mb": "MB", "accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro F1",
               "ece_raw": "ECE raw", "ece": "ECE", "ms_per_image": "ms/image", "engine": "engine", "kind": "kind",
               "preds_accuracy": "acc. on --preds", "vs_float32": "vs float32"}
    columns = [column for column in headers if column in report.table.columns]
    for column in columns:
        table.add_column(headers[column], justify="left" if column in ("model", "backbone") else "right")
    best = best_name(dict(zip(report.table["model"], report.table["accuracy"])))
    for row in report.table.to_dict(orient="records"):
        table.add_row(*(escape(format_cell(column, row[column])) for column in columns),
                      style="bold" if row["model"] == best else None)
    # A log file or pipe gets whole rows, not the 80 columns rich assumes there.
    out = console if console.is_terminal else Console(file=console.file, width=160, highlight=False)
    out.print(table)
    if report.rules is not None:
        rules = report.rules
        say(escape("Vote rules: " + "; ".join(f"{rule} {row['accuracy']:.1%} (F1 {row['macro_f1']:.3f}, ECE "
                                                f"{row['ece']:.3f})" for rule, row in rules["rules"].items())
                   + f"; ceiling {rules['ceiling']:.1%}. Recommended: {rules['advice']}"))
    for note in report.notes:
        say(f"[yellow]{escape(note)}[/yellow]")


def format_cell(column: str, value) -> str:
    """How a summary value reads in the terminal and the HTML page."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return "-"
    if column in ("accuracy", "balanced_accuracy", "preds_accuracy"):
        return f"{value:.1%}"
    if column == "vs_float32":
        return f"{100 * value:+.1f} points"
    formats = {"macro_f1": "{:.3f}", "ece_raw": "{:.3f}", "ece": "{:.3f}", "parameters": "{:,.0f}",
               "size_mb": "{:.1f}", "ms_per_image": "{:.1f}",
               "image_size": "{:.0f}"}
    return formats[column].format(value) if column in formats else str(value)
