// grand browse: the page's script. Talks only to its own server (/api/images, /api/image/N, /image/N).
// Every text from the data goes into the page through textContent, never as HTML.
"use strict";

const PAGE = 50;
let offset = 0;
let current = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function filters() {
  const f = document.getElementById("filters");
  const q = new URLSearchParams();
  if (f.errors.checked) q.set("errors", "1");
  if (f.unverified.checked) q.set("unverified", "1");
  if (f.label.value.trim()) q.set("label", f.label.value.trim());
  if (+f.min_objects.value > 0) q.set("min_objects", f.min_objects.value);
  return q;
}

async function loadList() {
  const q = filters();
  q.set("offset", offset);
  q.set("limit", PAGE);
  const r = await (await fetch("/api/images?" + q)).json();
  const list = document.getElementById("list");
  list.replaceChildren();
  for (const it of r.items) {
    const meta = it.status === "error" ? "error: " + (Object.values(it.errors)[0] || "")
      : `${it.objects} objects, ${it.floating} floating` + (it.verified === false ? ", dense caption flagged" : "")
        + (Object.keys(it.errors).length ? ", errors at level " + Object.keys(it.errors).join(",") : "");
    const li = el("li", {class: "entry" + (it.status === "error" ? " error" : ""), "data-key": it.key,
                         onclick: () => { location.hash = "#/image/" + it.key; }},
                  el("div", {class: "id", text: it.image_id}), el("div", {class: "meta", text: meta}));
    if (current === it.key) li.classList.add("current");
    list.append(li);
  }
  document.getElementById("count").textContent = `${r.total} of ${r.images} images`;
  const last = Math.min(r.offset + r.items.length, r.total);
  document.getElementById("pageinfo").textContent = r.total ? `${r.offset + 1}-${last}` : "none";
  document.getElementById("prev").disabled = r.offset === 0;
  document.getElementById("next").disabled = last >= r.total;
}

// A caption as text nodes and coloured spans: each grounded phrase takes its first object's colour.
function captionNode(text, details, colors) {
  const marks = new Array(text.length).fill(null);
  (details || []).forEach((d, k) => {
    const span = d.tokens_positive || [];
    if (span.length !== 2) return;
    for (let i = Math.max(0, span[0]); i < Math.min(text.length, span[1]); i++) if (marks[i] === null) marks[i] = k;
  });
  const out = el("div", {class: "caption"});
  let i = 0;
  while (i < text.length) {
    let j = i;
    while (j < text.length && marks[j] === marks[i]) j++;
    const piece = text.slice(i, j);
    if (marks[i] === null) out.append(document.createTextNode(piece));
    else {
      const d = details[marks[i]];
      const ids = (d.ids || []).filter((id) => id in colors);
      const s = el("span", {class: "span" + (ids.length ? "" : " unlinked"), "data-ids": ids.join(","), text: piece,
                            title: ids.length ? "objects " + ids.join(", ") : "grounded to no shown object"});
      if (ids.length) s.style.background = colors[ids[0]] + "99";
      s.addEventListener("mouseenter", () => highlight(ids, true));
      s.addEventListener("mouseleave", () => highlight(ids, false));
      out.append(s);
    }
    i = j;
  }
  return out;
}

function highlight(ids, on) {
  const stage = document.querySelector(".stage");
  if (!stage) return;
  stage.classList.toggle("hovering", on && ids.length > 0);
  for (const id of ids) {
    stage.querySelectorAll(`[data-id="${id}"]`).forEach((n) => n.classList.toggle("hl", on));
  }
}

function section(title, ...children) {
  return el("section", {}, el("h3", {text: title}), ...children);
}

async function showImage(key) {
  current = key;
  document.querySelectorAll("#list li").forEach((li) => li.classList.toggle("current", +li.dataset.key === key));
  const main = document.getElementById("main");
  main.replaceChildren(el("p", {class: "muted", text: "loading…"}));
  const resp = await fetch("/api/image/" + key);
  if (!resp.ok) { main.replaceChildren(el("p", {class: "bad", text: "not found"})); return; }
  const d = await resp.json();
  const colors = {};
  d.objects_list.forEach((o) => { colors[o.id] = o.color; });
  const head = el("h2", {text: d.image_id});
  const parts = [head];
  for (const [lv, why] of Object.entries(d.errors)) parts.push(el("p", {class: "bad", text: `level ${lv}: ${why}`}));

  let picture = null, objects = null;
  const text = [];  // captions and attempts: beside the picture
  if (d.status === "ok") {
    const stage = el("div", {class: "stage"});
    const photo = el("img", {class: "photo", src: "/image/" + key, alt: d.image_id});
    stage.append(photo);
    const boxes = svg("svg", {class: "boxes", viewBox: `0 0 ${d.width} ${d.height}`, preserveAspectRatio: "none"});
    for (const o of d.objects_list) {
      if (o.mask) {
        stage.append(el("img", {class: "mask" + (o.floating ? " floating off" : ""), "data-id": o.id, src: o.mask,
                                alt: ""}));
      }
      const [x1, y1, x2, y2] = o.bbox;
      const g = svg("g", {"data-id": o.id, class: o.floating ? "floating off" : ""});
      g.append(svg("rect", {class: "box", x: x1, y: y1, width: Math.max(0, x2 - x1), height: Math.max(0, y2 - y1),
                            stroke: o.color}));
      const fontSize = Math.max(6, Math.round(Math.max(d.width, d.height) / 45));  // in image pixels
      const t = svg("text", {class: "tag", x: x1 + 2, y: Math.max(fontSize, y1 - 3), "font-size": fontSize,
                             "stroke-width": fontSize / 5});
      t.textContent = `${o.id}: ${o.label}`;
      g.append(t);
      boxes.append(g);
    }
    stage.append(boxes);
    const toggle = (name, checked, fn) => el("label", {}, el("input", {type: "checkbox", ...(checked ? {checked: ""} : {}),
                                                                      onchange: (ev) => fn(ev.target.checked)}), " " + name);
    const controls = el("div", {class: "controls"},
      toggle("masks", true, (on) => stage.querySelectorAll("img.mask").forEach((m) => {
        const row = document.querySelector(`input.obj[data-id="${m.dataset.id}"]`);
        m.classList.toggle("off", !on || (row && !row.checked));
      })),
      toggle("boxes", true, (on) => boxes.classList.toggle("off", !on)),
      toggle("floating objects", false, (on) => {
        document.querySelectorAll("input.obj.floating").forEach((c) => { c.checked = on; c.dispatchEvent(new Event("change")); });
      }));
    const rows = d.objects_list.map((o) => el("tr", {"data-id": o.id},
      el("td", {}, el("input", {type: "checkbox", class: "obj" + (o.floating ? " floating" : ""), "data-id": o.id,
                                ...(o.floating ? {} : {checked: ""}), onchange: (ev) => {
        stage.querySelectorAll(`[data-id="${o.id}"]`).forEach((n) => n.classList.toggle("off", !ev.target.checked));
      }})),
      el("td", {}, el("span", {class: "swatch", style: `background:${o.color}`})),
      el("td", {text: o.id}), el("td", {text: o.label + (o.floating ? " (floating)" : "")}),
      el("td", {text: o.score == null ? "" : o.score.toFixed(3)}), el("td", {text: o.models.join(", ")}),
      el("td", {text: o.depth == null ? "" : o.depth.toPrecision(3)}), el("td", {text: o.attributes.join("; ")})));
    const table = el("table", {class: "objs"}, el("tr", {}, ...["", "", "id", "label", "score", "models", "depth",
                                                               "attributes"].map((h) => el("th", {text: h}))), ...rows);
    picture = el("div", {class: "left"}, stage, controls);
    objects = section(`Objects (${d.objects} + ${d.floating} floating)`, el("div", {class: "scroll"}, table));
  }

  const caps = d.short_captions.map((c) => el("div", {}, el("span", {class: "muted", text: `[${c.model}]`}),
                                              captionNode(c.caption || "", c.details, colors)));
  if (caps.length) text.push(section("Short captions", ...caps));
  if (d.dense_caption) {
    const dc = d.dense_caption;
    const status = el("span", {class: dc.verified ? "good" : "bad", text: dc.verified ? "verified" : "flagged"});
    const attempts = (dc.attempts || []).map((a, k) => el("div", {class: "attempt " + (a.passed ? "passed" : "failed")},
      el("div", {text: `attempt ${k + 1}: ${a.passed ? "passed" : "failed"}`}),
      el("div", {class: "muted", text: a.caption}),
      el("div", {text: "checklist: " + ((a.checklist || []).join("; ") || "(none parsed)")}),
      (a.missing || []).length ? el("div", {class: "bad", text: "missing from the scene: " + a.missing.join("; ")}) : null,
      a.reasoning ? el("details", {}, el("summary", {text: "the LLM's answer"}), el("pre", {text: a.reasoning})) : null));
    text.push(section("Dense caption", el("div", {}, status), captionNode(dc.caption || "", dc.details, colors),
                       ...attempts));
  }
  if (picture) parts.push(el("div", {class: "viewer"}, picture, el("div", {class: "right"}, ...text)), objects);
  else parts.push(...text);
  if (d.landmark && (d.landmark.category || d.landmark.fine_category)) {
    parts.push(section("Landmark", el("div", {text: [d.landmark.category, d.landmark.fine_category].filter(Boolean).join(" / ")})));
  }
  if (d.relationships.length) {
    parts.push(section("Relationships", el("ul", {}, ...d.relationships.map((r) =>
      el("li", {text: `${r.phrase} (${(r.object_ids || []).join(", ")})`})))));
  }
  if (d.additional_context) parts.push(section("Extra context", el("p", {text: d.additional_context})));
  parts.push(section("Raw rows", el("details", {}, el("summary", {text: "JSON of every level"}),
                                    el("pre", {class: "raw", text: JSON.stringify(d.rows, null, 1)}))));
  main.replaceChildren(...parts);
}

function route() {
  const m = location.hash.match(/^#\/image\/(\d+)$/);
  if (m) showImage(+m[1]);
}

document.getElementById("filters").addEventListener("input", () => { offset = 0; loadList(); });
document.getElementById("filters").addEventListener("submit", (ev) => ev.preventDefault());
document.getElementById("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); loadList(); });
document.getElementById("next").addEventListener("click", () => { offset += PAGE; loadList(); });
window.addEventListener("hashchange", route);
loadList().then(route);
