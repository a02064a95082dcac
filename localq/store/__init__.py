"""Storage: the only package that speaks SQL.

| module | owns |
|---|---|
| ``connection.py`` | connections, the write lock's retries, error mapping, fork hooks |
| ``schema.py`` | opening, checking, creating and migrating the file |
| ``records.py`` | every row layout that crosses a module or a process, and its builder |
| ``jobs.py`` | SQL of a job's life: lookup, revoke, claim, outcomes |
| ``workers.py`` | SQL of workers and upkeep: registry, recovery, purge, expiry, counts |
| ``maps.py`` | SQL of maps: groups of jobs, resumable maps by name |
| ``monitor.py`` | SQL of monitoring: bounded reads for the dashboard, workers' reports |
| ``flow.py`` | SQL of flow control: buckets, lanes, due ETAs, running counts |
| ``beat.py`` | SQL of periodic tasks: each entry's last due time, moved by compare-and-set |
| ``facade.py`` | ``Store`` (one method per transaction) and ``Transaction`` |
"""
from .facade import Store, Transaction
from .records import Claimed, JobRow, Outcome

__all__ = ["Claimed", "JobRow", "Outcome", "Store", "Transaction"]
