// The console's few scripts: live job rows (server-sent events), small SVG charts. No dependencies.
"use strict";
const vt = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const el = (name, attrs, parent) => {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  };
  const fmt = (v) => Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(2) : (+v.toPrecision(3)).toString();
  const text = (s) => document.createTextNode(s == null ? "" : String(s));

  function setCells(row, j) {
    const p = j.progress || {};
    row.className = "state-" + j.state;
    row.querySelector(".state").textContent = j.state;
    row.querySelector(".bar > div").style.width = (p.percent || 0) + "%";
    row.querySelector(".pct").textContent = Math.round(p.percent || 0) + "%";
    row.querySelector(".done").textContent = `${p.done}/${p.total}`;
    row.querySelector(".eta").textContent = !j.terminal && p.eta_seconds >= 0 ? Math.round(p.eta_seconds) + " s" : "";
    const msg = row.querySelector(".message");
    msg.textContent = "";
    if (j.state === "FAILED") {
      const s = document.createElement("span"); s.className = "error"; s.textContent = (j.error || {}).message || "";
      msg.appendChild(s);
    } else msg.textContent = p.message || "";
    const outs = row.querySelector(".outputs");
    outs.textContent = "";
    for (const [k, v] of Object.entries(j.result || {})) {
      if (typeof v === "string" && v.startsWith("s3://")) {
        const a = document.createElement("a"); a.href = "/files?uri=" + encodeURIComponent(v); a.title = v; a.textContent = k;
        outs.appendChild(a); outs.appendChild(text(" "));
      }
    }
  }

  function newRow(j) {
    const tr = document.createElement("tr");
    tr.id = "job-" + j.id; tr.dataset.id = j.id;
    const link = document.createElement("a"); link.href = `/jobs/${j.service}/${j.id}`; link.textContent = j.id;
    const labels = Object.entries(j.labels || {}).map(([k, v]) => ` ${k}=${v}`).join("");
    const cells = ["", j.service, j.kind + labels, "", "", "", "", ""];
    const classes = ["", "", "", "state", "progress", "eta", "message", "outputs"];
    cells.forEach((c, i) => { const td = document.createElement("td"); if (classes[i]) td.className = classes[i]; td.appendChild(text(c)); tr.appendChild(td); });
    tr.cells[0].textContent = ""; tr.cells[0].appendChild(link);
    tr.cells[4].innerHTML = '<div class="bar"><div></div></div> <span class="pct"></span> <span class="done"></span>';
    return tr;
  }

  function liveJobs(url) {
    const body = document.querySelector("#jobs tbody"), live = document.getElementById("live");
    const es = new EventSource(url);
    es.onopen = () => { live.textContent = "live"; };
    es.onerror = () => { live.textContent = "reconnecting…"; };
    es.addEventListener("job", (ev) => {
      const j = JSON.parse(ev.data);
      let row = document.getElementById("job-" + j.id);
      if (!row) { row = newRow(j); body.prepend(row); const none = document.getElementById("no-jobs"); if (none) none.remove(); }
      setCells(row, j);
      row.dataset.updates = String(+(row.dataset.updates || 0) + 1);
    });
  }

  // A line chart in SVG: points [[x, y], ...], axes with min/max labels, a hover read-out.
  function lineChart(box, points, opts) {
    box.textContent = "";
    const W = box.clientWidth || 480, H = opts.height || 200, L = 56, B = 24, T = 8, R = 8;
    const svg = el("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "plot" }, box);
    if (!points.length) { el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, svg).appendChild(text("waiting for the first points…")); return; }
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]).filter(Number.isFinite);
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x1 === x0) x1 = x0 + 1; if (y1 === y0) { y1 += Math.abs(y0) * 0.05 || 1; y0 -= Math.abs(y0) * 0.05 || 1; }
    const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R), sy = (y) => H - B - (y - y0) / (y1 - y0) * (H - B - T);
    el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }, svg);
    el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }, svg);
    [[y1, T + 10], [y0, H - B]].forEach(([v, y]) => el("text", { x: L - 4, y, "text-anchor": "end", class: "tick" }, svg).appendChild(text(fmt(v))));
    [[x0, L, "start"], [x1, W - R, "end"]].forEach(([v, x, a]) => el("text", { x, y: H - 6, "text-anchor": a, class: "tick" }, svg).appendChild(text(fmt(v))));
    const d = points.filter((p) => Number.isFinite(p[1])).map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    el("path", { d, class: "series" }, svg);
    const dot = el("circle", { r: 3, class: "dot", cx: -10, cy: -10 }, svg);
    const label = el("text", { x: W - R, y: T + 10, "text-anchor": "end", class: "readout" }, svg);
    svg.addEventListener("mousemove", (ev) => {
      const r = svg.getBoundingClientRect(), x = x0 + (ev.clientX - r.left - L) / (W - L - R) * (x1 - x0);
      let best = points[0];
      for (const p of points) if (Math.abs(p[0] - x) < Math.abs(best[0] - x)) best = p;
      dot.setAttribute("cx", sx(best[0])); dot.setAttribute("cy", sy(best[1]));
      label.textContent = `${opts.x || "x"} ${best[0]}: ${fmt(best[1])}`;
    });
    box.dataset.points = String(points.length);
  }

  // Horizontal bars from a [[label, value], ...] series stored in data-series, with values on hover.
  function barChart(box) {
    const series = JSON.parse(box.dataset.series || "[]").slice(0, 25);
    const W = box.clientWidth || 420, row = 20, L = Math.min(180, W * 0.4), H = series.length * row + 4;
    const max = Math.max(1, ...series.map((s) => s[1]));
    const svg = el("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "plot" }, box);
    series.forEach(([name, v], i) => {
      const y = i * row + 2, w = (W - L - 60) * v / max;
      const g = el("g", { class: "barrow" }, svg);
      el("title", {}, g).appendChild(text(`${name}: ${v}`));
      el("text", { x: L - 6, y: y + 14, "text-anchor": "end", class: "tick" }, g).appendChild(text(name.length > 24 ? name.slice(0, 23) + "…" : name));
      el("rect", { x: L, y: y + 3, width: Math.max(1, w), height: row - 6, class: "hbar" }, g);
      el("text", { x: L + w + 4, y: y + 14, class: "tick" }, g).appendChild(text(v.toLocaleString()));
    });
  }

  // A step's generated samples, added on top of the samples list unless the page already shows that step.
  function addSamples(p) {
    const box = document.getElementById("train-samples");
    if (!box || box.querySelector(`section[data-step="${p.step}"]`)) return;
    const none = document.getElementById("no-samples");
    if (none) none.remove();
    const url = (uri) => "/files?uri=" + encodeURIComponent(uri);
    const sec = document.createElement("section");
    sec.className = "samples"; sec.dataset.step = p.step;
    sec.appendChild(document.createElement("h3")).textContent = `step ${p.step}`;
    const row = sec.appendChild(document.createElement("div"));
    row.className = "side-by-side";
    p.generated.forEach((g) => {
      const fig = row.appendChild(document.createElement("figure"));
      const v = fig.appendChild(document.createElement("video"));
      Object.assign(v, { controls: true, muted: true, loop: true, playsInline: true, preload: "metadata", src: url(g.video), poster: url(g.sheet), width: 192 });
      const a = fig.appendChild(document.createElement("a"));
      a.href = url(g.sheet);
      const img = a.appendChild(document.createElement("img"));
      Object.assign(img, { src: url(g.sheet), alt: g.prompt_id, className: "sheet" });
      const cap = fig.appendChild(document.createElement("figcaption"));
      cap.textContent = `${g.prompt_id} · seed ${g.seed} — ${g.prompt}`;
    });
    box.insertBefore(sec, box.firstChild);
  }

  function liveTraining(url) {
    const pts = [];
    const draw = () => {
      lineChart(document.getElementById("loss-chart"), pts.map((p) => [p.step, p.loss]), { x: "step", height: 240 });
      lineChart(document.getElementById("val-chart"), pts.filter((p) => p.val_loss != null).map((p) => [p.step, p.val_loss]), { x: "step" });
      lineChart(document.getElementById("lr-chart"), pts.map((p) => [p.step, p.lr]), { x: "step" });
      lineChart(document.getElementById("time-chart"), pts.map((p) => [p.step, p.step_time_s]), { x: "step" });
      document.getElementById("points").textContent = pts.length;
    };
    draw();
    let es = null;
    const open = () => {
      const after = pts.length ? pts[pts.length - 1].step : 0;
      es = new EventSource(url + "?after=" + after);
      es.addEventListener("points", (ev) => {
        const fresh = JSON.parse(ev.data);
        pts.push(...fresh);
        fresh.filter((p) => p.generated).forEach(addSamples);
        draw();
      });
      es.addEventListener("job", (ev) => {
        const j = JSON.parse(ev.data);
        document.getElementById("train-state").textContent = j.state;
        document.getElementById("train-progress").textContent = j.progress.message;
      });
      es.addEventListener("end", () => es.close());
      es.onerror = () => { es.close(); setTimeout(open, 2000); };
    };
    open();
  }

  return { liveJobs, liveTraining, barChart, lineChart };
})();
