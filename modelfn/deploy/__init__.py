"""Deploy tooling: `modelfn plan`, the Lambda layer builder, the Google Cloud and Azure bundle
writers and the dependency list per codec they share with `cdk/`. Nothing here runs inside a
function, and nothing that does imports it."""
