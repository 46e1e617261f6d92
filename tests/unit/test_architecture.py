"""The house rules, pinned: pure modules stay pure, Flower's internals stay in one package,
each package exports what it lists, and nothing reaches around a package's facade.

The rules read the source (ast) or import modules in a fresh interpreter, so they hold
for the code as written, not for what one test happened to import first.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARY = REPO / "flsuite"

#: Pure modules: config schema, the contract, privacy math and ledger, the audit chain,
#: the secure-aggregation core, the storage layer. They must import neither torch nor flwr.
PURE_MODULES = [
    "flsuite.config.schema",
    "flsuite.config.app_paths",
    "flsuite.protocol",
    "flsuite.errors",
    "flsuite.privacy.accounting",
    "flsuite.privacy.budget",
    "flsuite.privacy.plan",
    "flsuite.privacy.schedule",
    "flsuite.privacy.events",
    "flsuite.privacy.ledger",
    "flsuite.audit",
    "flsuite.secagg",
    "flsuite.registry.auditor",
    "flsuite.registry.html_report",
    "flsuite.registry.report_plots",
]

#: Flower's public API; everything else of flwr is private and belongs in flsuite/flower/.
PUBLIC_FLOWER = ("flwr.app", "flwr.serverapp", "flwr.clientapp")
PRIVATE_FLOWER_NAMES = ("_run_simulation", "TaskIdentity", "__dict__")


def library_modules() -> list[Path]:
    return sorted(path for path in LIBRARY.rglob("*.py") if "__pycache__" not in path.parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import statement in the file, top level or nested."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def package_of(module: str) -> str:
    """The top package under flsuite a module belongs to (flsuite.site.handlers -> flsuite.site)."""
    parts = module.split(".")
    return ".".join(parts[:2])


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_neither_torch_nor_flwr(module):
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'flwr', 'opacus')); "
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} pulls in {result.stdout.strip()[:200]}"


def test_only_the_flower_package_touches_flower_internals():
    offenders = []
    for path in library_modules():
        if path.is_relative_to(LIBRARY / "flower"):
            continue
        for module, _ in imports(path):
            if module.split(".")[0] == "flwr" and not module.startswith(PUBLIC_FLOWER) and module != "flwr":
                offenders.append(f"{path.relative_to(REPO)}: imports {module}")
        text = path.read_text()
        offenders += [f"{path.relative_to(REPO)}: uses {name}" for name in PRIVATE_FLOWER_NAMES[:2] if name in text]
        if "metadata.__dict__" in text:
            offenders.append(f"{path.relative_to(REPO)}: writes Message metadata")
    assert offenders == []


def test_the_library_never_imports_the_apps():
    offenders = [
        f"{path.relative_to(REPO)}: imports {module}"
        for path in library_modules()
        for module, _ in imports(path)
        if module.split(".")[0] in ("clients", "server")
    ]
    assert offenders == []


def test_no_record_key_or_error_code_is_spelled_outside_the_protocol():
    literals = ('"num-examples"', '"arrays"', '"train-loss"', '"noise-multiplier"', '"server-round"', "4100", "4101", "4200")
    offenders = [
        f"{path.relative_to(REPO)}: {literal}"
        for path in [*library_modules(), REPO / "clients" / "app.py", REPO / "server" / "app.py"]
        if path.name != "protocol.py"
        for literal in literals
        if literal in path.read_text()
    ]
    assert offenders == []


def packages() -> list[str]:
    return sorted(module_name(path) for path in LIBRARY.glob("*/__init__.py"))


@pytest.mark.parametrize("package", packages())
def test_each_package_lists_what_it_exports(package):
    module = importlib.import_module(package)
    assert module.__doc__, f"{package} has no docstring saying what it is for"
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{package} has no __all__"
    assert len(set(exported)) == len(exported), f"{package}.__all__ repeats a name"
    for name in exported:
        assert getattr(module, name, None) is not None, f"{package}.__all__ lists {name!r}, which it does not have"


def test_nothing_imports_around_a_facade():
    """Another package's names come through that package's __all__, never from a module it keeps to itself."""
    exports = {package: set(importlib.import_module(package).__all__) for package in packages()}
    offenders = []
    for path in library_modules():
        here = package_of(module_name(path))
        for module, names in imports(path):
            target = package_of(module)
            if not module.startswith("flsuite.") or target == here or target not in exports or module == target:
                continue
            hidden = [name for name in names if name not in exports[target]]
            if hidden or not names:
                offenders.append(f"{path.relative_to(REPO)}: {module} {hidden or '(whole module)'}")
    assert offenders == []


def test_every_exception_class_lives_in_the_one_tree_and_its_docstring_names_it():
    import flsuite.errors as errors

    tree = {name for name in errors.__all__ if isinstance(getattr(errors, name), type)}
    outside = []
    for path in library_modules():
        if path == LIBRARY / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {base.id if isinstance(base, ast.Name) else getattr(base, "attr", "") for base in node.bases}
                if bases & (tree | {"Exception", "ValueError", "RuntimeError"}):
                    outside.append(f"{path.relative_to(REPO)}: {node.name}")
    assert outside == []
    assert [name for name in sorted(tree) if name not in errors.__doc__] == []
