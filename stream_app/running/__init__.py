"""Running the service: the Service that owns the Faust app, the provider client and the
tables (`service`), the uvicorn server and its signals (`server`), the embedded broker
and simulator children (`embedded`, `kafka_local`), the state directory's lock
(`dir_lock`) and test helpers that start them (`testing`). It may import every layer
below it; only the launcher (`stream_app.__main__`) and the API import it (and, from
outside the service, the tests and the benchmarks: `testing`, `embedded`, `kafka_local`).
"""
