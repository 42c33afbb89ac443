"""The README's pyDVL install recipe and the CI script that runs it stay the same commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using pyDVL side by side", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the section needs a ```bash block with the recipe"
    return [
        shlex.split(line)[2:] for line in block[1].splitlines() if line.startswith("pip install")
    ]


def _script_array(name: str, script: str) -> list[str]:
    found = re.search(rf"^{name}=\((.*?)\)$", script, re.M)
    assert found is not None, f"{name}=(...) not found in .ci/pydvl_env.sh"
    return shlex.split(found[1])


def test_ci_builds_the_pydvl_environment_with_the_readme_recipe() -> None:
    script = (ROOT / ".ci" / "pydvl_env.sh").read_text()
    torch_step, recipe = _readme_commands()
    assert torch_step == ["torch==2.13.0"]
    assert recipe == _script_array("RECIPE", script)
    assert 'step "torch==2.13.0"\n    step "${RECIPE[@]}"' in script
    assert "numpy<2" in recipe and "pydvl[influence]==0.10.0" in recipe
    assert recipe[-2:] == ["-e", ".[torch]"]
    assert _script_array("CONSTRAINTS", script) == ["torch==2.13.0"]
