"""Optional dependencies: which `modelfn[extra]` installs a module, so that a missing one is
reported as one line naming the extra rather than as a traceback."""

from __future__ import annotations

from modelfn.errors import ModelfnError

# Module (or dotted prefix) -> (the extra in pyproject.toml that installs it, the package it comes from).
EXTRA_OF: dict[str, tuple[str, str]] = {
    "aws_lambda_powertools": ("aws", "aws-lambda-powertools"),
    "boto3": ("aws", "boto3"),
    "botocore": ("aws", "boto3"),
    "aws_xray_sdk": ("aws", "aws-xray-sdk"),
    "uvicorn": ("server", "uvicorn"),
    "functions_framework": ("gcp", "functions-framework"),
    "cloudevents": ("gcp", "cloudevents"),
    "google.cloud.storage": ("gcp", "google-cloud-storage"),
    "google.cloud.pubsub": ("gcp", "google-cloud-pubsub"),
    "google.cloud.pubsub_v1": ("gcp", "google-cloud-pubsub"),
    "google": ("gcp", "google-cloud-storage"),
    "azure.functions": ("azure", "azure-functions"),
    "azure": ("azure", "azure-functions"),
    "PIL": ("image", "pillow"),
    "tokenizers": ("text", "tokenizers"),
    "mangum": ("mangum", "mangum"),
    "aws_cdk": ("cdk", "aws-cdk-lib"),
    "constructs": ("cdk", "constructs"),
    "cdk_nag": ("cdk", "cdk-nag"),
}


class MissingExtra(ModelfnError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    status = 500
    code = "missing_dependency"


def extra_for(module: str) -> tuple[str, str] | None:
    """(extra, package) that installs `module` (a dotted name), by its longest known prefix."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        found = EXTRA_OF.get(".".join(parts[:end]))
        if found:
            return found
    return None


def missing_extra(exc: ImportError, needed_by: str = "") -> MissingExtra | None:
    """The one-line error for an import that failed because an extra is not installed, or None
    when the module is not one an extra provides (a real bug, which keeps its traceback)."""
    module = getattr(exc, "name", None) or ""
    found = extra_for(module)
    if found is None:
        return None
    extra, package = found
    what = f"{package} ({module})" if package.replace("-", "_") != module else package
    what = f"{needed_by} needs {what}, which is not installed" if needed_by else f"{what} is not installed"
    install = f"pip install 'modelfn[{extra}]' (in a checkout: pip install -e '.[{extra}]')"
    return MissingExtra(f"{what}: {install}", module=module, extra=extra)
