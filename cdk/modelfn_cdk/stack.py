"""One stack per function: the Lambda (zip + layers, or container image) that `modelfn.deploy.plan`
chose, its `live` alias with provisioned concurrency or SnapStart, its triggers, a role that
reaches only what the spec names, log retention, alarms and the optional gradual rollout."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlparse

from aws_cdk import CfnOutput, Duration, Size, Stack
from aws_cdk import aws_applicationautoscaling as autoscaling
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from modelfn.deploy.layer import check_budget, tree_bytes
from modelfn.deploy.plan import NOT_BUILT, Placement
from modelfn.spec import FunctionSpec
from modelfn_cdk import bulk, monitoring, triggers
from modelfn_cdk.access import allow, s3_arn, s3_uri_parts
from modelfn_cdk.assets import LAMBDA_TASK_ROOT, LayerArtifact, code_bytes, stage_code, stage_image
from modelfn_cdk.nag import acknowledge
from modelfn_cdk.settings import DeployRefused, ProvisionedSchedule, Settings
from modelfn_cdk.shadow import add_shadow

HANDLER = "handlers.aws_lambda.handler"
ALIAS = "live"
RUNTIMES = {"3.12": lambda_.Runtime.PYTHON_3_12, "3.13": lambda_.Runtime.PYTHON_3_13}
ARCHITECTURES = {"x86_64": lambda_.Architecture.X86_64, "arm64": lambda_.Architecture.ARM_64}
IMAGE_PLATFORMS = {"x86_64": ecr_assets.Platform.LINUX_AMD64, "arm64": ecr_assets.Platform.LINUX_ARM64}
RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
}


def refusals(spec: FunctionSpec, placement: Placement, schedules: Sequence[ProvisionedSchedule] = ()) -> list[str]:
    """Why this function cannot become a Lambda as specified: the spec's own checks again (a
    spec built in code skips the loader), the plan's refusal (GPU, Python 3.11, SnapStart on
    an image, too large for a zip), and what only the app knows."""
    found = [*spec.deploy.problems()]
    deploy = spec.deploy
    if not placement.deployable:
        found.append(placement.reason)  # unsupported on Lambda, or the model is not built yet
    if deploy.snapstart and deploy.ephemeral_storage_mb > 512:
        found.append(
            "deploy.ephemeral_storage_mb: SnapStart supports at most 512 MB of /tmp; lower it, or drop snapstart"
        )
    local_model = spec.folder / spec.model.source
    if placement.target != NOT_BUILT and not urlparse(spec.model.source).scheme and not local_model.is_file():
        found.append(f"model.source: {local_model} does not exist; build or copy the model before deploying")
    if schedules and not deploy.provisioned_concurrency_max:
        found.append(
            "modelfn:schedules: scheduled provisioned concurrency needs deploy.provisioned_concurrency_max > 0"
        )
    return found


def retention(days: int) -> logs.RetentionDays:
    try:
        return RETENTION[days]
    except KeyError:
        raise DeployRefused(f"modelfn:logRetentionDays = {days}: use one of {sorted(RETENTION)}") from None


class FunctionStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        spec: FunctionSpec,
        placement: Placement,
        settings: Settings,
        layers: Sequence[LayerArtifact] = (),
    ) -> None:
        schedules = settings.schedules.get(spec.name, ())
        problems = refusals(spec, placement, schedules)
        if problems:
            raise DeployRefused(f"{spec.name}: " + "; ".join(problems))
        super().__init__(scope, construct_id, description=f"modelfn {spec.name}: {placement.reason}"[:1024])
        self.spec, self.placement = spec, placement
        self.log_group = logs.LogGroup(self, "Logs", retention=retention(settings.log_retention_days))
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"modelfn {spec.name}: its logs, its model and its trigger's prefixes only",
        )
        self.log_group.grant_write(self.role)
        self.function: lambda_.Function
        # what the function is made of, which its shadow (modelfn_cdk.shadow) is made of too
        self.handler = HANDLER
        self.layers: list[lambda_.ILayerVersion] = []
        self.code: lambda_.Code | None = None
        self.image_code: lambda_.DockerImageCode | None = None
        if placement.target == "lambda-container":
            self.function = self._image_function(settings)
        else:
            self.function = self._zip_function(settings, layers)
        add_shadow(self, retention(settings.log_retention_days))
        self.alias = lambda_.Alias(
            self,
            "Live",
            alias_name=ALIAS,
            version=self.function.current_version,
            provisioned_concurrent_executions=spec.deploy.provisioned_concurrency or None,
        )
        self._scale(settings.utilization_target, schedules)
        self.model_access(self.role)
        triggers.add_all(triggers.Target(self, spec, self.role, self.alias, retention(settings.log_retention_days)))
        bulk.add_bulk(self, spec, self.role, self.alias, retention(settings.log_retention_days))
        alarms = monitoring.add_alarms(self, spec, self.alias, settings.alarm_topic_arn)
        monitoring.add_rollout(self, spec, self.alias, alarms)
        monitoring.add_drift_alarm(self, spec, settings.alarm_topic_arn)
        CfnOutput(self, "FunctionName", value=self.function.function_name)
        CfnOutput(self, "AliasArn", value=self.alias.function_arn, description="invoke this (the live alias)")

    def function_settings(self) -> dict[str, object]:
        deploy = self.spec.deploy
        return {
            "role": self.role,
            "log_group": self.log_group,
            "architecture": ARCHITECTURES[deploy.architecture],
            "memory_size": deploy.memory_mb,
            "timeout": Duration.seconds(deploy.timeout_s),
            "ephemeral_storage_size": Size.mebibytes(deploy.ephemeral_storage_mb),
            "environment": self.function_environment(),
            "description": (self.spec.description or f"modelfn {self.spec.name}")[:256],
        }

    def function_environment(self) -> dict[str, str]:
        return {
            "MODELFN_FUNCTION": self.spec.name,
            "MODELFN_FUNCTIONS_DIR": f"{LAMBDA_TASK_ROOT}/functions",
            # /tmp is the only writable place: the model cache, and ONNX Runtime's files under $HOME
            "MODELFN_CACHE_DIR": "/tmp/modelfn",
            "HOME": "/tmp",
        }

    def _zip_function(self, settings: Settings, artifacts: Sequence[LayerArtifact]) -> lambda_.Function:
        spec, runtime = self.spec, RUNTIMES[self.spec.deploy.python]
        code = stage_code(spec, settings.staging_dir)
        check_budget(
            layer_bytes=sum(a.unzipped_bytes for a in artifacts),
            code_bytes=code_bytes(code),
            model_bytes=tree_bytes(code / "functions" / spec.name),
        )
        layers = [
            lambda_.LayerVersion(
                self,
                f"Layer{index}",
                code=lambda_.Code.from_asset(str(artifact.zip_path)),
                compatible_runtimes=[runtime],
                compatible_architectures=[ARCHITECTURES[spec.deploy.architecture]],
                description=artifact.description[:256],
            )
            for index, artifact in enumerate(artifacts)
        ]
        self.code, self.layers = lambda_.Code.from_asset(str(code)), list(layers)
        function = lambda_.Function(
            self,
            "Function",
            runtime=runtime,
            handler=HANDLER,
            code=self.code,
            layers=layers,
            snap_start=lambda_.SnapStartConf.ON_PUBLISHED_VERSIONS if spec.deploy.snapstart else None,
            **self.function_settings(),  # type: ignore[arg-type]
        )
        if spec.deploy.snapstart:
            acknowledge(
                function,
                "@aws-cdk/aws-lambda:snapStartRequirePublish",
                "the live alias points at current_version, a published version, so SnapStart applies",
                pack="Annotation",
            )
        acknowledge(
            function,
            "AwsSolutions-L1",
            f"deploy.python = {spec.deploy.python!r} in function.toml pins the runtime; the layers hold wheels "
            "built for that interpreter (modelfn layer build supports 3.12 and 3.13)",
        )
        return function

    def _image_function(self, settings: Settings) -> lambda_.DockerImageFunction:
        deploy = self.spec.deploy
        context = stage_image(self.spec, settings.staging_dir)
        code = lambda_.DockerImageCode.from_image_asset(
            str(context),
            platform=IMAGE_PLATFORMS[deploy.architecture],
            build_args={"PYTHON": deploy.python},
        )
        self.image_code = code
        return lambda_.DockerImageFunction(self, "Function", code=code, **self.function_settings())  # type: ignore[arg-type]

    def _scale(self, utilization_target: float, schedules: Sequence[ProvisionedSchedule]) -> None:
        """Target tracking on provisioned-concurrency utilisation between the spec's floor and ceiling."""
        deploy = self.spec.deploy
        if not deploy.provisioned_concurrency or not deploy.provisioned_concurrency_max:
            return
        scaling = self.alias.add_auto_scaling(
            min_capacity=deploy.provisioned_concurrency, max_capacity=deploy.provisioned_concurrency_max
        )
        scaling.scale_on_utilization(utilization_target=utilization_target)
        for schedule in schedules:
            scaling.scale_on_schedule(
                schedule.name,
                schedule=autoscaling.Schedule.expression(schedule.cron),
                min_capacity=schedule.min,
                max_capacity=schedule.max,
            )
        CfnOutput(
            self,
            "ProvisionedConcurrency",
            value=f"{deploy.provisioned_concurrency}..{deploy.provisioned_concurrency_max}",
        )

    def model_access(self, role: iam.Role) -> None:
        """Read exactly the model objects (every version's) that live in S3; a packaged model needs nothing."""
        model = self.spec.model
        for source in [model.source, *(v.source for v in model.versions.values())]:
            if urlparse(source).scheme != "s3":
                continue
            bucket, key = s3_uri_parts(source)
            allow(role, ["s3:GetObject"], s3_arn(self, bucket, key), "a model object, fetched once per cold start")
