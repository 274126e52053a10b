// report.html's behaviour: builds the four views from the JSON in #csr-data (written by csr_vlm/report_html.py).
// Text from the run goes in through textContent only; the plots are SVG made by the report itself.
"use strict";
const D = JSON.parse(document.getElementById("csr-data").textContent);
const PAGE = 100; // image cards added per "show more"
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
  return e;
}
const fmt = (v) => v === null || v === undefined ? "-"
  : (typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : String(v));

// ---------------------------------------------------------------- tabs and notes
function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("on", s.id === name);
}
for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));

if (D.notes.length) {
  const box = $("notes");
  box.hidden = false;
  box.append(el("h2", {text: "What this run directory is missing"}),
             el("ul", {}, ...D.notes.map((n) => el("li", {text: n}))));
}

// ---------------------------------------------------------------- overview
function overview() {
  const o = D.overview;
  if (!o || !o.rows.length) { $("rounds-wrap").append(el("p", {text: "No round has metrics yet."})); return; }
  const head = el("tr", {}, ...o.columns.map((c) => el("th", {text: c})));
  const rows = o.rows.map((row) => {
    const tr = el("tr", {}, ...row.map((v, i) => {
      const c = o.columns[i];
      const td = el("td", {text: c === "round" && row[0] === o.selected ? `${v} (selected)` : fmt(v)});
      if (c === "guards" && v) td.className = v;
      return td;
    }));
    if (row[0] === o.selected) tr.className = "selected";
    return tr;
  });
  $("rounds-wrap").append(el("table", {id: "rounds-table"}, el("thead", {}, head), el("tbody", {}, ...rows)));
  const guards = Object.entries(o.guards || {}).map(([m, b]) => `${m} ${b}`).join(", ");
  $("rounds-wrap").append(el("p", {class: "lead", text:
    (o.selected === null || o.selected === undefined ? "No round was selected (the loop has not finished)" :
      `Selected round: ${o.selected}` + (o.select_on ? `, best dev ${o.select_on}` : ", the last round")) +
    (guards ? `; guards: ${guards} ("fail": the round cannot be selected).` : ".")}));
}

// ---------------------------------------------------------------- images
const K = D.rounds; // round numbers, in the order of each image's "r" list
const slotOf = (k) => K.indexOf(k);
const hallucinated = (e) => new Set(e ? e.m.filter((m) => m[4]).map((m) => m[3]) : []);
const named = (e) => new Set(e ? e.m.filter((m) => !m[4]).map((m) => m[3]) : []);
const minus = (a, b) => [...a].filter((x) => !b.has(x));

function refRound(k) {
  if ($("compare").value === "base") return K.includes(0) ? 0 : K[0];
  const i = K.indexOf(k);
  return i > 0 ? K[i - 1] : null;
}

function matches(img, k, mode, obj) {
  const cur = img.r[slotOf(k)];
  if (mode === "all") return !obj || img.gt.includes(obj) || img.r.some((e) => e && e.m.some((m) => m[3] === obj));
  if (!cur) return false;
  if (mode === "halluc") return [...hallucinated(cur)].some((o) => !obj || o === obj);
  const ref = refRound(k) === null ? null : img.r[slotOf(refRound(k))];
  if (!ref) return false;
  const changed = mode === "removed" ? minus(hallucinated(ref), hallucinated(cur))
    : mode === "added" ? minus(hallucinated(cur), hallucinated(ref)) : minus(named(ref), named(cur));
  return changed.some((o) => !obj || o === obj);
}

function caption(e) {
  const p = el("span", {class: "text"});
  let at = 0;
  const listed = [];
  for (const [s, end, word, obj, bad] of e.m) {
    const title = `${word} \u2192 ${obj}` + (bad ? " (not in the image)" : "");
    const cls = bad ? "bad" : "ok";
    if (s < 0) { listed.push(el("mark", {class: cls, title, text: `${word} \u2192 ${obj}`}), " "); continue; }
    p.append(e.c.slice(at, s), el("mark", {class: cls, title, "data-object": obj, text: e.c.slice(s, end)}));
    at = end;
  }
  p.append(e.c.slice(at));
  return [p, listed.length ? el("div", {class: "listed"}, "mentions: ", ...listed) : null];
}

function card(img, k) {
  const ref = refRound(k);
  const body = el("div", {class: "body"},
    el("h3", {text: `image ${img.id}` + (img.file ? ` \u00b7 ${img.file}` : "")}),
    el("div", {class: "gt", text: "ground truth: " + (img.gt.join(", ") || "(no objects)")}));
  K.forEach((kk, slot) => {
    const e = img.r[slot];
    if (!e) return;
    const row = el("div", {class: "cap" + (kk === k ? " cur" : kk === ref ? " ref" : ""), "data-round": String(kk)},
      el("span", {class: "k", text: kk === 0 ? "base" : `round ${kk}`}), ...caption(e));
    if (e.x.length) row.append(el("div", {class: "miss", text: "missed: " + e.x.join(", ")}));
    body.append(row);
  });
  const pic = img.thumb ? el("img", {src: img.thumb, alt: `image ${img.id}`})
    : el("div", {class: "noimg", text: "no image"});
  return el("div", {class: "image-card", "data-id": String(img.id)}, pic, body);
}

let shown = [], drawn = 0;
function drawImages() {
  const k = Number($("round").value), mode = $("filter").value, obj = $("object").value;
  shown = D.images.filter((img) => matches(img, k, mode, obj));
  $("image-list").replaceChildren();
  drawn = 0;
  more();
  $("image-count").textContent = `${shown.length} of ${D.images.length} images`;
}
function more() {
  const k = Number($("round").value);
  const frag = document.createDocumentFragment();
  for (const img of shown.slice(drawn, drawn + PAGE)) frag.append(card(img, k));
  $("image-list").append(frag);
  drawn = Math.min(shown.length, drawn + PAGE);
  $("more-images").hidden = drawn >= shown.length;
}

function imagesView() {
  for (const k of K) $("round").append(el("option", {value: String(k), text: k === 0 ? "0 (base)" : String(k)}));
  $("round").value = String(K.length ? K[K.length - 1] : 0);
  const objectsOf = (img) => img.gt.concat(...img.r.map((e) => e ? e.m.map((m) => m[3]) : []));
  const objects = [...new Set(D.images.flatMap(objectsOf))].sort();
  for (const o of objects) $("object").append(el("option", {value: o, text: o}));
  for (const id of ["round", "compare", "filter", "object"]) $(id).addEventListener("change", drawImages);
  $("more-images").addEventListener("click", more);
  drawImages();
  objectsView(objects);
}

// ---------------------------------------------------------------- objects
function objectsView(objects) {
  if (!objects.length) { $("objects-wrap").append(el("p", {text: "No test captions in this run."})); return; }
  const count = (o, slot) =>
    D.images.filter((img) => img.r[slot] && img.r[slot].m.some((m) => m[4] && m[3] === o)).length;
  const rows = objects.map((o) => {
    const inGt = D.images.filter((img) => img.gt.includes(o)).length;
    const counts = K.map((k, slot) => count(o, slot));
    const cells = K.map((k, slot) => {
      const n = counts[slot];
      const a = el("a", {class: "n", "data-object": o, "data-round": String(k), text: String(n)});
      a.addEventListener("click", () => {
        $("round").value = String(k); $("filter").value = "halluc"; $("object").value = o;
        drawImages(); showTab("images");
      });
      return el("td", {}, n ? a : "0");
    });
    const tr = el("tr", {"data-object": o}, el("td", {text: o}), el("td", {text: String(inGt)}), ...cells);
    return {o, total: counts.reduce((a, b) => a + b, 0), tr};
  }).sort((a, b) => b.total - a.total || a.o.localeCompare(b.o));
  const head = el("tr", {}, el("th", {text: "object"}), el("th", {text: "in GT of images"}),
    ...K.map((k) => el("th", {text: k === 0 ? "hallucinated: base" : `round ${k}`})));
  const body = el("tbody", {}, ...rows.map((r) => r.tr));
  $("objects-wrap").append(el("table", {id: "objects-table"}, el("thead", {}, head), body));
}

// ---------------------------------------------------------------- pairs
function side(s, cls, title, tau) {
  const box = el("div", {class: `side ${cls}`}, el("h4", {text: title}));
  if (!s.s) { box.append(el("div", {text: s.t})); return box; }
  const rows = s.s.map(([text, rt, ri, r, rep]) => {
    const doubt = (tau !== null && ri !== null && ri < tau) || rep;
    return el("tr", {class: doubt ? "doubt" : "", title: doubt ? (rep ? "a repeat" : `R_I below tau = ${tau}`) : ""},
      el("td", {text: text || "(stops here)"}), el("td", {text: fmt(rt)}), el("td", {text: fmt(ri)}),
      el("td", {text: fmt(r)}));
  });
  const head = el("tr", {}, ...["sentence", "R_T", "R_I", "R"].map((h) => el("th", {text: h})));
  box.append(el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
  return box;
}

function pairCard(p, k, tau) {
  const meta = `round ${k} \u00b7 ${p.id}` + (p.img ? ` \u00b7 ${p.img}` : "") +
    (p.lvl === "sentence" ? ` \u00b7 sentence pair at depth ${fmt(p.dep)}` : "") + ` \u00b7 margin ${fmt(p.m)}` +
    ` \u00b7 R_I chosen ${fmt(p.cri)} / rejected ${fmt(p.rri)}` + (p.anc ? " \u00b7 anchor (SFT only)" : "") +
    (p.w ? ` \u00b7 ${p.w} side written, not sampled` : "");
  const box = el("div", {class: "pair", "data-pair": String(p.id), "data-level": p.lvl || "response"},
    el("div", {class: "meta", text: meta}),
    el("div", {}, el("b", {text: "prompt: "}), p.p));
  if (p.lvl === "sentence") {
    box.append(el("div", {class: "prefix"}, el("b", {text: "shared prefix: "}), p.pre || "(none: the first sentence)"));
  }
  const next = p.lvl === "sentence" ? " next sentence" : "";
  box.append(el("div", {class: "sides"},
    side(p.c, "chosen", "chosen" + next, tau), side(p.r, "rejected", "rejected" + next, tau)));
  return box;
}

function pairsView() {
  if (!D.pairs.length) { $("pair-rounds").append(el("p", {text: "No round has preference pairs yet."})); return; }
  const byImage = new Map();
  for (const r of D.pairs) for (const p of r.pairs) {
    if (!byImage.has(p.img)) byImage.set(p.img, []);
    byImage.get(p.img).push([p, r.round, r.tau]);
  }
  for (const name of [...byImage.keys()].sort()) $("pair-images").append(el("option", {value: name}));
  $("pair-image").addEventListener("input", () => {
    const hits = byImage.get($("pair-image").value.trim()) || [];
    $("pair-image-list").replaceChildren(...hits.map(([p, k, tau]) => pairCard(p, k, tau)));
    $("pair-image-count").textContent = $("pair-image").value ? `${hits.length} pairs` : "";
  });
  for (const r of D.pairs) {
    const sec = el("div", {class: "pair-round", "data-round": String(r.round)},
      el("h2", {text: `Round ${r.round}: ${r.pairs.length} pairs` + (r.tau === null ? "" : `, tau = ${r.tau}`)}));
    const hists = el("div", {class: "hists"});
    hists.innerHTML = r.hist || "";
    sec.append(hists, el("p", {class: "lead", text: `A sample of ${r.sample.length} pairs:`}));
    for (const i of r.sample) sec.append(pairCard(r.pairs[i], r.round, r.tau));
    $("pair-rounds").append(sec);
  }
}

overview();
imagesView();
pairsView();
document.body.dataset.ready = "1";
