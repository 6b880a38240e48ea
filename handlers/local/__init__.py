"""Local emulation: what `modelfn invoke --event` needs to run a provider's adapter without
its platform (stand-in contexts, bindings, storage folders). Never imported by an adapter,
so none of it is deployed inside a function."""
