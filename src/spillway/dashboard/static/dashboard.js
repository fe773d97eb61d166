// Spillway dashboard: polls dashboard/state, turns cumulative figures into rates and
// percentiles, and draws them on two canvases. No dependencies, no build step.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const INTERVAL_MS = Math.max(250, Number(params.get("interval")) || 1000);
  const POINTS = 120; // samples kept per series
  const WINDOW = 5; // latency percentiles over the last WINDOW polls
  const HISTORY = [];

  const SERIES = {
    throughput: [
      { key: "accepted", label: "accepted", color: "#4c7bd9" },
      { key: "succeeded", label: "succeeded", color: "#1e8e5a" },
      { key: "failed", label: "failed (retried or dead)", color: "#c0392b" },
      { key: "expired", label: "expired (never run)", color: "#b7950b" },
    ],
    latency: [
      { key: "accept_p50", label: "accept p50", color: "#4c7bd9" },
      { key: "accept_p99", label: "accept p99", color: "#9bb5ea", dash: [4, 3] },
      { key: "run_p50", label: "run p50", color: "#e08a1e" },
      { key: "run_p99", label: "run p99", color: "#f0c27f", dash: [4, 3] },
      { key: "wait_p50", label: "queue wait p50", color: "#8e44ad" },
    ],
  };
  const data = { time: [] };
  for (const list of Object.values(SERIES)) for (const s of list) data[s.key] = [];

  // What tests and curious people can inspect from the console.
  window.spillwayDashboard = { data, polls: 0, lastState: null };

  const $ = (id) => document.getElementById(id);

  function text(tag, content, cls) {
    const el = document.createElement(tag);
    if (content !== undefined && content !== null) el.textContent = String(content);
    if (cls) el.className = cls;
    return el;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c instanceof Node ? c : text("td", c));
    return tr;
  }

  function fillTable(id, rows, emptyText, columns) {
    const body = $(id).querySelector("tbody");
    body.replaceChildren();
    if (!rows.length) {
      const td = text("td", emptyText, "empty");
      td.colSpan = columns;
      body.appendChild(row([td]));
      return;
    }
    for (const r of rows) body.appendChild(row(r));
  }

  function ago(iso) {
    if (!iso) return "–";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return `${s.toFixed(0)} s ago`;
    if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
    return new Date(iso).toLocaleString();
  }

  function when(iso) {
    if (!iso) return "–";
    const s = (Date.parse(iso) - Date.now()) / 1000;
    if (s < 0) return "due";
    if (s < 60) return `in ${s.toFixed(0)} s`;
    if (s < 3600) return `in ${(s / 60).toFixed(0)} min`;
    return new Date(iso).toLocaleString();
  }

  function sumCounts(counts, kinds) {
    let n = 0;
    for (const perType of Object.values(counts || {}))
      for (const k of kinds) n += perType[k] || 0;
    return n;
  }

  // The q-quantile of the observations between two cumulative histogram snapshots.
  function quantile(q, now, before) {
    if (!now) return null;
    const counts = now.counts.map((c, i) => c - (before ? before.counts[i] || 0 : 0));
    const total = counts[counts.length - 1];
    if (!(total > 0)) return null;
    const target = q * total;
    for (let i = 0; i < counts.length; i++) {
      if (counts[i] >= target) {
        const upper = now.le[i];
        const lower = i > 0 ? now.le[i - 1] : 0;
        if (upper === null) return lower; // beyond the last finite bucket
        const below = i > 0 ? counts[i - 1] : 0;
        const inBucket = counts[i] - below;
        const frac = inBucket > 0 ? (target - below) / inBucket : 1;
        return lower + (upper - lower) * frac;
      }
    }
    return null;
  }

  function push(key, value) {
    data[key].push(value);
    if (data[key].length > POINTS) data[key].shift();
  }

  function record(state) {
    const prev = HISTORY[HISTORY.length - 1];
    const old = HISTORY.length >= WINDOW ? HISTORY[HISTORY.length - WINDOW] : HISTORY[0];
    HISTORY.push(state);
    if (HISTORY.length > WINDOW + 1) HISTORY.shift();
    if (!prev) return;
    const dt = Math.max(0.001, state.time - prev.time);
    const ev = (s, name) => (s.events && s.events[name]) || 0;
    const rate = (a, b) => Math.max(0, (a - b) / dt);
    push("time", state.time);
    push("accepted", rate(ev(state, "spillway_tasks_accepted"), ev(prev, "spillway_tasks_accepted")));
    push("succeeded", rate(sumCounts(state.counts, ["succeeded"]), sumCounts(prev.counts, ["succeeded"])));
    push("failed", rate(sumCounts(state.counts, ["retry", "dead"]), sumCounts(prev.counts, ["retry", "dead"])));
    push("expired", rate(sumCounts(state.counts, ["expired"]), sumCounts(prev.counts, ["expired"])));
    const h = (s, name) => s.histograms && s.histograms[name];
    const ms = (v) => (v === null ? null : v * 1000);
    const pairs = [
      ["accept", "spillway_accept_duration_seconds"],
      ["run", "spillway_task_run_duration_seconds"],
      ["wait", "spillway_task_queue_wait_seconds"],
    ];
    for (const [short, name] of pairs) {
      const now = h(state, name);
      const before = old && h(old, name);
      push(`${short}_p50`, ms(quantile(0.5, now, before)));
      if (short !== "wait") push(`${short}_p99`, ms(quantile(0.99, now, before)));
    }
  }

  // --- drawing ---------------------------------------------------------------------------------

  function drawChart(canvas, series, log) {
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || canvas.width;
    const hgt = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(w * ratio)) {
      canvas.width = Math.round(w * ratio);
      canvas.height = Math.round(hgt * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    const pad = { l: 48, r: 8, t: 8, b: 18 };
    const values = series.flatMap((s) => data[s.key]).filter((v) => v !== null && v > (log ? 0 : -1));
    let lo = 0;
    let hi = Math.max(1, ...values);
    if (log) {
      lo = Math.pow(10, Math.floor(Math.log10(Math.min(...values, 1))));
      hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...values, 10))));
    } else {
      const mag = Math.pow(10, Math.floor(Math.log10(hi)));
      hi = Math.ceil(hi / mag) * mag;
    }
    const x = (i) => pad.l + ((w - pad.l - pad.r) * i) / (POINTS - 1);
    const y = (v) => {
      const f = log ? (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) : v / hi;
      return hgt - pad.b - f * (hgt - pad.t - pad.b);
    };
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#6b7385";
    ctx.strokeStyle = "#e3e6ec";
    ctx.lineWidth = 1;
    const ticks = [];
    if (log) for (let v = lo; v <= hi * 1.001; v *= 10) ticks.push(v);
    else for (let i = 0; i <= 4; i++) ticks.push((hi * i) / 4);
    for (const v of ticks) {
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.l, yy);
      ctx.lineTo(w - pad.r, yy);
      ctx.stroke();
      const label = v >= 1000 ? `${v / 1000}k` : v < 1 ? String(+v.toPrecision(2)) : String(+v.toFixed(1));
      ctx.fillText(label, 4, yy + 4);
    }
    ctx.fillText(`last ${Math.round((POINTS * INTERVAL_MS) / 1000)} s`, pad.l, hgt - 4);
    const offset = POINTS - data.time.length;
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 2;
      ctx.setLineDash(s.dash || []);
      ctx.beginPath();
      let drawing = false;
      data[s.key].forEach((v, i) => {
        if (v === null || (log && v <= 0)) {
          drawing = false;
          return;
        }
        const px = x(i + offset);
        const py = y(Math.min(Math.max(v, lo), hi));
        if (drawing) ctx.lineTo(px, py);
        else ctx.moveTo(px, py);
        drawing = true;
      });
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  function legend(id, series) {
    const box = $(id);
    box.replaceChildren();
    for (const s of series) {
      const item = text("span");
      const swatch = text("i");
      swatch.style.background = s.color;
      item.append(swatch, s.label);
      const last = data[s.key][data[s.key].length - 1];
      if (last !== undefined && last !== null) item.append(` ${last < 10 ? last.toFixed(2) : last.toFixed(0)}`);
      box.appendChild(item);
    }
  }

  // --- the page --------------------------------------------------------------------------------

  function setGauge(id, value) {
    const el = $(id);
    el.textContent = String(value);
    el.classList.toggle("nonzero", value > 0);
  }

  function render(state) {
    const sum = (f) => state.queues.reduce((n, q) => n + q[f], 0);
    setGauge("backlog", sum("backlog"));
    setGauge("pending", sum("pending"));
    setGauge("delayed", sum("delayed"));
    setGauge("dead", sum("dead"));
    setGauge("workers-live", state.workers.length);
    $("in-flight").textContent = String(state.workers.reduce((n, w) => n + w.in_flight, 0));
    setGauge("succeeded", sumCounts(state.counts, ["succeeded"]));
    setGauge("expired", sumCounts(state.counts, ["expired"]));

    const paused = new Set(state.paused || []);
    $("paused-count").textContent = paused.size ? `(${paused.size} paused)` : "";
    fillTable(
      "queues",
      state.queues.map((q) => [q.queue, q.backlog, q.pending, q.delayed, q.dead, queueState(q.queue, paused)]),
      "no queues yet",
      6,
    );
    offerQueues(state.queues);
    fillTable(
      "workers",
      state.workers.map((w) => {
        const busy = text("td");
        const bar = text("span", null, "bar");
        bar.style.width = `${Math.round((60 * w.in_flight) / Math.max(1, w.concurrency))}px`;
        busy.append(bar, `${w.in_flight} / ${w.concurrency}`);
        return [text("td", w.name), w.queues.join(", "), busy, w.processed, ago(w.last_seen)];
      }),
      "no live workers",
      5,
    );

    fillTable(
      "limits",
      (state.limits || []).map((l) => [
        l.type, l.running, l.concurrency ?? "–", l.rate_limit ?? "–", l.waiting,
      ]),
      "no limited task types",
      5,
    );

    fillTable(
      "schedules",
      (state.schedules || []).map((s) => [
        s.name, s.type, s.spec, s.tz, ago(s.last_run), when(s.next_run),
      ]),
      "no schedules",
      6,
    );

    const hooks = state.callbacks || { due: 0, delivered: 0, retried: 0, failed: 0 };
    fillTable("webhooks", [[hooks.due, hooks.delivered, hooks.retried, hooks.failed]], "", 4);

    const failures = $("failures");
    failures.replaceChildren();
    for (const d of state.dead_letters.slice(0, 10)) {
      const li = text("li");
      li.append(text("code", d.id || "(malformed entry)"), ` ${d.type} · ${ago(d.failed_at)}`);
      li.appendChild(text("div", d.error, "error"));
      failures.appendChild(li);
    }
    if (!failures.children.length) failures.appendChild(text("li", "no failures", "empty"));

    $("dlq-count").textContent = `(${sum("dead")})`;
    fillTable(
      "dlq",
      state.dead_letters.map((d) => {
        const cell = text("td");
        if (d.id) {
          const button = text("button", "Replay", "replay");
          button.dataset.taskId = d.id;
          button.addEventListener("click", () => replay(button, d.id));
          cell.appendChild(button);
        }
        return [
          text("td", d.id || "–"), d.type || "–", d.queue, d.attempts, ago(d.failed_at),
          text("td", d.error, "error"), cell,
        ];
      }),
      "the dead-letter queue is empty",
      7,
    );

    drawChart($("throughput"), SERIES.throughput, false);
    drawChart($("latency"), SERIES.latency, true);
    legend("throughput-legend", SERIES.throughput);
    legend("latency-legend", SERIES.latency);
  }

  // A lane's queue: "q#low" and "q@type" are lanes of "q".
  const queueOf = (lane) => lane.split(/[#@]/)[0];

  // The state cell of a queue's row: on its default lane the control (Resume, marked, when
  // paused), on its other lanes a badge when paused.
  function queueState(lane, paused) {
    const cell = text("td");
    const queue = queueOf(lane);
    const pause = !paused.has(queue);
    if (lane === queue) {
      const button = text("button", pause ? "Pause" : "Resume", "action pause-toggle");
      button.classList.toggle("paused", !pause);
      button.title = pause ? "Stop starting this queue's tasks" : "Paused: start its tasks again";
      button.dataset.queue = queue;
      button.addEventListener("click", () => setPaused(button, queue, pause));
      cell.appendChild(button);
    } else if (!pause) {
      cell.appendChild(text("span", "paused", "badge"));
    }
    return cell;
  }

  function offerQueues(queues) {
    const select = $("cancel-queue");
    const names = [...new Set(queues.map((q) => queueOf(q.queue)))].sort();
    const shown = [...select.options].slice(1).map((o) => o.value);
    if (names.join() === shown.join()) return;
    const chosen = select.value;
    select.replaceChildren(text("option", "any"));
    select.options[0].value = "";
    for (const name of names) select.appendChild(text("option", name));
    select.value = names.includes(chosen) ? chosen : "";
  }

  async function setPaused(button, queue, pause) {
    button.disabled = true;
    const action = pause ? "pause" : "resume";
    const message = $("queue-message");
    try {
      const response = await fetch(`dashboard/queues/${encodeURIComponent(queue)}/${action}`, {
        method: "POST",
        headers: { "X-Spillway-Dashboard": "1" },
      });
      const doc = await response.json().catch(() => ({}));
      message.textContent = response.ok
        ? `Queue ${queue} ${pause ? "paused: no new task starts, running ones finish" : "resumed"}.`
        : `${action} of ${queue} failed: ${doc.detail || response.status}`;
    } catch (err) {
      message.textContent = `${action} of ${queue} failed: ${err}`;
    }
    poll();
  }

  // --- bulk cancel: bounded pages, repeated with the cursor while there are more -------------

  function cancelFilter() {
    const body = {};
    const queue = $("cancel-queue").value;
    const type = $("cancel-type").value.trim();
    const priority = $("cancel-priority").value;
    const older = $("cancel-older").value;
    if (queue) body.queue = queue;
    if (type) body.type = type;
    if (priority) body.priority = priority;
    if (older !== "") body.older_than_s = Number(older);
    return body;
  }

  async function sweep(filter, dryRun, progress) {
    let cursor = null;
    const total = { matched: 0, cancelled: 0, examined: 0 };
    for (;;) {
      const response = await fetch("dashboard/cancel", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Spillway-Dashboard": "1" },
        body: JSON.stringify({ ...filter, dry_run: dryRun, cursor }),
      });
      const doc = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(doc.detail || `HTTP ${response.status}`);
      for (const k of Object.keys(total)) total[k] += doc[k];
      progress(total);
      if (!doc.more) return total;
      cursor = doc.cursor;
    }
  }

  async function bulkCancel(run) {
    const message = $("cancel-message");
    const buttons = [$("cancel-count"), $("cancel-run")];
    const filter = cancelFilter();
    if (!Object.keys(filter).length) {
      message.textContent = "Choose at least one of queue, type, priority, age.";
      return;
    }
    for (const b of buttons) b.disabled = true;
    try {
      const counted = await sweep(filter, true, (t) => {
        message.textContent = `Counting… ${t.matched} match of ${t.examined} read`;
      });
      if (!run) {
        message.textContent = `${counted.matched} waiting task(s) match.`;
      } else if (!counted.matched) {
        message.textContent = "No waiting task matches.";
      } else if (!window.confirm(`Cancel ${counted.matched} waiting task(s)? This cannot be undone.`)) {
        message.textContent = "Nothing cancelled.";
      } else {
        const done = await sweep(filter, false, (t) => {
          message.textContent = `Cancelling… ${t.cancelled} cancelled of ${t.examined} read`;
        });
        message.textContent = `Cancelled ${done.cancelled} task(s).`;
      }
    } catch (err) {
      message.textContent = `Bulk cancel failed: ${err.message || err}`;
    } finally {
      for (const b of buttons) b.disabled = false;
    }
    poll();
  }

  $("cancel-count").addEventListener("click", () => bulkCancel(false));
  $("cancel-run").addEventListener("click", () => bulkCancel(true));

  async function replay(button, id) {
    button.disabled = true;
    const message = $("replay-message");
    try {
      const response = await fetch(`dashboard/replay/${encodeURIComponent(id)}`, {
        method: "POST",
        headers: { "X-Spillway-Dashboard": "1" },
      });
      const doc = await response.json().catch(() => ({}));
      message.textContent = response.ok
        ? `Replayed ${id}: queued again.`
        : `Replay of ${id} failed: ${doc.detail || response.status}`;
    } catch (err) {
      message.textContent = `Replay of ${id} failed: ${err}`;
    }
    poll();
  }

  function setStatus(kind, label) {
    const el = $("status");
    el.className = `status ${kind}`;
    el.textContent = label;
  }

  let inFlight = false;
  async function poll() {
    if (inFlight) return;
    inFlight = true;
    try {
      const response = await fetch("dashboard/state", { cache: "no-store" });
      if (response.status === 401) {
        setStatus("down", "API key required: reload to log in");
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const state = await response.json();
      window.spillwayDashboard.lastState = state;
      window.spillwayDashboard.polls += 1;
      record(state);
      render(state);
      setStatus(state.broker_up ? "up" : "down", state.broker_up ? "live" : "Redis unreachable");
      $("updated").textContent = `updated ${new Date(state.time * 1000).toLocaleTimeString()}`;
    } catch (err) {
      setStatus("down", `API unreachable (${err.message || err})`);
    } finally {
      inFlight = false;
    }
  }

  poll();
  setInterval(poll, INTERVAL_MS);
})();
