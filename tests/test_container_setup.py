"""scripts/container-setup.sh finds the Debian mirror in either form of apt sources, and says
why when it cannot."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parent.parent / "scripts" / "container-setup.sh"

DEB822 = """Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""
ONE_LINE = """deb http://security.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm main
"""


def mirror(apt: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MODELFN_DEBIAN_MIRROR"}
    return subprocess.run(
        ["bash", str(SETUP), "--mirror"], env={**env, "MODELFN_APT_DIR": str(apt)}, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"sources.list.d/debian.sources": DEB822}, "http://deb.debian.org/debian"),
        ({"sources.list": ONE_LINE}, "http://mirror.example/debian"),
        ({"sources.list.d/debian.list": ONE_LINE}, "http://mirror.example/debian"),
    ],
    ids=["deb822-only", "sources.list-only", "one-line-in-sources.list.d"],
)
def test_the_mirror_is_read_from_either_form_of_apt_sources(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    result = mirror(tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, expected), result.stderr


def test_no_apt_sources_at_all_says_why_and_what_to_set(tmp_path: Path) -> None:
    result = mirror(tmp_path)
    assert result.returncode == 1
    assert f"no Debian mirror in {tmp_path}" in result.stderr and "set MODELFN_DEBIAN_MIRROR" in result.stderr
