"""The table of optional dependencies agrees with pyproject.toml, and a missing one reads as one line."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from modelfn.extras import EXTRA_OF, missing_extra

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.parametrize(("module", "extra", "package"), [(m, e, p) for m, (e, p) in EXTRA_OF.items()])
def test_each_module_is_installed_by_the_extra_it_names(module: str, extra: str, package: str) -> None:
    packages = {re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower() for requirement in EXTRAS[extra]}
    assert package in packages, f"{module}: {package} is not in modelfn[{extra}] {sorted(packages)}"


def test_a_missing_module_names_its_package_and_extra() -> None:
    error = missing_extra(ModuleNotFoundError("No module named 'azure'", name="azure"), "modelfn invoke")
    assert error is not None
    assert error.message == (
        "modelfn invoke needs azure-functions (azure), which is not installed: "
        "pip install 'modelfn[azure]' (in a checkout: pip install -e '.[azure]')"
    )
    dotted = missing_extra(ModuleNotFoundError(name="aws_lambda_powertools.utilities.batch"))
    assert dotted is not None and dotted.detail == {"module": "aws_lambda_powertools.utilities.batch", "extra": "aws"}


def test_a_module_no_extra_provides_keeps_its_traceback() -> None:
    assert missing_extra(ModuleNotFoundError(name="modelfn.no_such_module")) is None
