"""The quickstart: durable parallel work with retries and limits, in one file.

Run:  python examples/quickstart.py   (writes localq.db in the current folder)
"""
from localq import Localq

app = Localq()  # $LOCALQ_DB, else ./localq.db


@app.task
def add(x, y):
    return x + y


@app.task(bind=True, max_retries=5, default_retry_delay=0.05)
def flaky(self, n):
    if self.request.retries < 2:              # the first two attempts fail ...
        raise self.retry(exc=ConnectionError("upstream hiccup"))
    return n * n                              # ... the third works


@app.task(rate_limit="200/s", time_limit=5, soft_time_limit=4)
def fetch(i):
    return f"page {i}"


if __name__ == "__main__":
    with app.worker(concurrency=2):
        print("add(2, 3) =", add.delay(2, 3).get(timeout=10))
        squares = app.map(flaky, range(10), timeout=60)
        print("squares   =", squares)
        pages = app.map(fetch, range(20), timeout=60)
        print("fetched   =", len(pages), "pages at most 200/s")
    # app.map hands its results back and forgets them; add's stays in the file.
    print(f"add's job and result are stored in {app.path}: python -m localq status")
