"""The worker: a supervisor process that claims jobs and feeds forked children.

| module | owns |
|---|---|
| ``options.py`` | the worker's options, resolved once for the CLI and ``app.worker()`` |
| ``supervisor.py`` | the event loop: write and claim, dispatch, deadlines, shutdown |
| ``pool.py`` | the children as the supervisor sees them, each in one lifecycle state |
| ``protocol.py`` | the supervisor/child wire layouts (jobs down, outcomes and exits up) |
| ``child.py`` | the child loop |
| ``execute.py`` | running one job (children and eager mode share it) |
| ``throttle.py`` | global rate limits and concurrency caps at claim time |
| ``upkeep.py`` | heartbeat, recovery of dead workers' jobs, result expiry, checkpoints |
| ``embedded.py`` | ``app.worker()``: the supervisor in a forked copy of the caller |

The worker imports the client API (settings, tasks, serializers); the client
API imports the worker only lazily, to start one or to run a job eagerly.
"""
