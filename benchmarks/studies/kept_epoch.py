"""Which epoch did best-on-validation keep, and what did the kept model score on test? (issue 19)

    python benchmarks/studies/kept_epoch.py [ROOT]   (default: benchmarks/data/active)

Reads every model bundle under ROOT that has its test predictions beside it (`<model>-test.csv`, the layout
benchmarks/bench_active.py leaves: one Lite0 fine-tuned per draw, ranking, pick and seed, 4 frozen + 4 unfrozen
epochs, 60 validation images) and prints, per kept epoch, how many models kept it and their test accuracy. No
model runs: the bundles' history.csv, model.json and test CSVs are read as they are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where the shared modules are
from common import DATA, kept_epoch, table  # noqa: E402


def kept_epochs(root: Path) -> pd.DataFrame:
    """One row per bundle with a test CSV: kept epoch, epochs run, validation accuracy kept and last, test."""
    rows = []
    for history in sorted(root.rglob("history.csv")):
        model = history.parent
        test_csv = model.parent / f"{model.name}-test.csv"
        if not test_csv.is_file():
            continue
        epochs = pd.read_csv(history)
        test = pd.read_csv(test_csv, keep_default_na=False)
        truth = test["path"].str.split("/").str[0]
        kept = kept_epoch(json.loads((model / "model.json").read_text()))
        rows.append({"model": model.relative_to(root).as_posix(), "kept": kept, "run": len(epochs),
                     "val_kept": epochs["val_accuracy"].iloc[kept - 1], "val_last": epochs["val_accuracy"].iloc[-1],
                     "test": (test["prediction"] == truth).mean()})
    return pd.DataFrame(rows)


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA / "active"
    models = kept_epochs(root)
    if models.empty:
        print(f"no bundle with a <model>-test.csv beside it under {root}")
        return 1
    rows = [[str(epoch), str(len(group)), f"{group['test'].mean():.2%}", f"{group['test'].std(ddof=1):.2%}"
             if len(group) > 1 else "", f"{group['test'].min():.2%}"]
            for epoch, group in models.groupby("kept")]
    last = models["kept"] == models["run"]
    rows.append(["any earlier than the last", str((~last).sum()), f"{models[~last]['test'].mean():.2%}",
                 f"{models[~last]['test'].std(ddof=1):.2%}", f"{models[~last]['test'].min():.2%}"])
    print(f"{len(models)} models under {root}; correlation with test accuracy: validation accuracy of the kept "
          f"epoch {models['val_kept'].corr(models['test']):.2f}, of the last epoch "
          f"{models['val_last'].corr(models['test']):.2f}\n")
    print("\n".join(table(["kept epoch", "models", "test (mean)", "sd", "worst"], rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
