"""The page `synthscale serve` shows: one file, no external scripts or fonts (it works offline)."""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>synthscale: race the paradigms</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1100px; }
  h1 { font-size: 1.4em; margin: 0 0 .2em; }
  .sub { color: #666; margin-bottom: 1em; }
  form { display: grid; grid-template-columns: max-content 1fr; gap: .5em 1em; align-items: center;
         background: #f6f6f6; padding: 1em; border-radius: 6px; }
  input[type=text] { width: 100%; font-size: 1.05em; padding: .3em; box-sizing: border-box; }
  input[type=number] { width: 5em; }
  .steps label { margin-right: 1.2em; white-space: nowrap; }
  button { font-size: 1.05em; padding: .4em 1.5em; }
  #notes { margin: .8em 0; }
  .note { background: #fff6d5; border: 1px solid #e6c95c; padding: .4em .6em; margin: .3em 0; border-radius: 4px; }
  .error { background: #fde2e2; border: 1px solid #d66; padding: .4em .6em; margin: .3em 0; border-radius: 4px; }
  #race { display: grid; grid-template-columns: repeat(3, 1fr); gap: 1em; margin-top: 1em; }
  .col { border: 1px solid #ddd; border-radius: 6px; padding: .6em; min-height: 12em; }
  .col h2 { font-size: 1.05em; margin: 0 0 .2em; }
  .model { color: #555; font-size: .85em; margin-bottom: .5em; }
  .imgs img { width: 128px; height: 128px; image-rendering: pixelated; margin: 2px; border: 1px solid #ccc; }
  .stats { font-size: .9em; margin-top: .4em; }
  .stats b { font-variant-numeric: tabular-nums; }
  .wait { color: #888; }
</style>
</head>
<body>
<h1>Race the paradigms: <span id="name">…</span></h1>
<div class="sub">Each column is one paradigm's best model (lowest fd-probe) at the training compute you pick.
  Latency is measured on this machine (<span id="device"></span>); FLOPs per image are analytic (2 per multiply-add,
  guidance included, decoder excluded). <span id="report"></span></div>
<form id="form">
  <label for="prompt">Prompt</label>
  <input type="text" id="prompt" name="prompt" value="a small red circle above a large blue square" autofocus>
  <label for="level">Training compute</label>
  <div><input type="range" id="level" min="0" max="0" value="0" step="1"> <b id="flops"></b>
    <div class="model" id="models"></div></div>
  <label>Steps</label>
  <div class="steps" id="steps"></div>
  <label for="cfg">CFG scale</label>
  <div><input type="number" id="cfg" min="0" max="20" step="0.5" value="3">
    &nbsp; Seed <input type="number" id="seed" min="0" value="0">
    &nbsp; Images <input type="number" id="n" min="1" max="8" value="4"></div>
  <span></span>
  <div><button type="submit" id="go">Draw</button></div>
</form>
<div id="notes"></div>
<div id="race"></div>
<script>
"use strict";
const NAMES = {flow: "Diffusion (flow matching)", masked: "Masked tokens", autoregressive: "Next token"};
let study = null;
const $ = (id) => document.getElementById(id);
const fmt = (x) => x >= 1e4 || x < 1e-2 ? x.toExponential(2) : x.toPrecision(3);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function level() { return study.levels[+$("level").value]; }
function showLevel() {
  const lv = level();
  $("flops").textContent = fmt(lv.train_flops) + " training FLOPs (level " + (lv.index + 1) + " of "
    + study.levels.length + ")";
  $("models").textContent = Object.values(lv.models).map((m) => m.label).join(" · ");
  const box = $("steps");
  const old = {};
  for (const inp of box.querySelectorAll("input")) old[inp.dataset.objective] = +inp.value;
  box.textContent = "";
  for (const [obj, m] of Object.entries(lv.models)) {
    const [lo, hi] = m.limits.steps_range;
    const lab = el("label", "", (NAMES[obj] || obj) + " ");
    const inp = el("input");
    inp.type = "number"; inp.min = lo; if (hi !== null) inp.max = hi;
    inp.dataset.objective = obj;
    const keep = old[obj];
    inp.value = keep && keep >= lo && (hi === null || keep <= hi) ? keep : m.steps;
    if (lo === hi) { inp.disabled = true; inp.title = "one step per image token"; }
    lab.appendChild(inp);
    box.appendChild(lab);
  }
}
async function load() {
  const r = await fetch("/api/study");
  study = await r.json();
  $("name").textContent = study.name;
  $("device").textContent = study.device;
  if (study.report) {
    const a = el("a", "", "Open the study's report");
    a.href = study.report; a.target = "_blank";
    $("report").appendChild(a);
  }
  $("level").max = study.levels.length - 1;
  $("level").value = study.levels.length - 1;
  const first = Object.values(level().models)[0];
  if (first) $("cfg").value = first.cfg_scale;
  fromLink();
}
// A link can fill the form (?prompt=…&level=2&seed=3&n=4&cfg=2&steps_flow=20) and start the race (&run=1).
function fromLink() {
  const q = new URLSearchParams(location.search);
  for (const key of ["prompt", "seed", "n", "cfg"]) if (q.has(key)) $(key).value = q.get(key);
  if (q.has("level")) $("level").value = Math.min(+q.get("level"), study.levels.length - 1);
  showLevel();
  for (const inp of document.querySelectorAll("#steps input")) {
    const v = q.get("steps_" + inp.dataset.objective);
    if (v !== null && !inp.disabled) inp.value = v;
  }
  if (q.get("run") === "1") $("form").requestSubmit();
}
function note(text, cls) { $("notes").appendChild(el("div", cls || "note", text)); }
async function race(ev) {
  ev.preventDefault();
  $("notes").textContent = "";
  $("race").textContent = "";
  if (!/[\p{L}\p{N}]/u.test($("prompt").value)) {
    note("the prompt is empty: type a caption, e.g. 'a small red circle above a large blue square'", "error");
    return;
  }
  const lv = level();
  const seen = new Set();
  const jobs = Object.entries(lv.models).map(async ([obj, m]) => {
    const col = el("div", "col");
    col.id = "col-" + obj;
    col.appendChild(el("h2", "", NAMES[obj] || obj));
    col.appendChild(el("div", "model", m.label));
    const status = el("div", "wait", "drawing…");
    col.appendChild(status);
    $("race").appendChild(col);
    const t0 = performance.now();
    const tick = () => { status.textContent = "drawing… " + ((performance.now() - t0) / 1000).toFixed(1) + " s"; };
    const timer = setInterval(tick, 100);
    const stepsInput = document.querySelector('#steps input[data-objective="' + obj + '"]');
    const body = {prompt: $("prompt").value, objective: obj, level: lv.index, steps: +stepsInput.value,
                  cfg: +$("cfg").value, seed: +$("seed").value, n: +$("n").value};
    try {
      const r = await fetch("/api/generate", {method: "POST", headers: {"Content-Type": "application/json"},
                                             body: JSON.stringify(body)});
      const out = await r.json();
      clearInterval(timer);
      for (const n of out.notes || []) if (!seen.has(n)) { seen.add(n); note(n); }
      if (!r.ok) { status.className = "error"; status.textContent = out.error; return; }
      status.remove();
      const imgs = el("div", "imgs");
      for (const b64 of out.images) {
        const img = el("img"); img.src = "data:image/png;base64," + b64; img.alt = out.used_prompt;
        imgs.appendChild(img);
      }
      col.appendChild(imgs);
      const stats = el("div", "stats");
      stats.innerHTML = "latency <b></b> s for " + out.n + " image" + (out.n > 1 ? "s" : "")
        + " · <b></b> FLOPs/image<br>" + out.steps + " steps · CFG " + out.cfg + " · seed " + out.seed
        + (out.load_s > 0 ? " · model loaded in " + out.load_s.toFixed(2) + " s" : "")
        + (out.queued_s > 0.05 ? " · waited " + out.queued_s.toFixed(2) + " s for the model" : "");
      const bs = stats.querySelectorAll("b");
      bs[0].textContent = out.latency_s.toFixed(3);
      bs[1].textContent = fmt(out.flops_per_image);
      col.appendChild(stats);
      col.dataset.done = "1";
    } catch (e) {
      clearInterval(timer);
      status.className = "error"; status.textContent = "request failed: " + e;
    }
  });
  $("go").disabled = true;
  await Promise.all(jobs);
  $("go").disabled = false;
  document.body.dataset.finished = String(document.querySelectorAll(".col[data-done]").length);
}
$("level").addEventListener("input", showLevel);
$("form").addEventListener("submit", race);
load().catch((e) => note("could not read the study: " + e, "error"));
</script>
</body>
</html>
"""
