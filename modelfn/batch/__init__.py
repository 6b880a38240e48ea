"""Bulk predictions: every row or file under a folder or bucket prefix scored by one function,
in merged `session.run` batches, with one output file per input file. Tooling that runs
outside a function (`modelfn batch`, a Spark UDF); the core never imports it."""
