// reelvec browser UI: plain JS over the public HTTP API (no build step, nothing fetched from elsewhere).
// Every piece of stored text reaches the page through textContent, never as HTML.
"use strict";

const KEY_STORE = "reelvec.apiKey";
const KEY_HEADER = "X-API-Key";
const $ = (sel) => document.querySelector(sel);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// ---- API ------------------------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, body, retryAfter) {
    super(body.detail || body.error || `HTTP ${status}`);
    this.status = status;
    this.reason = body.error || "";
    this.detail = body.detail || "";
    this.requestId = body.request_id || "";
    this.retryAfter = retryAfter;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

/** fetch() against the API with the stored key; a non-2xx answer throws ApiFailure with the error body. */
async function api(path, opts = {}) {
  const headers = new Headers(opts.headers || {});
  if (apiKey()) headers.set(KEY_HEADER, apiKey());
  let resp;
  try {
    resp = await fetch(path, { ...opts, headers });
  } catch (e) {
    throw new ApiFailure(0, { error: "network", detail: "cannot reach the reelvec server" });
  }
  if (!resp.ok) {
    let body = {};
    try { body = await resp.json(); } catch (e) { body = { error: "http_error" }; }
    throw new ApiFailure(resp.status, body, resp.headers.get("Retry-After"));
  }
  return opts.raw ? resp : resp.json();
}

/** The one human sentence per failure the UI shows (401 / 403 / 422 / 503 named plainly). */
function describe(err) {
  if (!(err instanceof ApiFailure)) return ["Error", String(err)];
  const d = err.detail;
  switch (err.status) {
    case 0: return ["Offline", "Cannot reach the reelvec server. Is `reelvec serve` running?"];
    case 401: return ["401 API key needed", `This server needs an API key: enter it in the API key field above (sent as ${KEY_HEADER}).`];
    case 403: return ["403 API key refused", "The API key was not accepted: check it in the API key field above."];
    case 413: return ["413 Too large", `The file is over the server's size limit. ${d}`];
    case 422: return ["422 Cannot use this input", d || "the server could not use this input"];
    case 503: return ["503 Service unavailable", `${d || "the service is not ready or busy"}. Retry in ${err.retryAfter || "a few"} s.`];
    default: return [`${err.status} ${err.reason}`, d];
  }
}

function showError(err) {
  const [title, text] = describe(err);
  const box = $("#error");
  box.replaceChildren(el("strong", {}, title), text,
    err.requestId ? el("span", { class: "rid" }, `request ${err.requestId}`) : null);
  box.dataset.status = err.status ?? "";
  box.hidden = false;
}

function clearError() {
  $("#error").hidden = true;
  $("#error").replaceChildren();
}

// ---- shared pieces --------------------------------------------------------------------------------

const fmtTime = (s) => (typeof s === "number" ? `${s.toFixed(1)} s` : "");
const itemHref = (id) => `#/item/${encodeURIComponent(id)}`;
const itemPath = (id) => `/v1/items/${encodeURIComponent(id)}`;

function chips(modalities) {
  return el("div", { class: "chips" }, (modalities || []).map((m) => el("span", { class: "chip" }, m)));
}

function thumbImages(payload, withTimes) {
  const thumbs = Array.isArray(payload.thumbs) ? payload.thumbs : [];
  const times = Array.isArray(payload.thumb_times_s) ? payload.thumb_times_s : [];
  return thumbs.map((b64, i) => {
    const img = el("img", { src: `data:image/jpeg;base64,${b64}`, alt: `frame at ${fmtTime(times[i])}` });
    return withTimes ? el("figure", {}, img, el("figcaption", {}, fmtTime(times[i]))) : img;
  });
}

/** Fill a hit's strip from its stored item (thumbnails are in the payload; an item may have none). */
async function loadStrip(itemId, strip) {
  try {
    const item = await api(itemPath(itemId));
    const imgs = thumbImages(item.payload, false);
    strip.replaceChildren(...(imgs.length ? imgs : [el("span", { class: "none" }, "no thumbnails")]));
  } catch (e) {
    strip.replaceChildren(el("span", { class: "none" }, "no thumbnails"));
  }
}

// ---- search ---------------------------------------------------------------------------------------

function options() {
  const f = new FormData($("#text-search"));
  const filters = {};
  for (const key of ["creator_id", "language", "since", "until"]) {
    const v = String(f.get(key) || "").trim();
    if (v) filters[key] = v;
  }
  return {
    k: Number(f.get("k") || 10), using: String(f.get("using") || "fused"),
    fusion: String(f.get("fusion") || ""), moments: f.get("moments") === "on", filters,
  };
}

function hitCard(hit) {
  const strip = el("div", { class: "strip" }, el("span", { class: "none" }, "…"));
  const m = hit.moment;
  const card = el("article", { class: "hit", "data-item-id": hit.item_id },
    el("div", { class: "top" },
      el("a", { class: "id", href: itemHref(hit.item_id) }, hit.item_id),
      el("span", { class: "score", title: "similarity score" }, Number(hit.score).toFixed(3))),
    strip,
    hit.caption ? el("div", { class: "caption" }, hit.caption) : null,
    chips(hit.modalities),
    hit.duplicate_of ? el("div", { class: "chips" }, el("span", { class: "chip warn" }, `duplicate of ${hit.duplicate_of}`)) : null,
    m ? el("div", { class: "moment" },
      `Moment ${fmtTime(m.start_s)} – ${fmtTime(m.end_s)} · ${m.source}`, m.text ? ` · “${m.text}”` : "") : null,
    el("div", { class: "actions" },
      el("button", { type: "button", class: "secondary more", onclick: () => moreLike(hit.item_id) }, "More like this"),
      el("a", { href: itemHref(hit.item_id) }, "Open")));
  loadStrip(hit.item_id, strip);
  return card;
}

function showHits(label, found) {
  $("#status").textContent = `${label}: ${found.hits.length} hit(s) in ${Math.round(found.took_ms)} ms (${found.using})`;
  $("#results").replaceChildren(...found.hits.map(hitCard));
  if (location.hash !== "" && location.hash !== "#/") location.hash = "#/";
}

async function run(label, request) {
  clearError();
  $("#status").textContent = `${label}…`;
  try {
    showHits(label, await request());
  } catch (e) {
    $("#status").textContent = "";
    showError(e);
  }
}

function searchText(ev) {
  ev.preventDefault();
  const q = $("#q").value.trim();
  const o = options();
  const params = new URLSearchParams({ q, k: o.k, using: o.using });
  if (o.fusion) params.set("fusion", o.fusion);
  if (o.moments) params.set("moments", "true");
  for (const [k, v] of Object.entries(o.filters)) params.set(k, v);
  run(`“${q}”`, () => api(`/v1/search?${params}`));
}

function searchClip(ev) {
  ev.preventDefault();
  const file = $("#clip").files[0];
  if (!file) return;
  const o = options();
  const body = new FormData();
  body.set("file", file);
  body.set("k", o.k);
  body.set("using", o.using);
  if (o.fusion) body.set("fusion", o.fusion);
  if (Object.keys(o.filters).length) body.set("filters", JSON.stringify(o.filters));
  run(`clip ${file.name}`, () => api("/v1/search", { method: "POST", body }));
}

function moreLike(itemId) {
  const o = options();
  const body = JSON.stringify({ like: itemId, k: o.k, using: o.using, ...o.filters });
  run(`more like ${itemId}`, () => api("/v1/search", { method: "POST", body, headers: { "Content-Type": "application/json" } }));
}

// ---- item page ------------------------------------------------------------------------------------

/** A relation field as links: an id, {item_id, score}, or a list of either (remix_of / sound_of when present). */
function relation(value, score) {
  const one = (v) => {
    const id = typeof v === "string" ? v : v && (v.item_id || v.id);
    const s = typeof v === "object" && v ? (v.score ?? v.similarity) : score;
    return id ? el("span", {}, el("a", { href: itemHref(id) }, id), typeof s === "number" ? ` (${s.toFixed(3)})` : "")
      : el("span", {}, JSON.stringify(v));
  };
  const list = Array.isArray(value) ? value : [value];
  return list.flatMap((v, i) => (i ? [", ", one(v)] : [one(v)]));
}

function timedTable(rows, startKey, endKey, empty) {
  if (!rows || !rows.length) return el("p", { class: "muted" }, empty);
  return el("table", {}, el("tbody", {}, rows.map((r) =>
    el("tr", {}, el("td", { class: "t" }, `${fmtTime(r[startKey])} – ${fmtTime(r[endKey])}`), el("td", {}, r.text)))));
}

function itemView(item) {
  const p = item.payload;
  const facts = [
    ["Caption", p.caption || "—"],
    ["Hashtags", (p.hashtags || []).map((h) => `#${h}`).join(" ") || "—"],
    ["Creator", p.creator_id || "—"],
    ["Created", p.created_at || "—"],
    ["Duration", fmtTime(p.duration_s)],
    ["Language", p.language || "—"],
    ["Modalities", chips(p.modalities)],
    ["Semantic ID", Array.isArray(p.semantic_id) ? p.semantic_id.join("-") : "—"],
    ["Duplicate of", p.duplicate_of ? relation(p.duplicate_of, p.duplicate_score) : "—"],
  ];
  for (const [key, label] of [["remix_of", "Remix of"], ["sound_of", "Sound of"], ["remixes", "Remixes"], ["same_sound", "Same sound"]]) {
    if (p[key] !== undefined && p[key] !== null) facts.push([label, relation(p[key])]);
  }
  facts.push(["Schema", p.schema_version || "—"]);
  const thumbs = thumbImages(p, true);
  return el("article", { class: "item" },
    el("h2", {}, item.item_id),
    el("div", { class: "actions" },
      el("button", { type: "button", class: "secondary more", onclick: () => moreLike(item.item_id) }, "More like this"),
      el("a", { href: "#/" }, "Back to results")),
    el("div", { class: "strip" }, thumbs.length ? thumbs : el("span", { class: "none" }, "no thumbnails")),
    el("dl", {}, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    el("h3", {}, "Transcript"),
    timedTable(p.segments, "start_s", "end_s", p.speech === false ? "No speech." : "No transcript."),
    el("h3", {}, "On-screen text (OCR)"),
    timedTable(p.ocr_lines, "first_s", "last_s", "No on-screen text."));
}

async function showItem(itemId) {
  const view = $("#view-item");
  view.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  try {
    view.replaceChildren(itemView(await api(itemPath(itemId))));
  } catch (e) {
    view.replaceChildren(el("p", { class: "muted" }, `Item ${itemId} could not be shown.`));
    showError(e);
  }
}

// ---- duplicates and report ------------------------------------------------------------------------

async function showDups() {
  const box = $("#dups");
  box.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  try {
    const found = await api("/v1/duplicates");
    box.replaceChildren(
      el("p", {}, `${found.groups.length} group(s) of re-uploads and remixes`),
      ...found.groups.map((g) => el("div", { class: "group" }, g.map((id) => el("a", { href: itemHref(id) }, id)))));
  } catch (e) {
    box.replaceChildren();
    showError(e);
  }
}

/** A file of the report as a data: URI (fetched with the key, so the sandboxed frame needs no access). */
async function dataUri(name) {
  const blob = await (await api(`/v1/report/${encodeURIComponent(name)}`, { raw: true })).blob();
  return new Promise((resolve) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.readAsDataURL(blob);
  });
}

async function showReport() {
  const box = $("#report");
  box.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  try {
    const info = await api("/v1/report");
    if (!info.available) {
      box.replaceChildren(el("p", { class: "muted", id: "no-report" },
        "No report yet. Write one with `reelvec eval --compare A B --report DIR` (DIR = ui.report_dir, default <data_dir>/report)."));
      return;
    }
    const html = await (await api("/v1/report/index.html", { raw: true })).text();
    const doc = new DOMParser().parseFromString(html, "text/html");
    for (const img of doc.querySelectorAll("img[src]")) {
      const src = img.getAttribute("src");
      if (info.files.includes(src)) img.setAttribute("src", await dataUri(src));
    }
    const frame = el("iframe", { class: "report", sandbox: "", title: "eval report" });
    frame.srcdoc = "<!doctype html>" + doc.documentElement.outerHTML;
    box.replaceChildren(frame);
  } catch (e) {
    box.replaceChildren();
    showError(e);
  }
}

// ---- routing --------------------------------------------------------------------------------------

function route() {
  const hash = location.hash || "#/";
  let view = "search";
  if (hash.startsWith("#/item/")) view = "item";
  else if (hash === "#/dups") view = "dups";
  else if (hash === "#/report") view = "report";
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
  if (view !== "search") clearError();
  if (view === "item") showItem(decodeURIComponent(hash.slice("#/item/".length)));
  if (view === "dups") showDups();
  if (view === "report") showReport();
}

function init() {
  $("#api-key").value = apiKey();
  $("#key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("#api-key").value.trim();
    if (v) localStorage.setItem(KEY_STORE, v); else localStorage.removeItem(KEY_STORE);
    clearError();
  });
  $("#text-search").addEventListener("submit", searchText);
  $("#clip-search").addEventListener("submit", searchClip);
  window.addEventListener("hashchange", route);
  route();
}

document.addEventListener("DOMContentLoaded", init);
