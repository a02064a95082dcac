"""A hypothesis state machine over the store: enqueue / claim / finish / crash / recover.

Whatever the order, a job is owned by at most one live worker, a finished job
never changes again (late or repeated reports are ignored), and once every
worker has finished or been recovered, every job ends in exactly one final state.
"""
from __future__ import annotations

import shutil
import tempfile
import time

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from localq import Localq
from localq.store import Outcome, records
from localq.store.records import FINAL_STATES

OWNER_PID = 1


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.app = Localq(f"{self.dir}/m.db")
        self.task = self.app.task(lambda x: x, name="m.ident")
        self.store = self.app.store
        self.jobs: list[str] = []
        self.workers: dict[int, set[int]] = {}          # live worker id -> seqs it holds
        self.finals: dict[int, str] = {}                 # seq -> final state seen
        self.revoked_running: set[int] = set()           # revoked while STARTED

    def teardown(self) -> None:
        self.app.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _state(self, seq: int) -> tuple[str, int | None]:
        with self.store.db.read() as conn:
            return conn.execute("SELECT state, owner FROM jobs WHERE seq = ?", (seq,)).fetchone()

    @rule(n=st.integers(1, 5))
    def enqueue(self, n: int) -> None:
        for _ in range(n):
            job = self.app.new_job(self.task, (1,), {})
            self.store.enqueue(job)
            self.jobs.append(job.id)

    @rule()
    def start_worker(self) -> None:
        wid = self.store.register_worker(OWNER_PID, None, "h", ["default"], 1, time.time())
        self.workers[wid] = set()

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), k=st.integers(1, 4))
    def claim(self, data: st.DataObject, k: int) -> None:
        wid = data.draw(st.sampled_from(sorted(self.workers)))
        with self.store.transaction() as tx:
            got = tx.claim(wid, "default", k, time.time() + 1)
        for job in got:
            assert job.seq not in self.finals
            for other, held in self.workers.items():
                assert job.seq not in held, f"seq {job.seq} already held by {other}"
            self.workers[wid].add(job.seq)

    @precondition(lambda self: any(self.workers.values()))
    @rule(data=st.data(), state=st.sampled_from(["SUCCESS", "FAILURE", "RETRY", "PENDING"]))
    def finish(self, data: st.DataObject, state: str) -> None:
        wid = data.draw(st.sampled_from(sorted(w for w, h in self.workers.items() if h)))
        seq = data.draw(st.sampled_from(sorted(self.workers[wid])))
        self.store.finish(wid, [Outcome(seq, state, "1", ended=time.time(), eta=0.0)])
        self.workers[wid].discard(seq)
        if state in FINAL_STATES:
            self.finals[seq] = state
        elif seq in self.revoked_running:      # it may not run again
            self.finals[seq] = "REVOKED"
        assert self._state(seq)[0] == self.finals.get(seq, "RETRY" if state == "RETRY"
                                                      else "PENDING")

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), pad=st.integers(0, 40))
    def finish_many(self, data: st.DataObject, pad: int) -> None:
        """One report of many SUCCESS outcomes, as a supervisor writes a batch (16 and
        more are written by chunks): its own jobs finish; late reports, and reports of
        another worker's jobs, change nothing."""
        wid = data.draw(st.sampled_from(sorted(self.workers)))
        own = sorted(self.workers[wid])
        others = sorted(seq for w, held in self.workers.items() if w != wid for seq in held)
        foreign = others + sorted(self.finals)
        seqs = own + foreign + (data.draw(st.lists(st.sampled_from(foreign), min_size=pad,
                                                   max_size=pad)) if foreign else [])
        now = time.time()
        self.store.finish(wid, [records.succeeded(seq, "1", now, now, 1)
                                for seq in data.draw(st.permutations(seqs))])
        for seq in own:
            self.finals[seq] = "SUCCESS"
            assert self._state(seq) == ("SUCCESS", None)
        self.workers[wid].clear()
        for seq in others:
            assert self._state(seq)[0] == "STARTED"

    @precondition(lambda self: self.finals)
    @rule(data=st.data(), state=st.sampled_from(["SUCCESS", "FAILURE", "RETRY", "PENDING"]))
    def late_report(self, data: st.DataObject, state: str) -> None:
        seq = data.draw(st.sampled_from(sorted(self.finals)))
        for wid in list(self.workers) + [999]:
            self.store.finish(wid, [Outcome(seq, state, "2", ended=time.time())])
        assert self._state(seq)[0] == self.finals[seq]

    @precondition(lambda self: self.workers)
    @rule(data=st.data())
    def crash_and_recover(self, data: st.DataObject) -> None:
        wid = data.draw(st.sampled_from(sorted(self.workers)))
        held = self.workers.pop(wid)
        self.store.release_worker_jobs([wid], time.time(), "{}")
        for seq in held:
            if seq in self.revoked_running:
                self.finals[seq] = "REVOKED"
            assert self._state(seq) == (self.finals.get(seq, "PENDING"), None)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.jobs))
        state = self.store.revoke(job_id, False, "{}", time.time())
        row = self.store.job(job_id)
        if state == "REVOKED" and row["seq"] not in self.finals:
            self.finals[row["seq"]] = "REVOKED"
        if state == "STARTED":
            self.revoked_running.add(row["seq"])

    @invariant()
    def finished_jobs_never_change_and_owners_are_live(self) -> None:
        with self.store.db.read() as conn:
            rows = conn.execute("SELECT seq, state, owner FROM jobs").fetchall()
        for seq, state, owner in rows:
            if seq in self.finals:
                assert state == self.finals[seq]
            if state == "STARTED":
                assert owner in self.workers and seq in self.workers[owner]
            else:
                assert owner is None

    def check_everything_ends_once(self) -> None:
        for wid in list(self.workers):
            self.store.release_worker_jobs([wid], time.time(), "{}")
        self.workers.clear()
        wid = self.store.register_worker(OWNER_PID, None, "h", ["default"], 1, time.time())
        while True:
            with self.store.transaction() as tx:
                got = tx.claim(wid, "default", 50, time.time() + 1)
            if not got:
                break
            self.store.finish(wid, [Outcome(j.seq, "SUCCESS", "1", ended=1.0) for j in got])
        states = self.store.states(self.jobs)
        assert set(states) == set(self.jobs)
        assert all(s in FINAL_STATES for s in states.values())


class WholeRun(StoreMachine):
    def teardown(self) -> None:
        try:
            self.check_everything_ends_once()
        finally:
            super().teardown()


WholeRun.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestStoreMachine = WholeRun.TestCase
