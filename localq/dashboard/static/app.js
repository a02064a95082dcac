// localq dashboard: renders the JSON API into the page. Every element is built with
// createElement and textContent (never innerHTML), so whatever the file holds shows as text.
"use strict";
(function () {
  const TOKEN = document.querySelector('meta[name="localq-token"]').content;
  const READONLY = document.querySelector('meta[name="localq-readonly"]').content === "1";
  const main = document.getElementById("main");
  const status = document.getElementById("status");
  const SVGNS = "http://www.w3.org/2000/svg";
  let timer = null, route = null, pageState = {};

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  function s(tag, attrs) {
    const el = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  }
  function age(sec) {
    if (sec === null || sec === undefined) return "-";
    if (sec < 1) return Math.round(sec * 1000) + "ms";
    if (sec < 120) return Math.round(sec) + "s";
    if (sec < 7200) return Math.round(sec / 60) + "m";
    return (sec / 3600).toFixed(1) + "h";
  }
  function ago(ts) { return ts ? age(Date.now() / 1000 - ts) + " ago" : "-"; }
  function clock(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString() : "-"; }
  function put(el, ...kids) {            // replaceChildren, leaving out what is absent
    el.replaceChildren(...kids.flat(Infinity).filter(k => k !== null && k !== undefined));
  }
  function table(head, rows, cls) {
    if (!rows.length)
      rows = [h("tr", {}, h("td", {class: "muted", colspan: head.length}, "none"))];
    return h("table", {class: cls}, h("thead", {}, h("tr", {}, head.map(x => h("th", {}, x)))),
             h("tbody", {}, rows));
  }
  function taskLink(id) { return id ? h("a", {href: "#/task/" + encodeURIComponent(id)}, id) : "-"; }
  function stateCell(state) { return h("td", {class: "state " + state}, state); }
  let lastNext = null;     // the X-Localq-Next header of the last answer: the next page
  async function get(path) {
    const r = await fetch(path, {headers: {"Accept": "application/json"}});
    if (!r.ok) throw new Error((await r.json()).error || r.statusText);
    lastNext = r.headers.get("X-Localq-Next");
    return r.json();
  }
  let notice = null, noticeUntil = 0;     // an action's answer, shown for a few seconds
  async function act(path, form) {
    const body = new URLSearchParams(form || {});
    const r = await fetch(path, {method: "POST", body: body,
                                 headers: {"X-Localq-Token": TOKEN}});
    const data = await r.json();
    notice = [data.message || data.error || "", r.ok ? "notice" : "error"];
    noticeUntil = Date.now() + 5000;
    tick();
    return r.ok;
  }
  function button(label, id, onclick) {
    return READONLY ? null : h("button", {type: "button", id: id, onclick: onclick}, label);
  }

  // ------------------------------------------------------------------ pages

  const pages = {
    async workers(body) {
      const data = await get("/api/workers");
      const names = Object.keys(data);
      if (!names.length) {
        put(body, h("p", {class: "muted", id: "no-workers"},
          "No worker is running on this file (start one: python -m localq worker -A module:app)."));
        return;
      }
      const out = [];
      for (const name of names) {
        const w = data[name];
        out.push(h("h2", {}, name));
        out.push(table(["hostname", "pid", "queues", "concurrency", "started", "heartbeat",
                        "processed", "failed", ""],
          [h("tr", {class: "worker", "data-pid": w.pid},
             h("td", {}, w.hostname), h("td", {class: "num"}, w.pid), h("td", {}, w.queues.join(", ")),
             h("td", {class: "num"}, w.concurrency), h("td", {}, ago(w.started)),
             h("td", {}, ago(w.heartbeat)), h("td", {class: "num processed"}, w.processed),
             h("td", {class: "num"}, w.failed), h("td", {class: w.silent ? "error" : ""},
             w.silent ? "SILENT" : "ok"))]));
        out.push(table(["child pid", "task", "id", "running for", "RSS"],
          w.children.map(c => h("tr", {class: "child"}, h("td", {class: "num"}, c.pid),
            h("td", {}, c.task || "idle"), h("td", {}, taskLink(c.id)),
            h("td", {}, c.runtime === null ? "-" : age(c.runtime)),
            h("td", {class: "num"}, c.rss ? (c.rss / 1048576).toFixed(1) + " MiB" : "-")))));
      }
      put(body, ...out);
    },

    tasksForm(top) {
      const f = pageState;
      const state = h("select", {name: "state", id: "f-state"}, h("option", {value: ""}, "any state"),
        ["PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"].map(
          x => h("option", {value: x, selected: f.state === x}, x)));
      const name = h("select", {name: "taskname", id: "f-name"}, h("option", {value: ""}, "any task"));
      get("/api/task/names").then(list => list.forEach(n => name.append(
        h("option", {value: n, selected: f.taskname === n}, n)))).catch(() => {});
      const queue = h("input", {name: "queue", id: "f-queue", placeholder: "queue", value: f.queue || ""});
      const search = h("input", {name: "search", id: "f-search", placeholder: "task id", size: 38,
                                 value: f.search || ""});
      const form = h("form", {class: "filters", onsubmit: (e) => {
        e.preventDefault();
        pageState = {state: state.value, taskname: name.value, queue: queue.value,
                     search: search.value.trim(), cursors: []};
        tick();
      }}, state, name, queue, search, h("button", {type: "submit", id: "f-apply"}, "Apply"));
      put(top, form);
    },

    async tasks(body) {
      const f = pageState, cursors = f.cursors || (f.cursors = []);
      const q = new URLSearchParams({limit: 50});
      for (const k of ["state", "taskname", "queue", "search"]) if (f[k]) q.set(k, f[k]);
      if (cursors.length) q.set("before", cursors[cursors.length - 1]);
      const tasks = Object.values(await get("/api/tasks?" + q));
      const data = {next: lastNext};
      const rows = tasks.map(t => h("tr", {class: "task", "data-id": t.uuid},
        h("td", {}, t.name), h("td", {}, taskLink(t.uuid)), h("td", {class: "args"}, t.args),
        stateCell(t.state), h("td", {}, clock(t.received)), h("td", {}, clock(t.started)),
        h("td", {class: "num"}, t.runtime === null ? "-" : t.runtime.toFixed(3) + "s"),
        h("td", {class: "num"}, t.worker ? "worker " + t.worker : t.pid ? "child " + t.pid : "-")));
      const pager = h("p", {},
        cursors.length ? h("button", {type: "button", id: "newer", onclick: () => {
          cursors.pop(); tick(); }}, "« newer") : null, " ",
        data.next ? h("button", {type: "button", id: "older", onclick: () => {
          cursors.push(data.next); tick(); }}, "older »") : null);
      put(body, 
        table(["name", "uuid", "args", "state", "received", "started", "runtime", "worker"],
              rows, "tasks"),
        rows.length ? null : h("p", {class: "muted"}, "No task here" +
          (data.next ? " among the latest rows looked at: older ones may match." : ".")),
        pager);
    },

    async task(body, id) {
      const t = await get("/api/task/info/" + encodeURIComponent(id));
      const fields = [["uuid", t.uuid], ["name", t.name], ["state", t.state],
        ["queue", t.queue], ["priority", t.priority], ["retries", t.retries],
        ["received", clock(t.received)], ["started", clock(t.started)],
        ["done", clock(t.succeeded || t.done)],
        ["runtime", t.runtime === null ? "-" : t.runtime.toFixed(3) + "s"],
        ["worker pid", t.worker || "-"], ["child pid", t.pid || "-"],
        ["eta", t.eta ? clock(t.eta) : "-"], ["expires", t.expires ? clock(t.expires) : "-"]];
      for (const [k, v] of Object.entries(t.links || {}))
        if (k !== "group") fields.push([k.replace("_", " "), v]);
      const dl = h("dl", {}, fields.map(([k, v]) => [h("dt", {}, k),
        h("dd", {id: "task-" + k.replace(" ", "-"), class: k === "state" ? "state " + v : ""},
          k.endsWith(" id") || k === "parent id" ? taskLink(v) : v)]));
      const out = [h("h2", {}, t.name + " " + t.uuid), dl,
        h("p", {}, t.final ? null : button("Revoke", "revoke", () => act(
           "/api/task/revoke/" + encodeURIComponent(t.uuid))), " ",
          t.state === "STARTED" ? button("Terminate", "terminate", () => act(
           "/api/task/revoke/" + encodeURIComponent(t.uuid), {terminate: "true"})) : null, " ",
          t.state === "FAILURE" ? button("Retry", "retry", () => act(
           "/api/task/retry/" + encodeURIComponent(t.uuid))) : null),
        h("h2", {}, "args"), h("pre", {id: "task-args"}, JSON.stringify(t.args, null, 1)),
        h("h2", {}, "kwargs"), h("pre", {id: "task-kwargs"}, JSON.stringify(t.kwargs, null, 1))];
      if ("result" in t) out.push(h("h2", {}, "result"),
        h("pre", {id: "task-result"}, JSON.stringify(t.result, null, 1)));
      if (t.exception) out.push(h("h2", {}, "exception"),
        h("pre", {id: "task-exception"}, t.exception + (t.exception_message ? ": " + t.exception_message : "")));
      if (t.traceback) out.push(h("h2", {}, "traceback"), h("pre", {id: "task-traceback"}, t.traceback));
      out.push(h("h2", {}, "attempts"), table(["#", "outcome", "started", "ended", "pid", "error"],
        t.attempts.map(a => h("tr", {}, h("td", {}, a.attempt), stateCell(a.outcome),
          h("td", {}, clock(a.started)), h("td", {}, clock(a.ended)), h("td", {}, a.pid || "-"),
          h("td", {}, (a.exc_type || "") + (a.exc_message ? ": " + a.exc_message : ""))))));
      if (t.links && t.links.group) out.push(h("h2", {}, "group"), table(["#", "uuid", "state"],
        t.links.group.map((g, i) => h("tr", {}, h("td", {}, i), h("td", {}, taskLink(g.uuid)),
          stateCell(g.state)))));
      put(body, ...out);
    },

    async queues(body) {
      const q = await get("/api/queues");
      const purge = (name) => button("Purge", "purge-" + name, () => {
        if (confirm("Delete every waiting job in queue " + name + "?"))
          act("/api/queues/purge/" + encodeURIComponent(name));
      });
      const rateForm = (task) => {
        if (READONLY) return null;
        const input = h("input", {size: 8, placeholder: "10/s", class: "rate"});
        return h("form", {onsubmit: (e) => { e.preventDefault();
          act("/api/task/rate-limit/" + encodeURIComponent(task || taskInput.value),
              {ratelimit: input.value}); }},
          task ? null : taskInput, input, h("button", {type: "submit"}, "Set rate limit"));
      };
      const taskInput = h("input", {placeholder: "task name", size: 30});
      put(body, 
        h("h2", {}, "Ready to run, by queue and priority"),
        table(["queue", "priority", "jobs", ""], q.ready.map(r => h("tr", {class: "queue"},
          h("td", {}, r.queue), h("td", {class: "num"}, r.priority),
          h("td", {class: "num"}, r.jobs), h("td", {}, purge(r.queue))))),
        h("h2", {}, "Delayed (ETA or retry countdown)"),
        table(["queue", "jobs", "next due"], q.delayed.map(r => h("tr", {},
          h("td", {}, r.queue), h("td", {class: "num"}, r.jobs), h("td", {}, clock(r.next_eta))))),
        h("h2", {}, "Waiting on a rate limit or concurrency cap"),
        table(["task", "queue", "jobs"], q.rate_limited.map(r => h("tr", {},
          h("td", {}, r.task), h("td", {}, r.queue), h("td", {class: "num"}, r.jobs)))),
        h("h2", {}, "Limits in force"),
        table(["task", "limit", "value", "source", ""], q.limits.map(r => h("tr", {},
          h("td", {}, r.task), h("td", {}, r.limit), h("td", {}, r.value || "no limit"),
          h("td", {}, r.source), h("td", {}, r.limit === "rate_limit" ? rateForm(r.task) : null)))),
        q.tasks_loaded ? null : h("p", {class: "muted"},
          "Limits declared in code are listed when the dashboard is started with --app module:app."),
        rateForm(null));
    },

    async throughput(body) {
      const t = await get("/api/throughput");
      const W = 900, H = 220, L = 40, n = t.succeeded.length;
      const series = [["succeeded", "#1b7f3b"], ["failed", "#b3261e"], ["retried", "#a15c00"]];
      const top = Math.max(1, ...series.map(([k]) => Math.max(...t[k])));
      const svg = s("svg", {width: W + L, height: H + 30, viewBox: `0 0 ${W + L} ${H + 30}`,
                            id: "chart", role: "img"});
      for (const frac of [0, 0.5, 1]) {
        const y = H - frac * H + 5;
        svg.append(s("line", {x1: L, x2: L + W, y1: y, y2: y, stroke: "#ddd"}));
        const label = s("text", {x: 2, y: y + 4}); label.textContent = Math.round(top * frac);
        svg.append(label);
      }
      for (const [k, color] of series) {
        const pts = t[k].map((v, i) => `${(L + i * W / (n - 1)).toFixed(1)},${(H - v / top * H + 5).toFixed(1)}`);
        svg.append(s("polyline", {points: pts.join(" "), fill: "none", stroke: color,
                                   "stroke-width": 1.5, class: "series-" + k}));
      }
      for (const [frac, text] of [[0, "-10 min"], [0.5, "-5 min"], [1, "now"]]) {
        const label = s("text", {x: L + frac * W - (frac === 1 ? 24 : frac ? 20 : 0), y: H + 24});
        label.textContent = text; svg.append(label);
      }
      const sum = (k) => t[k].reduce((a, b) => a + b, 0);
      const recent = (k) => t[k].slice(-10).reduce((a, b) => a + b, 0) / 10;
      put(body, h("h2", {}, "Outcomes per second, last 10 minutes"),
        h("p", {class: "legend"}, series.map(([k, color]) => h("span", {},
          h("i", {class: "sw sw-" + k}), `${k}: ${recent(k).toFixed(1)}/s now, ${sum(k)} in 10 min`))),
        svg);
      for (const [k, color] of series)
        body.querySelectorAll(".sw-" + k).forEach(el => el.style.setProperty("background", color));
    },
  };

  // ------------------------------------------------------------------ routing and refresh

  const content = h("div", {id: "content"}), top = h("div", {id: "top"});
  async function tick() {
    clearTimeout(timer);
    const [name, arg] = route;
    try {
      await pages[name](content, arg);
      if (notice && Date.now() < noticeUntil) {
        status.textContent = notice[0];
        status.className = notice[1];
      } else {
        status.textContent = "updated " + new Date().toLocaleTimeString();
        status.className = "";
      }
    } catch (e) {
      status.textContent = "cannot reach the dashboard: " + e.message;
      status.className = "error";
    }
    timer = setTimeout(tick, 1000);
  }
  function go() {
    const hash = location.hash.replace(/^#\/?/, "") || "workers";
    const [name, ...rest] = hash.split("/");
    route = pages[name] && name !== "tasksForm" ? [name, decodeURIComponent(rest.join("/"))] : ["workers", ""];
    document.querySelectorAll("nav a").forEach(a => a.className =
      a.id === "nav-" + route[0] ? "here" : "");
    top.replaceChildren();
    if (route[0] === "tasks") pages.tasksForm(top);
    content.replaceChildren();
    main.replaceChildren(top, content);
    tick();
  }
  window.addEventListener("hashchange", () => { pageState = {}; go(); });
  go();
})();
