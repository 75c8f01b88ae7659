"""The package's layers stay visible: each module imports only its own layer and the ones below, modules outside a
stage package use only its public face, and `docs/ARCHITECTURE.md` maps every module (no more, no fewer).

The rules, lowest layer first (docs/ARCHITECTURE.md, "Layers"):

    0 sandbox                      the offline world; imports nothing of the package
    1 runtime                      imports sandbox only
    2 stages                       runtime, sandbox, and other stages' public faces
    3 evaluation, labeling, views  anything below, and each other
    4 workflows                    anything below
    5 the top (package __init__, cli, __main__, accelerate_configs)

Every import counts: at the top of a file, inside a function, and under `if TYPE_CHECKING:` (a type-only import is a
dependency too). A checker that only passes proves nothing, so the last tests break the rules on purpose.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rlhf_widgets"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

LAYERS = {"sandbox": 0, "runtime": 1, "stages": 2, "evaluation": 3, "labeling": 3, "views": 3, "workflows": 4}
TOP = 5
STAGE_PACKAGES = ("rlhf_widgets.stages.ppo", "rlhf_widgets.stages.reward")


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name), the sandbox's assets left out."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if "assets" in rel.parts:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def imports_of(module: str, source: str, known: set[str]) -> list[tuple[str, str, int]]:
    """`(imported module, imported name or "", line)` for every import of the package in `source`: a name that is a
    module of its own counts as that module."""
    is_package = module in known and any(m.startswith(module + ".") for m in known)
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "rlhf_widgets"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "rlhf_widgets":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub, "", node.lineno) if sub in known else (target, alias.name, node.lineno))
    return out


def violations(sources: dict[str, str]) -> list[str]:
    """What breaks the rules in `sources` (dotted module name → its text), one line each."""
    known = set(sources)
    found = []
    for module, source in sorted(sources.items()):
        for target, name, line in imports_of(module, source, known):
            where = f"{module}:{line} imports {target}{'.' + name if name else ''}"
            if target == module:
                continue
            if layer(target) > layer(module):
                found.append(f"{where}: layer {layer(module)} imports layer {layer(target)} (upward)")
            for stage in STAGE_PACKAGES:
                inside_stage = module == stage or module.startswith(stage + ".")
                if target.startswith(stage + ".") and not inside_stage:
                    found.append(f"{where}: a stage's internals (import from {stage} itself)")
            if (layer(target) == LAYERS["stages"] and name.startswith("_") and not name.startswith("__")
                    and target.split(".")[:3] != module.split(".")[:3]):
                found.append(f"{where}: a stage's private name")
    return found


def documented_modules(text: str) -> set[str]:
    """The modules named in the map of docs/ARCHITECTURE.md: the tree in the code block under "Where each concept
    lives", two spaces of indent per level, a directory ending in `/`, several files of one directory may share a
    line (separated by spaces, before the description)."""
    block = text.split("## Where each concept lives", 1)[1].split("```", 2)[1]
    found, stack = set(), []
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        names = []
        for token in line.split():
            if re.fullmatch(r"[\w]+(\.py|/)", token):
                names.append(token)
            else:
                break
        del stack[depth:]
        for token in names:
            if token.endswith("/"):
                stack.append(token[:-1])
                found.add(".".join(stack))
            else:
                found.add(".".join([*stack, token[:-3]]).removesuffix(".__init__"))
    return found


def test_no_module_imports_upward_or_into_a_stages_internals():
    sources = {name: path.read_text() for name, path in module_files().items()}
    assert violations(sources) == []


def test_the_architecture_map_names_every_module_and_no_other():
    modules = set(module_files())
    documented = documented_modules(ARCHITECTURE.read_text())
    assert sorted(modules - documented) == [], "modules the map in docs/ARCHITECTURE.md misses"
    assert sorted(documented - modules) == [], "the map names modules that do not exist"


# The checkers, broken on purpose: each rule fires on a module that breaks it.

@pytest.mark.parametrize(("module", "source", "expected"), [
    ("rlhf_widgets.runtime.precision", "from rlhf_widgets.stages.ppo import PPOConfig", "upward"),
    ("rlhf_widgets.runtime.data", "def f():\n    from rlhf_widgets.views.run_figures import x\n", "upward"),
    ("rlhf_widgets.runtime.data", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from rlhf_widgets.labeling.store import Prompt\n", "upward"),
    ("rlhf_widgets.stages.sft", "import rlhf_widgets.workflows.loop", "upward"),
    ("rlhf_widgets.evaluation.compare", "from rlhf_widgets.stages.ppo.core import gae", "internals"),
    ("rlhf_widgets.workflows.loop", "from rlhf_widgets.stages.reward import model", "internals"),
    ("rlhf_widgets.stages.dpo", "from rlhf_widgets.stages.sft import _private", "private"),
])
def test_the_layer_checker_catches_each_kind_of_break(module, source, expected):
    sources = {m: "" for m in module_files()}
    sources[module] = source
    broken = violations(sources)
    assert len(broken) == 1 and expected in broken[0], broken


def test_the_layer_checker_allows_what_the_rules_allow():
    sources = {m: "" for m in module_files()}
    sources["rlhf_widgets.stages.ppo.trainer"] = "from rlhf_widgets.stages.ppo.core import gae\n" \
                                                 "from rlhf_widgets.stages.reward import as_reward_function"
    sources["rlhf_widgets.evaluation.compare"] = "from rlhf_widgets.labeling import PreferenceStore\n" \
                                                "from rlhf_widgets.views.run_figures import x"
    sources["rlhf_widgets.runtime.data"] = "from rlhf_widgets.sandbox import make_prompts"
    assert violations(sources) == []


def test_the_map_checker_sees_a_missing_and_a_stale_module():
    text = ARCHITECTURE.read_text()
    documented = documented_modules(text)
    assert "rlhf_widgets.runtime.precision" in documented
    line = next(ln for ln in text.splitlines() if ln.lstrip().startswith("precision.py"))
    assert "rlhf_widgets.runtime.precision" not in documented_modules(text.replace(line + "\n", ""))
    stale = text.replace(line + "\n", line + "\n" + line.replace("precision.py", "gone.py") + "\n")
    assert "rlhf_widgets.runtime.gone" in documented_modules(stale)
