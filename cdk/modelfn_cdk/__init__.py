"""The modelfn CDK app's constructs: one stack per `functions/<name>/function.toml`."""
