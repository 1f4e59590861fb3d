// The annotation page: one pair at a time, answered by keyboard or buttons. The server
// journals every answer before it replies; the next pair's images are fetched while the
// person looks at the current one, so an answer moves on at once. Values from the server
// are data, never markup: nodes are built and their text set; nothing is parsed as HTML.
"use strict";

const client = sessionStorage.getItem("aas-client") ||
  (sessionStorage.setItem("aas-client", Math.random().toString(36).slice(2, 10)), sessionStorage.getItem("aas-client"));
const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = Object.assign(document.createElement(tag), props || {});
  node.append(...children);
  return node;
}
let current = null, upcoming = null, full = false, busy = false, lastStatus = null, viewed = [];

async function api(path, body) {
  const r = await fetch("api/" + path, body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  if (!r.ok) throw new Error(await failure(r));
  return r.json();
}

async function failure(r) {
  // the server's one-line message ({"error": ...} or {"detail": ...}), shown as text
  const text = await r.text();
  try { const j = JSON.parse(text); return String(j.error || j.detail || text); } catch { return text || r.statusText; }
}

function imageUrl(i, size) { return `api/image/${i}?crop=${full ? 0 : 1}&max_side=${size || 1400}`; }

function preload(pair) {
  if (!pair) return Promise.resolve();
  return Promise.all([pair.u, pair.v].map((i) => new Promise((res) => {
    const im = new Image(); im.onload = im.onerror = res; im.src = imageUrl(i);
  })));
}

function showStatus(s) {
  lastStatus = s;
  $("run").textContent = s.run;
  $("cycle").textContent = s.cycle ?? "–";
  $("progress").textContent = `${s.answered} / ${s.total}`;
  $("bar").style.width = s.total ? `${100 * s.answered / s.total}%` : "0";
  $("budget").textContent = `${s.asked_total} pairs asked · ${(100 * s.utilised_budget).toFixed(3)}% of all pairs`;
  const done = s.waiting && s.complete;
  $("done").hidden = !done;
  $("idle").hidden = s.waiting;
  $("annotate").hidden = !s.waiting || (done && !current);
  if (done) {
    $("done-total").textContent = s.total; $("done-cycle").textContent = s.cycle;
    $("done-serve").hidden = !s.serve_mode; $("done-resume").hidden = s.serve_mode;
    $("resume").textContent = s.resume;
  }
  if (!s.waiting) $("idle-note").textContent = s.finished ? "The run has finished." :
    (s.serve_mode ? "Training is running; pairs appear here when the next cycle needs answers." :
      "Nothing is pending for this run.");
}

function render(pair) {
  current = pair;
  if (!pair) { $("annotate").hidden = true; return; }
  $("annotate").hidden = false;
  $("pair-index").textContent = pair.i + 1; $("pair-total").textContent = pair.total;
  $("u").textContent = pair.u; $("v").textContent = pair.v;
  $("img-u").src = imageUrl(pair.u); $("img-v").src = imageUrl(pair.v);
  $("pair-answer").textContent = pair.answer ? `answered: ${pair.answer.toLowerCase().replace("_", "-")}` : "";
  for (const f of ["frame-u", "frame-v"]) $(f).classList.remove("zoomed");
  if (!$("context").hidden) loadContext();
  if (!viewed.includes(pair.i)) viewed.push(pair.i);
}

async function advance(after) {
  return (await api("next", {client, after})).pair;
}

function prefetch() {
  // lease and load the pair after the current one while the person looks at this one
  upcoming = current ? advance(current.i).then((p) => { preload(p); return p; }) : null;
}

async function next() {
  const p = upcoming ? await upcoming : null;
  upcoming = null;
  if (p && p.answer === null && !(current && p.i === current.i)) render(p);
  else render(await advance(current ? current.i : undefined));
  prefetch();
}

async function answer(kind) {
  // A key answers the pair on screen; one pressed during the few milliseconds the next pair
  // takes to appear is ignored rather than given to a pair the person has not seen.
  if (!current || busy) return;
  busy = true;
  let r = null;
  try {
    r = await api("answer", {i: current.i, answer: kind, client});
    if (r.status === "contradiction") { showConflict(kind, r.conflicts); return; }
    if (r.status === "already") toast(`someone already answered this pair: ${r.answer.toLowerCase()}`);
    await next();
  } catch (e) { toast(e.message); } finally {
    busy = false;
    if (r) showStatus(r);  // the progress moves once the next pair is on screen
  }
}

function showConflict(kind, conflicts) {
  $("conflict-answer").textContent = kind; $("conflict-pair").textContent = `${current.u} and ${current.v}`;
  $("conflict-list").replaceChildren(...conflicts.map((c) => el("li", {},
    el("img", {src: imageUrl(c.u, 120)}), el("img", {src: imageUrl(c.v, 120)}), ` images ${c.u} and ${c.v}: `,
    el("b", {textContent: c.answer === "MUST_LINK" ? "same" : c.answer === "CANNOT_LINK" ? "different" : "unsure"}),
    ` (cycle ${c.cycle})`)));
  $("conflict").hidden = false;
}

async function resolve(change) {
  $("conflict").hidden = true;
  if (change) {
    const r = await api("answer", {i: current.i, answer: change, client, correct: true});
    showStatus(r);
    if (r.status === "contradiction") { showConflict(change, r.conflicts); return; }
  }
  await next();
}

async function undo() {
  const r = await api("undo", {client});
  showStatus(r);
  if (r.status === "undone") { upcoming = null; render(await api(`pair/${r.i}`)); toast("answer withdrawn"); }
}

async function step(delta) {
  if (!current) return;
  const k = viewed.indexOf(current.i) + delta;
  if (delta < 0 && k >= 0) render(await api(`pair/${viewed[k]}`));
  else if (delta > 0) { if (k < viewed.length) render(await api(`pair/${viewed[k]}`)); else await next(); }
}

async function loadContext() {
  $("cu").textContent = current.u; $("cv").textContent = current.v;
  for (const [side, img] of [["ctx-u", current.u], ["ctx-v", current.v]]) {
    const r = await api(`context/${img}`);
    $(side).replaceChildren(...(r.others.length ? r.others.map((j) => el("img", {title: `image ${j}`, src: imageUrl(j, 200)}))
      : [el("em", {textContent: "no other image in its group"})]));
  }
}

function toast(text) {
  $("toast").textContent = text; $("toast").hidden = false;
  clearTimeout(toast.t); toast.t = setTimeout(() => { $("toast").hidden = true; }, 2500);
}

function zoom(frame, ev) {
  const img = frame.querySelector("img");
  if (frame.classList.toggle("zoomed")) {
    const r = img.getBoundingClientRect();
    img.style.transformOrigin = `${100 * (ev.clientX - r.left) / r.width}% ${100 * (ev.clientY - r.top) / r.height}%`;
  }
}

$("same").onclick = () => answer("same");
$("different").onclick = () => answer("different");
$("unsure").onclick = () => answer("unsure");
$("undo").onclick = undo;
$("prev").onclick = () => step(-1);
$("next").onclick = () => step(1);
$("keep").onclick = () => resolve(null);
$("change-same").onclick = () => resolve("same");
$("change-different").onclick = () => resolve("different");
$("change-unsure").onclick = () => resolve("unsure");
$("toggle-full").onclick = () => { full = !full; render(current); };
$("toggle-context").onclick = () => { $("context").hidden = !$("context").hidden; if (!$("context").hidden) loadContext(); };
for (const f of ["frame-u", "frame-v"]) $(f).onclick = (ev) => zoom($(f), ev);

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (!$("conflict").hidden) { if (ev.key === "k" || ev.key === "Escape") resolve(null); return; }
  const keys = {s: () => answer("same"), d: () => answer("different"), u: () => answer("unsure"), z: undo,
    ArrowLeft: () => step(-1), ArrowRight: () => step(1), f: () => $("toggle-full").click(),
    c: () => $("toggle-context").click()};
  const f = keys[ev.key.length === 1 ? ev.key.toLowerCase() : ev.key];
  if (f) { ev.preventDefault(); f(); }
});

async function poll() {
  const s = await api("status");
  showStatus(s);
  if (s.waiting && !s.complete && !current) await next();
}

(async () => { await poll(); setInterval(() => { if (!current || lastStatus.complete || !lastStatus.waiting) poll(); }, 3000); })();
