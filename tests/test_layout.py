"""The architecture's import contracts, read from the source (no module is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "expo_platform"
LAYERS = ("core", "batch", "speed", "serving", "analysis", "ops", "devtools")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from expo_platform import lake` imports the module expo_platform.lake
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def modules(subpackage: str | None = None) -> list[Path]:
    root = PACKAGE / subpackage if subpackage else PACKAGE
    return sorted(root.rglob("*.py"))


def test_the_library_never_imports_dagster():
    offenders = [
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in modules()
        for name in imports_of(path)
        if name == "dagster" or name.startswith(("dagster.", "dagster_"))
    ]
    assert offenders == []


def _reaching(subpackage: str, forbidden: tuple[str, ...]) -> list[str]:
    prefixes = tuple(f"expo_platform.{name}" for name in forbidden)
    return [
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in modules(subpackage)
        for name in imports_of(path)
        if name.startswith(prefixes)
    ]


def test_core_imports_nothing_but_core_and_errors():
    others = tuple(name for name in LAYERS if name != "core")
    forbidden = (*others, "lake", "spark", "settings", "setting_sections", "setting_values", "cli")
    assert _reaching("core", forbidden) == []


@pytest.mark.parametrize(("layer", "other"), [("batch", "speed"), ("speed", "batch")])
def test_the_two_layers_do_not_import_each_other(layer, other):
    assert _reaching(layer, (other,)) == []


def test_every_module_lives_in_a_subpackage_but_the_shared_few():
    top = {path.stem for path in PACKAGE.glob("*.py")}
    # Settings, errors, logging, the Spark session, the lake's layout and I/O (both layers
    # read and write it), and the command line.
    assert top == {
        "__init__",
        "settings",
        "setting_sections",
        "setting_values",
        "errors",
        "logs",
        "spark",
        "lake",
        "cli",
    }
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(LAYERS)


def test_the_contract_check_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from expo_platform.speed import stream\n    import dagster\n")
    assert {"expo_platform.speed", "expo_platform.speed.stream", "dagster"} <= imports_of(bad)


# What a Spark Connect client does not have: the batch layer runs on the server unchanged.
CLASSIC_ONLY = {"sparkContext", "rdd", "_jvm", "_jsc", "_jdf", "_sc"}


def classic_only_uses(path: Path) -> list[str]:
    """`name:line` of every attribute of classic Spark that a Connect session lacks."""
    return [
        f"{node.attr}:{node.lineno}"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute) and node.attr in CLASSIC_ONLY
    ]


@pytest.mark.parametrize("layer", ["core", "batch", "analysis", "serving"])
def test_the_batch_side_uses_nothing_a_spark_connect_session_lacks(layer):
    found = {p.name: uses for p in modules(layer) if (uses := classic_only_uses(p))}
    assert found == {}


def test_the_connect_check_sees_a_spark_context(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(spark):\n    return spark.sparkContext.parallelize([1]).rdd\n")
    assert sorted(classic_only_uses(module)) == ["rdd:2", "sparkContext:2"]
