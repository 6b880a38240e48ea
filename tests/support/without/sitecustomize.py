"""On PYTHONPATH, makes the modules named in MODELFN_TEST_WITHOUT (comma-separated) fail to
import, as on a machine where their extra is not installed."""

import os
import sys
from importlib.abc import MetaPathFinder

BLOCKED = {name for name in os.environ.get("MODELFN_TEST_WITHOUT", "").split(",") if name}


class NotInstalled(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname in BLOCKED or fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


if BLOCKED:
    sys.meta_path.insert(0, NotInstalled())
