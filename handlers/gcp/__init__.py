"""The pieces of the Google Cloud Functions adapter: the instance's functions, one module per
event source (Pub/Sub, Cloud Storage) with the same recognise / translate in / translate out
shape as `handlers/aws/`, and the HTTP translation. The entry points are in
`handlers.gcp_functions`."""
