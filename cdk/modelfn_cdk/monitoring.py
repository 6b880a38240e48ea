"""Alarms on the live alias (errors, throttles, p99 duration) and, when the spec asks for a
gradual rollout, a CodeDeploy deployment group that shifts traffic to each new version and
rolls back when one of those alarms fires."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_codedeploy as codedeploy
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns

from modelfn.spec import FunctionSpec
from modelfn_cdk.nag import acknowledge

PERIOD = Duration.minutes(1)
# p99 above this share of the timeout means requests are about to time out
DURATION_ALARM_SHARE = 0.8
ROLLOUTS = {
    "canary": codedeploy.LambdaDeploymentConfig.CANARY_10_PERCENT_5_MINUTES,
    "linear": codedeploy.LambdaDeploymentConfig.LINEAR_10_PERCENT_EVERY_1_MINUTE,
}


def add_alarms(stack: Stack, spec: FunctionSpec, alias: lambda_.Alias, topic_arn: str | None) -> list[cloudwatch.Alarm]:
    above = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
    quiet = cloudwatch.TreatMissingData.NOT_BREACHING
    alarms = [
        cloudwatch.Alarm(
            stack,
            "ErrorsAlarm",
            alarm_description=f"{spec.name}: invocations of the live alias failed",
            metric=alias.metric_errors(period=PERIOD, statistic="Sum"),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=above,
            treat_missing_data=quiet,
        ),
        cloudwatch.Alarm(
            stack,
            "ThrottlesAlarm",
            alarm_description=f"{spec.name}: invocations of the live alias were throttled",
            metric=alias.metric_throttles(period=PERIOD, statistic="Sum"),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=above,
            treat_missing_data=quiet,
        ),
        cloudwatch.Alarm(
            stack,
            "DurationAlarm",
            alarm_description=f"{spec.name}: p99 duration above {DURATION_ALARM_SHARE:.0%} of the timeout",
            metric=alias.metric_duration(period=PERIOD, statistic="p99"),
            threshold=round(spec.deploy.timeout_s * 1000 * DURATION_ALARM_SHARE),
            evaluation_periods=3,
            datapoints_to_alarm=2,
            comparison_operator=above,
            treat_missing_data=quiet,
        ),
    ]
    if topic_arn:
        topic = sns.Topic.from_topic_arn(stack, "AlarmTopic", topic_arn)
        for alarm in alarms:
            alarm.add_alarm_action(actions.SnsAction(topic))
    return alarms


def add_drift_alarm(stack: Stack, spec: FunctionSpec, topic_arn: str | None) -> cloudwatch.Alarm | None:
    """An alarm on the largest input PSI of a window (`DriftPSIMax`, EMF from the function),
    for a function that ships a drift profile. Not a rollout alarm: drift is the traffic's,
    not the new version's."""
    if spec.drift_profile() is None:
        return None
    metric = cloudwatch.Metric(
        namespace="modelfn",
        metric_name="DriftPSIMax",
        dimensions_map={"service": "modelfn", "function": spec.name},
        period=Duration.minutes(5),
        statistic="Maximum",
    )
    alarm = cloudwatch.Alarm(
        stack,
        "DriftAlarm",
        alarm_description=f"{spec.name}: input drift, a feature's PSI at or above {spec.drift.alarm_psi}",
        metric=metric,
        threshold=spec.drift.alarm_psi,
        evaluation_periods=3,
        datapoints_to_alarm=2,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
    )
    if topic_arn:
        alarm.add_alarm_action(actions.SnsAction(sns.Topic.from_topic_arn(stack, "DriftAlarmTopic", topic_arn)))
    return alarm


def add_rollout(stack: Stack, spec: FunctionSpec, alias: lambda_.Alias, alarms: list[cloudwatch.Alarm]) -> None:
    if spec.deploy.rollout not in ROLLOUTS:
        return
    group = codedeploy.LambdaDeploymentGroup(
        stack,
        "Rollout",
        alias=alias,
        deployment_config=ROLLOUTS[spec.deploy.rollout],
        alarms=alarms,
        auto_rollback=codedeploy.AutoRollbackConfig(deployment_in_alarm=True, failed_deployment=True),
    )
    acknowledge(
        group,
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSCodeDeployRoleForLambdaLimited]",
        "CodeDeploy's own service role for Lambda traffic shifting; the managed policy is limited to it",
    )
