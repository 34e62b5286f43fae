"""bench_recipe.py's section of RESULTS.md: tables from the runs' result.json files."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from common import kept_epoch, marked, pct, points, table


def _members(results: dict, votes: dict, lites: list[int], frozen: int, unfrozen: int) -> list[str]:
    tag = f"{frozen}+{unfrozen}"
    rows = []
    for n in lites:
        q, head = results.get(f"quorum-{tag}-lite{n}"), results.get(f"head-{tag}-lite{n}")
        fast = results.get(f"fastai-{tag}-lite{n}")
        if q is None:
            continue
        val = q["val_accuracy"]
        phase = 1 if kept_epoch(q) <= frozen else 2
        row = [f"Lite{n}", pct(val[frozen - 1]), f"{pct(val[frozen])} ({points(val[frozen] - val[frozen - 1])})",
               f"{kept_epoch(q)} (phase {phase})", pct(q["test"]["accuracy"]), f"{q['test']['macro_f1']:.3f}"]
        row += [f"{pct(head['test']['accuracy'])} ({points(q['test']['accuracy'] - head['test']['accuracy'])})"
                if head else "-"]
        row += [f"{pct(fast['test']['accuracy'])} ({points(q['test']['accuracy'] - fast['test']['accuracy'])})"
                if fast else "-", f"{fast['test']['macro_f1']:.3f}" if fast else "-"]
        row += [f"{q['seconds']:.0f} / {fast['seconds']:.0f}" if fast else f"{q['seconds']:.0f} / -"]
        rows.append(row)
    header = ["member", f"val, epoch {frozen} (frozen)", f"val, epoch {frozen + 1} (unfrozen)", "best epoch",
              "quorum test", "quorum F1", "head only (quorum vs it)", "fastai test (quorum vs it)", "fastai F1",
              "train s quorum / fastai"]
    lines = [f"### {tag}: {frozen} frozen + {unfrozen} unfrozen epochs", ""] + table(header, rows)
    not_run = [f"{system} Lite{n}" for system in ("quorum", "fastai") for n in lites
               if f"{system}-{tag}-lite{n}" not in results]
    if not_run:
        lines += [f"Not run at {tag}: {', '.join(not_run)}.", ""]
    vote_rows = []
    for system, prefix in (("quorum", f"quorum-{tag}"), ("quorum, head only (its phase 1)", f"head-{tag}"),
                           ("fastai", f"fastai-{tag}")):
        members = [results.get(f"{prefix}-lite{n}") for n in lites]
        if prefix not in votes or not all(members):
            continue
        best = max(members, key=lambda r: r["test"]["accuracy"])
        vote = votes[prefix]
        vote_rows.append([system, f"{pct(best['test']['accuracy'])} (Lite{best['lite']})", pct(vote["accuracy"]),
                          points(vote["accuracy"] - best["test"]["accuracy"]), f"{vote['macro_f1']:.3f}"])
    return lines + table(["system", "best member, test", "vote of 3, test", "vote - best", "vote F1"], vote_rows)


def render(results: dict, votes: dict, loaded: dict | None, lites: list[int], command: str, minutes: float) -> str:
    budgets = sorted({(r["frozen"], r["unfrozen"]) for r in results.values()
                      if r["system"] == "quorum" and r["unfrozen"] > 0 and "norm_stats" not in r["fields"]})
    lines = ["## Recipe: quorum's two phases against fastai's fine_tune (Fashion-MNIST, real weights)", "",
             (f"`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {minutes:.0f} min (runs finished "
              "earlier are reused, not timed again); "
              f"load average {os.getloadavg()[0]:.1f} at the end (seconds compare only between runs made at a "
              "similar load; each run's is in its result.json, and the note below says when they ran). "
              "Data: 100 Fashion-MNIST train images per class, "
              "quorum's 80/20 split (800 train, 200 val) used by both systems, a disjoint test set of 2,000; "
              "EfficientNet-Lite0/1/2 ImageNet weights from ../shared/weights at 96 px, batch 32, one thread "
              "per run. quorum keeps its best epoch by val accuracy; fastai keeps its last. Test = accuracy on "
              "the 2,000 test images; F1 = macro F1; the change at the unfreeze is in points."), ""]
    for frozen, unfrozen in budgets:
        lines += _members(results, votes, lites, frozen, unfrozen)
    old = [r for r in results.values() if r["fields"].get("norm_stats") == "update"]
    for r in old:
        f = r["frozen"]
        val = " ".join(pct(v) for v in r["val_accuracy"])
        lines += [("The old switch (`--norm-stats update`: BatchNorm on batch statistics once unfrozen), "
                   f"Lite{r['lite']} "
                   f"{f}+{r['unfrozen']}: val per epoch {val}; best epoch {kept_epoch(r)}; test "
                   f"{pct(r['test']['accuracy'])}."), ""]
    if loaded:
        idle = loaded["idle"]["seconds"]
        rows = [[label, f"{r['seconds']:.0f}", f"{r['load_start']:.1f}", f"{r['seconds'] / idle:.2f}x"]
                for label, r in loaded.items()]
        lines += [("Under load: `quorum finetune timm/tf_efficientnet_lite0 --image-size 96 --epochs 5 "
                   "--unfreeze-after 4` (2 loader workers, quorum's own threads), idle and beside one busy "
                   "process (`python -c 'while True: pass'`); old settings = OpenMP's default waiting and a "
                   "torch thread per core, as quorum ran before."), ""]
        lines += table(["run", "seconds", "load average at start", "vs idle"], rows)
    return marked("bench_recipe", lines)
