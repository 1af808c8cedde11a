"""`llamaline up / status / down`: the local stack, a Prefect server, a Ray head and a Prefect worker.

Each part runs in a session of its own, logs to ``<state>/logs`` and is recorded in
``<state>/stack.json`` (pid, process group, start time, ports), so that ``down`` stops exactly the
processes ``up`` started (never ``ray stop``, never by name) and a re-run ``up`` finds them again.

Everything listens on 127.0.0.1 only. Ray binds loopback only when its node address is 127.0.0.1,
which Ray allows on Linux with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; every Ray client (the
worker, its flow runs, a user's shell) needs the same variable, and the token: Ray runs with
``RAY_AUTH_MODE=token`` and a token generated into the state dir.

Modules, each one job: ``state`` (the state dir, settings and state file), ``processes`` (which
recorded processes still run; stopping their process groups), ``launch`` (each part's environment
and command line), ``health`` (when a part is ready), ``report`` (what the commands print) and
``commands`` (up, status, down).
"""
