"""Keep pyproject.toml's ``[tool.flwr.app.config]`` equal to the default study.

``flwr run`` only accepts run-config keys that this section declares, and uses its
values as defaults. ``python -m flsuite.config.pyproject_sync`` rewrites the section
from the Hydra default study; a test fails when the two drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

from flsuite.config.bridge import to_run_config
from flsuite.config.compose import compose_study
from flsuite.config.toml_text import toml_scalar

SECTION = re.compile(r"(\[tool\.flwr\.app\.config\]\n)(.*?)(\n\[)", re.S)


def render(run_config: dict) -> str:
    return "\n".join(f"{key} = {toml_scalar(v)}" for key, v in run_config.items()) + "\n"


def sync(pyproject: Path) -> bool:
    """Rewrite the section from the default study; True when the file changed."""
    text = pyproject.read_text()
    body = render(to_run_config(compose_study([])))
    updated = SECTION.sub(lambda m: m.group(1) + body + m.group(3), text, count=1)
    if updated != text:
        pyproject.write_text(updated)
    return updated != text


if __name__ == "__main__":
    changed = sync(Path(__file__).resolve().parents[2] / "pyproject.toml")
    print("pyproject.toml updated" if changed else "pyproject.toml already in sync")
