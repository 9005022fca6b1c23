"""docs/design.md's import rules: data code knows nothing of the model or DeepSpeed, and the
model nothing of the data code or DeepSpeed."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import interbert.data
import interbert.modeling


def imported_after(modules: list) -> set:
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print('\\n'.join(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(result.stdout.split())


def package_modules(package) -> list:
    """Every module of ``package``, its sub-packages' modules included."""
    return [m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]


@pytest.mark.parametrize("package,forbidden", [
    (interbert.data, ("interbert.modeling", "interbert.training", "interbert.evaluation", "interbert.finetuning",
                      "deepspeed")),
    (interbert.modeling, ("interbert.data", "interbert.training", "interbert.evaluation", "interbert.finetuning",
                          "deepspeed")),
])
def test_a_package_imports_none_of_what_it_must_not_know(package, forbidden):
    loaded = imported_after(package_modules(package))
    assert package_modules(package)[0] in loaded
    assert sorted(name for name in loaded if name.startswith(forbidden)) == []
