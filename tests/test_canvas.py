"""The canvas through real workers: signatures, chain, group, chord, callbacks, nesting,
eager mode, bad input, and kill -9 during a chord."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import sample_tasks as t
from conftest import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localq import (
    ChordError,
    ConfigurationError,
    GroupResult,
    Localq,
    NotRegistered,
    Signature,
    chain,
    chord,
    group,
    signature,
)

# ------------------------------------------------------------------ signatures


def test_signature_is_a_dict_in_celerys_shape_and_comes_back(app):
    sig = t.add.s(2, y=3).set(countdown=1)
    assert dict(sig) == {"task": "sample_tasks.add", "args": (2,), "kwargs": {"y": 3},
                         "options": {"countdown": 1}, "subtask_type": None,
                         "immutable": False}
    back = signature(json.loads(json.dumps(sig)))
    assert back == sig and back.type is t.add
    assert t.add.si(1, 2).immutable and not t.add.s(1).immutable
    assert t.add.signature((1, 2), {}, queue="q").options == {"queue": "q"}
    clone = sig.clone((1,))
    assert clone.args == (1, 2) and sig.args == (2,)     # partial args go first
    assert t.add.s(2)(1) == 3                              # called here and now
    nested = signature(json.loads(json.dumps(chord([t.add.s(1, 1)], t.tsum.s()))))
    assert isinstance(nested, chord) and nested.body.name == "sample_tasks.tsum"


def test_bad_input_is_a_clear_error_at_the_call(app):
    with pytest.raises(NotRegistered, match="no_such_task"):
        signature({"task": "no_such_task", "args": [], "kwargs": {}, "options": {}})
    with pytest.raises(TypeError, match="chain: expected a signature"):
        chain(t.add.s(1, 1), 42)
    with pytest.raises(TypeError, match="group: expected a signature"):
        group([t.add.s(1, 1), "add"])
    with pytest.raises(TypeError, match="wrong arguments"):
        (t.add.s(1, 1) | t.add.s(1, 2)).apply_async()    # add would get three
    with pytest.raises(ConfigurationError, match="JSON"):
        (t.add.s(1, 1) | t.pickled.s()).apply_async()
    assert app.store.counts() == []                      # nothing was stored


def test_a_group_is_sent_in_one_transaction(app):
    sigs = [t.add.s(i, i) for i in range(50)] + [t.add.s(1)]    # the last one is wrong
    with pytest.raises(TypeError):
        group(sigs).apply_async()
    assert app.store.counts() == []
    res = group(t.add.s(i, i) for i in range(50)).apply_async()
    assert sum(n for *_, n in app.store.counts()) == 50 and len(res) == 50


# ------------------------------------------------------------------ through real workers


def test_chain_passes_each_result_on_and_parent_walks_back(app):
    with app.worker(concurrency=2):
        res = (t.add.s(1, 2) | t.add.s(10) | t.mul.s(2)).apply_async()
        assert res.get(timeout=20) == 26
        assert res.parent.get(timeout=5) == 13 and res.parent.parent.get(timeout=5) == 3
        assert res.parent.parent.parent is None
        res = chain(t.add.s(1, 1), t.add.si(5, 5), t.listed.s(0)).delay()
        assert res.get(timeout=20) == [10, 0]          # si ignores its parent's result
        lineage = (t.noop.s() | t.lineage.si()).apply_async()
        first = lineage.parent.id
        assert lineage.get(timeout=20) == [first, first]
        assert lineage.parent.children == [lineage]


def test_chain_failure_ends_every_later_step_with_the_same_error(app):
    with app.worker(concurrency=2):
        res = (t.add.s(1, 1) | t.boom.si("first") | t.add.s(1) | t.add.s(2)).apply_async()
        with pytest.raises(ValueError, match="first"):
            res.get(timeout=20)
        assert res.state == res.parent.state == "FAILURE"


def test_group_result(app, tmp_path):
    with app.worker(concurrency=2):
        res = group(t.add.s(i, i) for i in range(20)).apply_async()
        assert res.get(timeout=20) == [2 * i for i in range(20)]
        assert res.ready() and res.successful() and not res.failed()
        assert res.completed_count() == 20 and len(res.results) == 20
        other = Localq(app.path)          # another app (as another process would)
        try:
            again = other.GroupResult(res.id)
            assert again.get(timeout=5) == res.get() and again.completed_count() == 20
            assert GroupResult.restore(res.id, app=other).results == res.results
            assert GroupResult.restore("no-such-group", app=other) is None
        finally:
            other.close()
        failing = group(t.add.s(1, 1), t.boom.s("second"), t.boom.s("third")).apply_async()
        with pytest.raises(ValueError, match="second"):
            failing.get(timeout=20)
        wait_for(failing.ready, what="the group to finish")
        assert failing.failed() and not failing.successful()
        assert failing.completed_count() == 1
        assert failing.get(propagate=False)[0] == 2


def test_group_revoke(app):
    res = group(t.add.s(i, i) for i in range(5)).apply_async()
    res.revoke()
    assert all(r.state == "REVOKED" for r in res.results)


def test_chord_body_gets_every_header_result_in_order(app, tmp_path):
    path = str(tmp_path / "body")
    with app.worker(concurrency=2):
        res = chord([t.sleep_then.s(0.01 * (5 - i), i) for i in range(6)],
                    t.listed.s()).apply_async()
        assert res.get(timeout=20) == [[0, 1, 2, 3, 4, 5]]
        assert isinstance(res.parent, GroupResult) and res.parent.get() == list(range(6))
        res = chord(t.add.s(i, i) for i in range(10))(t.body_record.s(path))
        assert res.get(timeout=20) == 90
        assert chord([], t.tsum.s(extra=1)).apply_async().get(timeout=20) == 1
        res = (group(t.add.s(i, 0) for i in range(4)) | t.tsum.s()).apply_async()
        assert res.get(timeout=20) == 6                # group | task is a chord
        # calling a chain or a group sends it, as in Celery
        assert (t.add.s(1, 2) | t.add.s(3))().get(timeout=20) == 6
        assert (t.add.s(1) | t.add.s(3))(2).get(timeout=20) == 6
        assert group(t.add.s(1), t.add.s(2))(10).get(timeout=20) == [11, 12]
    with open(path) as f:
        assert f.read() == "10 90\n"


def test_chord_body_gets_long_short_and_empty_results_in_order(app):
    # Short results are joined from an index, long ones from the rows: both in order.
    values = ["x" * 300, None, 7, "y" * 256, {"k": [1, 2]}, "z" * 257]
    with app.worker(concurrency=2):
        header = [t.sleep_then.s(0.01 * (6 - i), v) for i, v in enumerate(values)]
        assert chord(header, t.listed.s()).apply_async().get(timeout=20) == [values]
        short = values[1:5]
        header = [t.sleep_then.s(0.01 * (4 - i), v) for i, v in enumerate(short)]
        assert chord(header, t.listed.s()).apply_async().get(timeout=20) == [short]


def test_chord_header_failure_never_runs_the_body(app, tmp_path):
    path = str(tmp_path / "body")
    with app.worker(concurrency=2):
        header = [t.add.s(1, 1), t.boom.s("header broke"), t.add.s(2, 2)]
        res = chord(header, t.body_record.s(path)).apply_async()
        with pytest.raises(ChordError) as info:
            res.get(timeout=20)
        culprit = res.parent.results[1].id
        assert culprit in str(info.value) and "ValueError('header broke')" in str(info.value)
        assert res.state == "FAILURE"
        wait_for(res.parent.ready, what="the header to finish")
        # a chain in the header that fails halfway: its last step fails, so the chord
        res = chord([t.add.s(1, 1) | t.boom.si("halfway") | t.add.s(1), t.add.s(2, 2)],
                    t.body_record.s(path)).apply_async()
        with pytest.raises(ChordError, match="halfway"):
            res.get(timeout=20)
    # revoking a header task before it runs fails the chord too
    res = chord([t.add.s(1, 1), t.add.s(2, 2)], t.body_record.s(path)).apply_async()
    res.parent.results[1].revoke()
    with app.worker(concurrency=2):
        with pytest.raises(ChordError, match="TaskRevokedError"):
            res.get(timeout=20)
    assert not os.path.exists(path)


def test_a_group_as_a_chords_body_gives_each_member_the_header_results(app, tmp_path):
    path = str(tmp_path / "body")
    with app.worker(concurrency=2):
        res = chord([t.add.s(i, i) for i in range(4)],
                    group(t.tsum.s(), t.tsum.s(extra=100), t.listed.si(7))).apply_async()
        assert isinstance(res, GroupResult) and res.get(timeout=20) == [12, 112, [7]]
        assert isinstance(res.parent, GroupResult) and res.parent.get() == [0, 2, 4, 6]
        # in a chain, after a failed header, with an empty header
        res = (t.add.s(1, 2) | chord([t.add.s(1), t.add.s(2)],
                                     group(t.tsum.s(), t.tsum.s(extra=1)))).apply_async()
        assert res.get(timeout=20) == [9, 10]
        res = chord([t.add.s(1, 1), t.boom.s("no")],
                    group(t.body_record.s(path), t.body_record.s(path))).apply_async()
        for member in res.results:
            with pytest.raises(ChordError, match="ValueError"):
                member.get(timeout=20)
        assert chord([], group(t.tsum.s(), t.tsum.s(extra=1))).apply_async() \
            .get(timeout=20) == [0, 1]
    assert not os.path.exists(path)
    app.conf.task_always_eager = True
    assert chord([t.add.s(1, 1)], group(t.tsum.s(), t.listed.s())).apply_async().get() \
        == [2, [[2]]]


def test_result_expiry_keeps_a_waiting_chords_header_and_cleans_groups(app, tmp_path):
    gate = str(tmp_path / "gate")
    app.conf.result_expires = 0.5
    with app.worker(concurrency=2):
        forgotten = group(t.add.s(1, 1), t.add.s(2, 2)).apply_async()
        assert forgotten.get(timeout=20) == [2, 4]
        forgotten.forget()
        assert GroupResult.restore(forgotten.id, app=app) is None
        done = group(t.add.s(1, 1), t.add.s(2, 2)).apply_async()
        # finished before its sender looks at it (a loaded host's usual order): the sent
        # GroupResult still lists its members after they expire
        wait_for(GroupResult.restore(done.id, app=app).ready, what="the group to finish")
        assert done.get(timeout=20) == [2, 4]
        res = chord([t.add.s(1, 1), t.wait_file.s(gate, 3)], t.tsum.s()).apply_async()
        first = res.parent.results[0]
        assert first.get(timeout=20) == 2
        # a pass of expiry deletes the finished group's members, then the group...
        wait_for(lambda: GroupResult.restore(done.id, app=app) is None, timeout=30,
                 what="the finished group to expire")
        assert len(done) == 2 and app.store.job(done.results[0].id) is None
        # ...but keeps the header results the chord's body will read
        assert app.store.job(first.id) is not None
        open(gate, "w").close()
        assert res.get(timeout=20) == 5


def test_jobs_a_worker_has_no_room_for_ring_the_other_workers(app, monkeypatch):
    # Without the fallback check, a worker learns of new jobs only from a ring.
    from localq.worker import supervisor
    monkeypatch.setattr(supervisor, "FALLBACK_CHECK", 3600.0)
    with app.worker(concurrency=1), app.worker(concurrency=1):
        # whoever runs the first step has room for one of the two jobs it releases
        res = (t.sleep_then.si(0.05) | group(t.sleep_then.si(1.0, i) for i in range(2))) \
            .apply_async()
        assert res.get(timeout=20) == [0, 1]
    pids = {app.store.job(r.id)["pid"] for r in res.results}
    assert len(pids) == 2          # ran side by side on the two workers


def test_options_of_a_chain_group_or_chord_go_to_their_tasks(app, tmp_path):
    res = group(t.add.s(1, 1), t.add.s(2, 2).set(queue="own")).apply_async(queue="elsewhere")
    assert [app.store.job(r.id)["queue"] for r in res.results] == ["elsewhere", "own"]
    res = chord([t.add.s(1, 1)], t.tsum.s()).apply_async(countdown=60)
    assert app.store.job(res.parent.results[0].id)["eta"] > 0
    res = (t.add.s(1, 1) | t.add.s(1)).apply_async(priority=7, link=t.mul.s(10))
    assert app.store.job(res.parent.id)["priority"] == 7
    with app.worker(concurrency=2):
        assert res.get(timeout=20) == 3
        wait_for(lambda: res.children, what="the chain's link")
        assert res.children[0].get(timeout=20) == 30


def test_nested_workflows(app):
    with app.worker(concurrency=2):
        # a chord in a chain, then a task after it
        res = (t.add.s(1, 1) | chord([t.add.s(1), t.add.s(2)], t.tsum.s()) | t.mul.s(10)
               ).apply_async()
        assert res.get(timeout=20) == 70
        # a group of chains and chords
        res = group(t.add.s(1, 1) | t.mul.s(3),
                    chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()),
                    t.add.s(5, 5)).apply_async()
        assert res.get(timeout=20) == [6, 6, 10]
        # a chain whose step is a group, at the end
        res = (t.add.s(2, 2) | group(t.add.s(1), t.mul.s(2))).apply_async()
        assert res.get(timeout=20) == [5, 8]
        # a chord whose header holds chains and whose body is a chain
        res = chord([t.add.s(1, 1) | t.mul.s(2), t.add.s(3, 3)],
                    t.tsum.s() | t.add.s(1)).apply_async()
        assert res.get(timeout=20) == 11


def test_link_and_link_error(app, tmp_path):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    with app.worker(concurrency=2):
        res = t.add.apply_async((2, 3), link=[t.mul.s(10), t.add.s(1)])
        assert res.get(timeout=20) == 5
        wait_for(lambda: len(res.children) == 2, what="the links")
        assert sorted(c.get(timeout=20) for c in res.children) == [6, 50]
        failed = t.boom.apply_async(("linked",), link=t.mul.s(10),
                                    link_error=[t.error_id.s(old), t.on_error.s(new)])
        with pytest.raises(ValueError):
            failed.get(timeout=20)
        wait_for(lambda: os.path.exists(old) and os.path.exists(new), what="the errbacks")
        with open(old) as f:
            assert f.read() == f"{failed.id}\n"        # old style: the failed task's id
        with open(new) as f:
            assert f.read() == f"{failed.id} ValueError linked\n"   # new style: in the worker
        wait_for(lambda: len(failed.children) == 1, what="the errback's job")
        assert [c.name for c in failed.children] == ["sample_tasks.error_id"]
        sig = t.add.s(1, 1)
        sig.link(t.mul.s(3))
        res = sig.delay()
        assert res.get(timeout=20) == 2
        wait_for(lambda: res.children, what="the link")
        assert res.children[0].get(timeout=20) == 6


def test_a_signature_passed_through_a_task_argument(app):
    with app.worker(concurrency=2):
        sent = t.send_signature.delay(t.mul.s(7), 6).get(timeout=20)
        assert app.AsyncResult(sent).get(timeout=20) == 42


def test_eager_mode_runs_every_primitive_in_process(app, tmp_path):
    app.conf.task_always_eager = True
    path = str(tmp_path / "errback")
    assert (t.add.s(1, 2) | t.add.s(10)).apply_async().get() == 13
    assert group(t.add.s(i, i) for i in range(3)).apply_async().get() == [0, 2, 4]
    assert chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()).apply_async().get() == 6
    res = chord([t.add.s(1, 1), t.boom.s()], t.tsum.s()).apply_async()
    with pytest.raises(ChordError, match="raised ValueError"):
        res.get()
    res = (t.add.s(1, 1) | group(t.add.s(1), t.add.s(2)) | t.tsum.s()).apply_async()
    assert res.get() == 7
    t.boom.apply_async(link_error=t.error_id.s(path))
    with open(path) as f:
        assert len(f.read().split()) == 1
    with pytest.raises(TypeError):
        (t.add.s(1, 1) | t.add.s(1, 2)).apply_async()  # the same checks as a real send
    assert app.store.counts() == []                    # nothing stored


# ------------------------------------------------------------------ nested workflows

LEAF = st.tuples(st.sampled_from(["add", "mul"]), st.integers(-5, 5))


def _workflows() -> st.SearchStrategy:
    def extend(inner: st.SearchStrategy) -> st.SearchStrategy:
        return st.one_of(
            st.tuples(st.just("chain"), st.lists(inner, min_size=1, max_size=3)),
            st.tuples(st.just("chord"), st.lists(inner, min_size=0, max_size=3), LEAF))
    inner = st.recursive(LEAF.map(lambda leaf: ("leaf", leaf)), extend, max_leaves=6)
    # a group of workflows, at the top (its result is a list): "chains of groups of chords"
    return st.one_of(inner, st.tuples(st.just("group"), st.lists(inner, min_size=1,
                                                                   max_size=3)))


def _build(node, first: bool):
    """The workflow as a signature; ``first``: nothing comes before it (it gets no result)."""
    kind = node[0]
    if kind == "leaf":
        name, k = node[1]
        task = t.add if name == "add" else t.mul
        return task.s(k, k) if first else task.s(k)
    if kind == "chain":
        return chain(*[_build(n, first and i == 0) for i, n in enumerate(node[1])])
    if kind == "group":
        return group([_build(n, first) for n in node[1]])
    header, (name, k) = node[1], node[2]
    task = t.add if name == "add" else t.mul
    body = t.tsum.s(extra=k)
    return chord([_build(n, first) for n in header], body)


def _evaluate(node, value):
    """The same workflow in plain Python (``value``: the parent's result, or None)."""
    kind = node[0]
    if kind == "leaf":
        name, k = node[1]
        x = k if value is None else value
        return x + k if name == "add" else x * k
    if kind == "chain":
        for n in node[1]:
            value = _evaluate(n, value)
        return value
    if kind == "group":
        return [_evaluate(n, value) for n in node[1]]
    header, (_, k) = node[1], node[2]
    return sum(_evaluate(n, value) for n in header) + k


def test_nested_workflows_match_plain_python(app):
    with app.worker(concurrency=2):
        @settings(max_examples=40, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(_workflows())
        def check(workflow):
            seen.append(workflow)
            expected = _evaluate(workflow, None)
            assert _build(workflow, True).apply_async().get(timeout=30) == expected
        seen: list = []
        check()
        assert len(seen) >= 20 and any(w[0] != "leaf" for w in seen)


# ------------------------------------------------------------------ kill -9


def _body_runs(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def test_kill_9_during_a_chord_runs_the_body_exactly_once(app, tmp_path, start_worker):
    path = str(tmp_path / "body")
    n = 2000
    res = chord((t.sleep_then.s(0.0005, i) for i in range(n)),
                t.body_record.s(path)).apply_async()
    rng = random.Random(os.getpid())
    group_id = res.parent.id

    def done() -> int:
        conn = sqlite3.connect(f"file:{app.path}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT count(*) FROM jobs WHERE group_id = ? AND "
                                "state = 'SUCCESS'", (group_id,)).fetchone()[0]
        finally:
            conn.close()

    kills = 0
    worker = start_worker("--concurrency", "2").ready()
    while kills < 4:
        before = done()
        wait_for(lambda: done() > before, what="header progress")
        time.sleep(rng.uniform(0, 0.15))
        if done() > n - 300:         # leave the body alone: its own re-run is another story
            break
        worker.kill_all()            # kill -9 of the supervisor and its children
        kills += 1
        worker = start_worker("--concurrency", "2").ready()
    assert kills >= 1
    assert res.get(timeout=120) == sum(range(n))
    assert _body_runs(path) == [f"{n} {sum(range(n))}"]
    assert res.parent.get(timeout=5) == list(range(n))
    worker.signal(signal.SIGTERM)
    worker.wait()


def test_a_worker_in_another_process_sees_a_restored_group(app, tmp_path):
    res = group(t.add.s(i, 1) for i in range(3)).apply_async()
    code = ("import sys; sys.path.insert(0, 'tests'); import sample_tasks as t; "
            f"g = t.app.GroupResult({res.id!r}); print(len(g), g.completed_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "LOCALQ_DB": app.path}, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__))).stdout
    assert out.split() == ["3", "0"]


def test_signature_type_names_an_unknown_task(app):
    sig = Signature("sample_tasks.nope", app=app)
    with pytest.raises(NotRegistered, match="nope"):
        sig.delay()


def test_show_a_group_and_a_chord(app):
    cli = [sys.executable, "-m", "localq", "show", "--app", "sample_tasks:app"]
    env = {**os.environ, "LOCALQ_DB": app.path,
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__),
                                          os.path.dirname(os.path.dirname(__file__))])}
    with app.worker(concurrency=2):
        res = chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()).apply_async()
        assert res.get(timeout=20) == 6
    pending = group(t.add.s(i, i) for i in range(3)).apply_async()
    pending.revoke()
    out = subprocess.run([*cli, res.parent.id], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert "kind:     chord" in out and "done:     2 of 2 (2 SUCCESS)" in out
    assert f"body:     {res.id} SUCCESS" in out
    data = json.loads(subprocess.run([*cli, pending.id, "--json"], capture_output=True,
                                     text=True, env=env, check=True).stdout)
    assert data["kind"] == "group" and data["total"] == 3 and data["states"] == {"REVOKED": 3}
    assert data["members"] == [r.id for r in pending.results]


def test_map_starmap_and_chunks(app):
    with app.worker(concurrency=2):
        assert t.mul.starmap([(1, 2), (3, 4)]).delay().get(timeout=20) == [2, 12]
        assert t.noop.map([]).delay().get(timeout=20) == []
        res = t.add.chunks([(i, i) for i in range(10)], 4).apply_async()
        assert isinstance(res, GroupResult) and len(res) == 3
        assert res.get(timeout=20) == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
        assert (t.listed.map([1, 2]) | t.listed.s()).apply_async().get(timeout=20) == [[[1], [2]]]
        assert chord(t.add.chunks([(1, 1), (2, 2)], 1).group(),
                     t.listed.s()).apply_async().get(timeout=20) == [[[2], [4]]]
    back = signature(json.loads(json.dumps(t.add.chunks([(1, 1)], 1))))
    assert back.group().tasks[0]["kwargs"]["it"] == [[1, 1]]


def strip_canvas(con: sqlite3.Connection) -> None:
    """Make a database what localq wrote before the canvas (schema 2)."""
    for statement in ("DROP INDEX jobs_parent", "ALTER TABLE jobs DROP COLUMN parent_id",
                      "ALTER TABLE jobs DROP COLUMN root_id", "DROP TABLE canvas",
                      "DROP TABLE canvas_groups"):
        con.execute(statement)


def test_a_database_of_schema_2_gets_the_canvas(app):
    t.add.delay(1, 1)
    app.close()
    con = sqlite3.connect(app.path)
    strip_canvas(con)
    from test_dashboard import strip_monitoring  # and of every later version
    strip_monitoring(con)
    con.execute("UPDATE localq_meta SET value = '2' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with app.worker(concurrency=1):
        assert (t.add.s(1, 1) | t.add.s(1)).apply_async().get(timeout=20) == 3


def test_a_database_of_schema_6_gets_the_header_results_index(app):
    t.add.delay(1, 1)
    app.close()
    con = sqlite3.connect(app.path)
    con.execute("DROP INDEX jobs_group_results")
    con.execute("UPDATE localq_meta SET value = '6' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with app.worker(concurrency=1):
        assert chord(t.add.s(i, 1) for i in range(3))(t.listed.s()).get(timeout=20) == [[1, 2, 3]]
    con = sqlite3.connect(app.path)
    try:
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = "
                           "'jobs_group_results'").fetchone()[0] == 1
    finally:
        con.close()


def test_a_taken_task_id_stores_nothing_and_says_so(app):
    t.add.apply_async((1, 1), task_id="taken")
    with pytest.raises(ConfigurationError, match="taken"):
        (t.add.s(1, 1) | t.add.s(2).set(task_id="taken")).apply_async()
    assert sum(n for *_, n in app.store.counts()) == 1


def test_a_bulk_group_stores_each_members_arguments_exactly(app):
    # Runs of one task are inserted as one JSON array of payloads; other tasks, pickled
    # arguments and members with options break the runs. Each member keeps its place.
    odd = ["é ☃ 🐍", 'quote " and \\ backslash', "\x00 nul\n", float("nan"), 2 ** 70,
           {"k": [1, None, True]}, [], ""]
    sigs = [t.sleep_then.s(0, value=v) if i % 3 == 0 else t.listed.s(v)
            for i, v in enumerate(odd)]
    sigs[4:4] = [t.pickled.s({1, 2}), t.add.s(1, 2), t.add.s(3, 4).set(priority=3)]
    res = group(sigs).apply_async()
    assert len(res) == len(sigs)
    rows = [app.store.job(r.id) for r in res.results]
    assert [row["group_index"] for row in rows] == list(range(len(sigs)))
    assert len({row["seq"] for row in rows}) == len(sigs)
    for sig, row in zip(sigs, rows):
        if sig.name == t.pickled.name:
            continue
        assert row["payload"] == json.dumps([list(sig.args), sig.kwargs], ensure_ascii=False,
                                            separators=(",", ":"))
    with app.worker(concurrency=2):
        got = res.get(timeout=20)
    expected = [v if i % 3 == 0 else [v] for i, v in enumerate(odd)]
    assert got[4:7] == [{1, 2}, 3, 7]
    assert json.dumps(got[:4] + got[7:]) == json.dumps(expected)     # nan != nan


def test_a_chord_over_several_parts_gets_every_result_in_order(app):
    # Results are joined a part (store/canvas.py's PART members) at a time.
    from localq.store.canvas import PART
    n = 2 * PART + 41
    with app.worker(concurrency=2):
        res = chord((t.add.s(i, i) for i in range(n)), t.listed.s()).apply_async()
        assert res.get(timeout=60) == [[2 * i for i in range(n)]]
        assert len(res.parent) == n
        # a group body whose members all ignore the results: the parts go too
        res = chord((t.add.s(i, i) for i in range(n)),
                    group(t.listed.si(1), t.listed.si(2))).apply_async()
        assert res.get(timeout=60) == [[1], [2]]
    con = sqlite3.connect(app.path)
    try:
        assert con.execute("SELECT count(*) FROM canvas_parts").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM canvas").fetchone()[0] == 0
    finally:
        con.close()


def test_a_chord_sent_before_schema_8_completes_once_after_the_upgrade(app, tmp_path):
    # Schema 7 counted every header member by a canvas row of its own; schema 8 counts
    # bulk-sent members by their group id. A chord half counted the old way ends once.
    path = str(tmp_path / "body")
    n = 300
    res = chord((t.add.s(i, 1) for i in range(n)), t.body_record.s(path)).apply_async()
    gid = res.parent.id
    app.close()
    con = sqlite3.connect(app.path, isolation_level=None)
    members = con.execute("SELECT seq, group_index FROM jobs WHERE group_id = ? ORDER BY "
                          "group_index", (gid,)).fetchall()
    spec = json.dumps({"ok": [["chord", gid]], "err": [["chord", gid]]})
    con.executemany("INSERT INTO canvas (seq, spec) VALUES (?, ?)",
                    [(seq, spec) for seq, _ in members])
    done = [seq for seq, index in members if index % 7 == 0]     # counted by schema 7
    con.executemany("UPDATE jobs SET state = 'SUCCESS', result = ?, done = 1 WHERE seq = ?",
                    [(str(index + 1), seq) for seq, index in members if index % 7 == 0])
    con.executemany("DELETE FROM canvas WHERE seq = ?", [(seq,) for seq in done])
    con.execute("UPDATE canvas_groups SET remaining = remaining - ? WHERE id = ?",
                (len(done), gid))
    con.execute("DROP TABLE canvas_parts")
    con.execute("UPDATE localq_meta SET value = '7' WHERE key = 'schema_version'")
    con.close()
    with app.worker(concurrency=2):
        assert res.get(timeout=60) == sum(range(1, n + 1))
        assert res.parent.get(timeout=5) == list(range(1, n + 1))
    assert _body_runs(path) == [f"{n} {sum(range(1, n + 1))}"]
    con = sqlite3.connect(app.path)
    try:
        assert con.execute("SELECT count(*) FROM canvas").fetchone()[0] == 0
    finally:
        con.close()
