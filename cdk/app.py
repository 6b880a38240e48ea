"""`cdk synth` / `cdk deploy` entry point: one stack per function under functions/ (see
the README's CDK section). Run from this folder: `npx cdk deploy --all`."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# modelfn is imported from the checkout this app lives in, installed or not
sys.path[:0] = [str(HERE), str(HERE.parent)]

from aws_cdk import App  # noqa: E402
from modelfn_cdk.build import build  # noqa: E402
from modelfn_cdk.settings import DeployRefused, Settings  # noqa: E402

from modelfn.errors import ModelfnError  # noqa: E402


def main() -> int:
    app = App()
    try:
        build(app, Settings.from_context(app.node))
    except (DeployRefused, ModelfnError) as exc:
        print(f"modelfn cdk: {exc}", file=sys.stderr)
        return 1
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
