"""Real local stand-ins the tests and benchmarks run against: a loopback Lambda Runtime API
for the runtime interface client, and moto's S3/SQS server."""
