"""The pieces of the AWS Lambda adapter: one module per trigger family, plus telemetry and
the served function's state. The entry points are in `handlers.aws_lambda`."""
