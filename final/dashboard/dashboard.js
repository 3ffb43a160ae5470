// The dashboard: reads GET /overview and GET /dlq every second and draws them.
// Plain DOM and SVG, no library: the page must work with no network at all. Text from
// the server (ids, errors) only ever goes in through textContent, never as HTML.
"use strict";

(() => {
  const PERIOD = 1000; // ms between reads (the contract asks for 2 s at most)
  const SPAN = 60; // samples the charts keep: a minute at one a second
  const LISTED = 10; // failures and dead letters shown, the newest
  const PATIENCE = 5000; // ms a read may take before the page says the server is not answering
  const SHOWN = 160; // characters of an error shown in a cell; its title has them all
  const SHOWN_ID = 40; // of an id, on one line: a uuid's 32 or 36 fit
  const KEY = "job-queue-token"; // sessionStorage: gone when the tab closes
  const SVG = "http://www.w3.org/2000/svg";
  const FIGURES = ["in-flight", "throughput", "completed", "failed", "dead", "utilization",
    "wait-now", "wait-top", "rate-top"];

  // A header carries printable ASCII only: fetch() throws on anything else, before
  // any request, so a token typed with an accent would never be refused, only fail.
  const usable = (text) => text !== null && /^[\x20-\x7e]+$/.test(text);
  let token = usable(sessionStorage.getItem(KEY)) ? sessionStorage.getItem(KEY) : null;
  let samples = []; // {p50, p99, rate, depth}, oldest first
  let previous = null; // {at, completed}: the last read, for the throughput
  let timer = null;

  class Unauthorized extends Error {}

  const $ = (id) => document.getElementById(id);

  async function request(method, url) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    // A server that accepts the connection and never answers (stopped, or its loop
    // stuck) must not leave the page saying "live" for ever.
    const patience = new AbortController();
    const alarm = setTimeout(() => patience.abort(), PATIENCE);
    try {
      const answer = await fetch(url, { method, headers, cache: "no-store", signal: patience.signal });
      if (answer.status === 401) throw new Unauthorized();
      if (!answer.ok) throw new Error(method + " " + url + " answered " + answer.status);
      return await answer.json();
    } catch (error) {
      if (error.name === "AbortError") throw new Error("silent for " + PATIENCE / 1000 + " s");
      throw error;
    } finally {
      clearTimeout(alarm);
    }
  }

  // -- reading, again and again ------------------------------------------------------------

  let reading = false; // one read at a time: a replay's read waits for the one under way
  let again = false;

  async function tick() {
    if (reading) {
      again = true;
      return;
    }
    reading = true;
    clearTimeout(timer);
    let allowed = true;
    try {
      const [overview, dead] = await Promise.all([
        request("GET", "/overview?failures=" + LISTED),
        request("GET", "/dlq?limit=" + LISTED),
      ]);
      show(overview, dead);
      setState("live · " + new Date(overview.time).toLocaleTimeString(), false);
    } catch (error) {
      allowed = !(error instanceof Unauthorized);
      if (allowed) setState("no answer from the server: " + error.message, true);
    } finally {
      reading = false;
    }
    if (!allowed) {
      askForToken(); // no more reads until a token is given
      return;
    }
    timer = setTimeout(tick, again ? 0 : PERIOD);
    again = false;
  }

  function setState(text, stale) {
    $("state").textContent = text;
    $("state").classList.toggle("stale", stale);
  }

  // -- the token -------------------------------------------------------------------------

  function askForToken() {
    const refused = token !== null;
    token = null;
    sessionStorage.removeItem(KEY);
    forget();
    $("login").hidden = false;
    if (refused) refuse("That token was refused.");
    else $("login-error").hidden = true;
    setState("a token is needed", false);
    $("token").focus();
  }

  function refuse(why) {
    $("login-error").textContent = why;
    $("login-error").hidden = false;
  }

  function forget() {
    // Nothing of the queue stays on the page once it is not allowed to see it.
    $("board").hidden = true;
    samples = [];
    previous = null;
    for (const body of document.querySelectorAll("#board tbody")) body.replaceChildren();
    for (const svg of document.querySelectorAll("#board svg")) svg.replaceChildren();
    for (const figure of FIGURES) $(figure).textContent = "–";
    $("dead-total").textContent = "";
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const given = $("token").value.trim();
    $("token").value = "";
    if (!usable(given)) {
      refuse("A token is letters, digits, punctuation and spaces: this one cannot be sent.");
      return;
    }
    token = given;
    sessionStorage.setItem(KEY, token);
    $("login").hidden = true;
    tick();
  });

  // -- drawing ---------------------------------------------------------------------------

  function show(overview, dead) {
    $("board").hidden = false;
    $("login").hidden = true;
    const at = Date.parse(overview.time) / 1000;
    let rate = null;
    if (previous !== null && at > previous.at) {
      rate = Math.max(0, (overview.completed - previous.completed) / (at - previous.at));
    }
    previous = { at, completed: overview.completed };
    const depth = Math.max(0, ...overview.lanes.map((l) => l.queued + l.in_flight));
    samples.push({ p50: overview.wait_p50, p99: overview.wait_p99, rate, depth });
    if (samples.length > SPAN) samples.shift();

    showLanes(overview.lanes);
    $("in-flight").textContent = overview.in_flight;
    $("throughput").textContent = rate === null ? "–" : rate.toFixed(1);
    $("completed").textContent = overview.completed;
    $("failed").textContent = overview.failed;
    $("dead").textContent = overview.dead;
    $("utilization").textContent = Math.round(overview.utilization * 100) + "%";
    showCharts(overview);
    showFailures(overview.failures);
    showDead(dead);
  }

  function cell(text, className) {
    const td = document.createElement("td");
    const whole = text === null || text === undefined ? "–" : String(text);
    // A handler's error may be pages long, an id a thousand characters: a row stays a
    // row, and the whole text is the cell's title.
    const shown = className === "id" ? SHOWN_ID : SHOWN;
    td.textContent = whole.length > shown ? whole.slice(0, shown) + "…" : whole;
    if (whole.length > shown) td.title = whole;
    if (className) td.className = className;
    return td;
  }

  function showLanes(lanes) {
    // The bars share one scale, the deepest lane of the last minute, so that a
    // lane draining shows as a bar shrinking.
    const scale = Math.max(10, ...samples.map((s) => s.depth));
    const rows = lanes.map((lane) => {
      const tr = document.createElement("tr");
      tr.dataset.lane = lane.priority;
      const bar = document.createElement("td");
      bar.appendChild(depthBar(lane.queued, lane.in_flight, scale));
      tr.append(cell(lane.priority), bar);
      for (const field of ["queued", "in_flight", "retrying", "scheduled", "completed", "failed"]) {
        const td = cell(lane[field], "num");
        td.dataset.field = field;
        tr.appendChild(td);
      }
      return tr;
    });
    $("lanes").tBodies[0].replaceChildren(...rows);
  }

  function svgElement(name, attributes) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    return element;
  }

  function depthBar(queued, inFlight, scale) {
    const svg = svgElement("svg", { class: "bar", viewBox: "0 0 100 10", preserveAspectRatio: "none" });
    const flight = (100 * inFlight) / scale;
    const waiting = (100 * queued) / scale;
    svg.append(
      svgElement("rect", { class: "track", x: 0, y: 0, width: 100, height: 10 }),
      svgElement("rect", { class: "in-flight", x: 0, y: 0, width: flight, height: 10 }),
      svgElement("rect", { class: "queued", x: flight, y: 0, width: waiting, height: 10 }),
    );
    return svg;
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 0.001) return (value * 1e6).toFixed(0) + " µs";
    if (value < 1) return (value * 1000).toFixed(value < 0.01 ? 2 : 1) + " ms";
    return value.toFixed(2) + " s";
  }

  function showCharts(overview) {
    const waitTop = niceTop(samples.flatMap((s) => [s.p50, s.p99]));
    sparkline($("waits"), [samples.map((s) => s.p50), samples.map((s) => s.p99)], ["p50", "p99"], waitTop);
    $("wait-now").textContent = "p50 " + seconds(overview.wait_p50) + ", p99 " + seconds(overview.wait_p99);
    $("wait-top").textContent = seconds(waitTop);
    const rateTop = niceTop(samples.map((s) => s.rate));
    sparkline($("rate"), [samples.map((s) => s.rate)], ["done"], rateTop);
    $("rate-top").textContent = rateTop < 10 ? rateTop.toPrecision(2) : rateTop.toFixed(0);
  }

  function niceTop(values) {
    // 1, 2 or 5 times a power of ten: a top the eye can read.
    const most = Math.max(0, ...values.filter((v) => v !== null && v !== undefined));
    if (most <= 0) return 1;
    const power = 10 ** Math.floor(Math.log10(most));
    for (const step of [1, 2, 5, 10]) if (most <= step * power) return step * power;
    return 10 * power;
  }

  function sparkline(svg, series, classes, top) {
    // Each series, newest on the right; a sample without a value breaks the line.
    const lines = [];
    series.forEach((values, k) => {
      let points = [];
      const flush = () => {
        if (points.length > 1) lines.push(svgElement("polyline", { class: classes[k], points: points.join(" ") }));
        points = [];
      };
      values.forEach((value, i) => {
        if (value === null || value === undefined) return flush();
        const x = 300 - (values.length - 1 - i) * (300 / (SPAN - 1));
        const y = 88 - (Math.min(value, top) / top) * 84;
        points.push(x.toFixed(1) + "," + y.toFixed(1));
      });
      flush();
    });
    svg.replaceChildren(...lines);
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleTimeString() : "–";
  }

  function showFailures(failures) {
    const rows = failures.map((f) => {
      const tr = document.createElement("tr");
      tr.dataset.id = f.id;
      tr.append(
        cell(when(f.failed_at)),
        cell(f.id, "id"),
        cell(f.priority),
        cell(f.status === "failed" ? "dead" : f.status),
        cell(f.attempts, "num"),
        cell(f.last_error, "err"),
      );
      return tr;
    });
    $("failures").tBodies[0].replaceChildren(...rows);
    $("failures-empty").hidden = rows.length > 0;
  }

  function showDead(dead) {
    const rows = dead.jobs.map((job) => {
      const tr = document.createElement("tr");
      tr.dataset.id = job.id;
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Replay";
      button.addEventListener("click", () => replay(job.id, button));
      const action = document.createElement("td");
      action.appendChild(button);
      tr.append(
        cell(when(job.finished_at)),
        cell(job.id, "id"),
        cell(job.priority),
        cell(job.attempts, "num"),
        cell(job.last_error, "err"),
        action,
      );
      return tr;
    });
    $("dead-letters").tBodies[0].replaceChildren(...rows);
    $("dead-empty").hidden = rows.length > 0;
    $("dead-total").textContent = dead.total > dead.jobs.length
      ? "the oldest " + dead.jobs.length + " of " + dead.total
      : String(dead.total);
  }

  async function replay(id, button) {
    button.disabled = true;
    try {
      await request("POST", "/dlq/" + encodeURIComponent(id) + "/retry");
    } catch (error) {
      if (error instanceof Unauthorized) return askForToken();
      setState("replay of " + id + " refused: " + error.message, true);
    }
    tick(); // at once: the job leaves the list without waiting for the next read
  }

  tick();
})();
