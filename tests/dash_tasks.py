"""The sample app with a quick heartbeat, for the dashboard's tests: workers write their
counts and children with each heartbeat. Imported by the worker and dashboard
subprocesses only (it changes the sample app's settings)."""
from sample_tasks import app  # noqa: F401

app.conf.worker_heartbeat_interval = 0.25
