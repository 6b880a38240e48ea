"""Bulk predictions: every row or file under a folder or bucket prefix scored by one function,
in merged `session.run` batches, with one output file per input file. Run by `modelfn batch`,
a Spark UDF, a Cloud Run Job's tasks and, for a Step Functions Distributed Map, the Lambda
handler's `handlers.aws.bulk` (imported on that path only); the core never imports it."""
