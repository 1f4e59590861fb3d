// The review page: every answer that holds, newest first, with a correction per row. Values
// from the server are data, never markup: nodes are built and their text set.
"use strict";

const $ = (id) => document.getElementById(id);
const client = sessionStorage.getItem("aas-client") || "review";
const name = (a) => ({MUST_LINK: "same", CANNOT_LINK: "different", UNSURE: "unsure"})[a] || String(a);
const cycles = new Set();

function el(tag, props, ...children) {
  const node = Object.assign(document.createElement(tag), props || {});
  node.append(...children);
  return node;
}

function toast(text) {
  $("toast").textContent = text; $("toast").hidden = false;
  setTimeout(() => { $("toast").hidden = true; }, 2000);
}

function fixer(a) {
  const select = el("select", {className: "fix"}, el("option", {value: ""}),
    ...["same", "different", "unsure"].map((v) => el("option", {value: v, textContent: v})));
  select.onchange = async () => {
    const r = await fetch("api/correct", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({u: a.u, v: a.v, answer: select.value, client})});
    toast(r.ok ? "correction recorded" : await r.text());
    load();
  };
  return select;
}

function row(a) {
  const thumb = (i) => el("td", {}, el("img", {loading: "lazy", src: `api/image/${Number(a[i])}?max_side=160`}));
  const cell = (text) => el("td", {textContent: String(text)});
  return el("tr", {}, thumb("u"), thumb("v"),
    cell(name(a.answer) + (a.kind === "correction" ? " (corrected)" : "")), cell(a.cycle), cell(a.pool),
    cell(a.source), el("td", {}, fixer(a)));
}

async function load() {
  const q = new URLSearchParams();
  for (const f of ["cycle", "answer", "pool"]) if ($("f-" + f).value) q.set(f, $("f-" + f).value);
  const r = await (await fetch("api/answers?" + q)).json();
  $("run").textContent = r.run;
  $("count").textContent = `${r.answers.length} answers`;
  for (const a of r.answers) if (!cycles.has(a.cycle)) {
    cycles.add(a.cycle); $("f-cycle").append(el("option", {textContent: String(a.cycle)}));
  }
  $("rows").replaceChildren(...r.answers.map(row));
}

for (const f of ["cycle", "answer", "pool"]) $("f-" + f).onchange = load;
load();
