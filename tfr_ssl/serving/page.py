"""The page at `/`: type a query (or pick a sample), see the top items.

One self-contained HTML document (no external scripts, styles or fonts: the
service must work without internet). Its script uses the public `:predict`
for the results plus four page helpers, `/ui/model` (the form's features
and bounds), `/ui/samples`, `/ui/history` and `/ui/items` (the features of
typed item ids).

When the model's query tower reads a history, the form has a History field:
item ids, oldest first, comma-separated, sent as the query's `history`. A
person can so describe a user the data does not hold (leave the user id
empty or type a new one) and see what the model recommends from those items
alone; the typed items are listed beside the results (the ones the corpus
does not hold are marked: they drop out) and, with the box checked, left out
of them. Data is put into the page with
`textContent`, never as HTML, so item features cannot inject markup; the
server also sends a Content-Security-Policy that lets only the page's own
script and style block run (no inline `style=` attributes, no handlers).

Query-string parameters fill the form and run it at once, which makes a
result linkable (and lets a headless browser test the page): any query
feature (`?user_id=u1`), `history=i1,i2` (a typed history), `sample=N` (the
N-th sample), `top_k=N`, and `exclude_history=0` to keep a user's own items
in the results.
"""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Retrieval: __TITLE__</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2433;
         background: #f6f7f9; }
  header { background: #1d2433; color: #fff; padding: 10px 20px; }
  header h1 { font-size: 17px; margin: 0; display: inline-block; }
  header span { color: #aab3c5; margin-left: 12px; }
  main { padding: 16px 20px; }
  form { background: #fff; border: 1px solid #dde1e8; border-radius: 6px;
         padding: 12px 14px; display: flex; flex-wrap: wrap; gap: 10px 16px;
         align-items: flex-end; }
  label { display: flex; flex-direction: column; font-size: 12px;
          color: #5a6478; }
  input[type=text], select { font: inherit; padding: 4px 6px; min-width: 120px;
          border: 1px solid #c4cad6; border-radius: 4px; }
  input[type=number] { font: inherit; width: 60px; padding: 4px 6px;
          border: 1px solid #c4cad6; border-radius: 4px; }
  label.check { flex-direction: row; align-items: center; gap: 4px; }
  button { font: inherit; background: #2f6fed; color: #fff; border: 0;
           border-radius: 4px; padding: 6px 14px; cursor: pointer; }
  #status { margin: 10px 0; color: #5a6478; min-height: 1.4em; }
  #error { display: none; margin: 10px 0; padding: 8px 10px; color: #8a1020;
           background: #fde8eb; border: 1px solid #f2b8c0; border-radius: 4px; }
  .columns { display: flex; gap: 16px; align-items: flex-start; }
  section { flex: 1; background: #fff; border: 1px solid #dde1e8;
            border-radius: 6px; padding: 8px 12px; min-width: 0; }
  section h2 { font-size: 14px; margin: 4px 0 8px; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #eef0f4;
           vertical-align: top; }
  th { font-size: 12px; color: #5a6478; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  td.id { font-family: ui-monospace, monospace; }
  .feat { color: #5a6478; font-size: 12px; }
  .feat b { color: #1d2433; font-weight: 500; }
  .feat b.shared { background: #fff1b8; border-radius: 3px; padding: 0 2px; }
  .muted { color: #8a93a6; }
  #fields { display: contents; }
  input#f_history { min-width: 260px; }
</style>
</head>
<body>
<header><h1>Retrieval</h1><span id="model">model __TITLE__</span></header>
<main>
  <form id="query" autocomplete="off">
    <label>Sample query<select id="sample">
      <option value="">(type below)</option></select></label>
    <span id="fields"></span>
    <label>Top k<input type="number" id="top_k" min="1" value="10"></label>
    <label class="check"><input type="checkbox" id="exclude_history" checked>
      leave out the user's own items</label>
    <button type="submit" id="run">Recommend</button>
  </form>
  <div id="error" role="alert"></div>
  <div id="status"></div>
  <div class="columns">
    <section id="recommended"><h2>Recommended</h2>
      <table><thead><tr><th>#</th><th>item</th><th>score</th>
        <th>features</th></tr></thead>
      <tbody id="results"><tr><td colspan="4" class="muted">No query yet.</td>
      </tr></tbody></table>
    </section>
    <section id="history">
      <h2 id="history_title">Interacted with in training</h2>
      <table><thead><tr><th>#</th><th>item</th><th>features</th></tr></thead>
      <tbody id="history_rows"><tr><td colspan="3" class="muted">
        Pick a known user to see their items.</td></tr></tbody></table>
    </section>
  </div>
</main>
<script>
"use strict";
const MODEL = __MODEL__;
const base = "/v1/models/" + encodeURIComponent(MODEL);
let features = [], samples = [], queryId = null, maxK = 10;
let hasHistory = false;
const $ = (id) => document.getElementById(id);

function cell(row, text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  row.appendChild(td);
  return td;
}
// Feature values of the user's history: the same values in a recommended
// item are marked, so a person sees why it may have been chosen.
let historyValues = new Set();
function tokens(name, value) {
  return String(value).split("|").filter((v) => v).map((v) => name + "=" + v);
}
function featureCell(row, values, id, mark) {
  const td = cell(row, "", "feat");
  for (const [name, value] of Object.entries(values || {})) {
    if (value === id) continue;  // The id column repeats the item id.
    const span = document.createElement("span");
    span.append(name + "=");
    const parts = value === "" ? ["-"] : String(value).split("|");
    parts.forEach((part, i) => {
      const b = document.createElement("b");
      b.textContent = part;
      if (mark && historyValues.has(name + "=" + part)) b.className = "shared";
      if (i) span.append("|");
      span.append(b);
    });
    span.append("  ");
    td.appendChild(span);
  }
}
function empty(tbody, cols, text) {
  tbody.replaceChildren();
  const tr = document.createElement("tr");
  const td = cell(tr, text, "muted");
  td.colSpan = cols;
  tbody.appendChild(tr);
}
function showError(text) {
  $("error").textContent = text;
  $("error").style.display = text ? "block" : "none";
}
async function getJSON(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : response.statusText;
    throw new Error(response.status + ": " + message);
  }
  return [body, response];
}

async function setup() {
  const [meta] = await getJSON("/ui/model");
  // The history is a list of item ids, not a feature value: its own field.
  features = meta.query_features.filter((f) => f.kind !== "history");
  hasHistory = features.length < meta.query_features.length;
  maxK = meta.top_k.max;
  $("top_k").max = maxK;
  const fields = $("fields");
  if (hasHistory) {
    const label = document.createElement("label");
    label.textContent = "history: item ids, oldest first (a, b, c)";
    const input = document.createElement("input");
    input.type = "text";
    input.id = "f_history";
    input.name = "history";
    label.appendChild(input);
    fields.appendChild(label);
  }
  for (const f of features) {
    const label = document.createElement("label");
    const multi = f.kind === "multi_categorical";
    label.textContent = f.name + (multi ? " (a|b|c)" : "");
    const input = document.createElement("input");
    input.type = "text";
    input.id = "f_" + f.name;
    input.name = f.name;
    label.appendChild(input);
    fields.appendChild(label);
  }
  try {
    const [data] = await getJSON("/ui/samples");
    samples = data.samples;
    queryId = data.query_id;
  } catch (e) { samples = []; }
  samples.forEach((s, i) => {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = s.label;
    $("sample").appendChild(option);
  });
  if (!samples.length) $("sample").disabled = true;
  $("sample").addEventListener("change", () => {
    const s = samples[Number($("sample").value)];
    if (s) { fill(s.features); run(); }
  });
  $("query").addEventListener("submit", (e) => { e.preventDefault(); run(); });
  const params = new URLSearchParams(location.search);
  let auto = false;
  if (params.has("sample") && samples[Number(params.get("sample"))]) {
    $("sample").value = params.get("sample");
    fill(samples[Number(params.get("sample"))].features);
    auto = true;
  }
  for (const f of features) {
    if (params.has(f.name)) {
      $("f_" + f.name).value = params.get(f.name);
      auto = true;
    }
  }
  if (hasHistory && params.has("history")) {
    $("f_history").value = params.get("history");
    auto = true;
  }
  if (params.has("top_k")) $("top_k").value = params.get("top_k");
  if (params.get("exclude_history") === "0") {
    $("exclude_history").checked = false;
  }
  if (auto) await run();
}

function fill(values) {
  for (const f of features) $("f_" + f.name).value = values[f.name] || "";
  if (hasHistory) $("f_history").value = "";
}

function typedHistory() {
  if (!hasHistory) return [];
  return $("f_history").value.split(",").map((v) => v.trim())
    .filter((v) => v);
}

// The typed items with their features (unknown ids: none).
async function typedItems(ids) {
  try {
    const query = ids.map(encodeURIComponent).join(",");
    const [data] = await getJSON("/ui/items?ids=" + query);
    return data.items;
  } catch (e) {
    return ids.map((id) => ({ id: id, known: false, features: {} }));
  }
}

async function history(instance) {
  if (!queryId || !instance[queryId]) return null;
  try {
    const id = encodeURIComponent(instance[queryId]);
    const [data] = await getJSON("/ui/history?query_id=" + id);
    return data;
  } catch (e) { return null; }
}

async function run() {
  showError("");
  const instance = {};
  for (const f of features) {
    const value = $("f_" + f.name).value.trim();
    if (value !== "") instance[f.name] = value;
  }
  const typed = typedHistory();
  if (typed.length) instance.history = typed;
  const seen = await history(instance);
  const rows = $("history_rows");
  historyValues = new Set();
  if (typed.length) {
    // The typed history replaces the one the model knew.
    const items = await typedItems(typed);
    const unknown = items.filter((item) => !item.known).length;
    $("history_title").textContent = "History given (" + typed.length +
      ", oldest first" + (unknown ? "; " + unknown + " not in the corpus, "
      + "left out" : "") + ")";
    rows.replaceChildren();
    items.forEach((item, i) => {
      const tr = document.createElement("tr");
      tr.className = "given";
      cell(tr, String(i + 1), "num");
      cell(tr, item.id, "id");
      if (item.known) {
        featureCell(tr, item.features, item.id, false);
        for (const [name, value] of Object.entries(item.features)) {
          if (value === item.id) continue;
          tokens(name, value).forEach((t) => historyValues.add(t));
        }
      } else {
        cell(tr, "not in the corpus", "muted");
      }
      rows.appendChild(tr);
    });
    if ($("exclude_history").checked) {
      const own = seen ? seen.exclude : [];
      instance.exclude = [...new Set([...typed, ...own])];
    }
  } else if (seen) {
    for (const item of seen.items) {
      for (const [name, value] of Object.entries(item.features)) {
        if (value === item.id) continue;
        tokens(name, value).forEach((t) => historyValues.add(t));
      }
    }
    const shown = seen.total > seen.items.length
      ? ", latest " + seen.items.length + " shown" : "";
    $("history_title").textContent =
      "Interacted with in training (" + seen.total + shown + ")";
    rows.replaceChildren();
    seen.items.forEach((item, i) => {
      const tr = document.createElement("tr");
      cell(tr, String(i + 1), "num");
      cell(tr, item.id, "id");
      featureCell(tr, item.features, item.id, false);
      rows.appendChild(tr);
    });
    if (seen.exclude.length && $("exclude_history").checked) {
      instance.exclude = seen.exclude;
    }
  } else {
    $("history_title").textContent = "Interacted with in training";
    empty(rows, 3, queryId
      ? "Not a known user." : "This model's queries have no history.");
  }
  const body = { instances: [instance], top_k: Number($("top_k").value) || 10,
                 item_features: true };
  const started = performance.now();
  let result, response;
  try {
    [result, response] = await getJSON(base + ":predict", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
  } catch (e) {
    showError(e.message);
    empty($("results"), 4, "No results.");
    $("status").textContent = "";
    return;
  }
  const ms = performance.now() - started;
  const p = result.predictions[0];
  const tbody = $("results");
  tbody.replaceChildren();
  p.ids.forEach((id, i) => {
    const tr = document.createElement("tr");
    tr.className = "hit";
    cell(tr, String(i + 1), "num");
    cell(tr, id, "id");
    cell(tr, p.scores[i].toFixed(4), "num");
    featureCell(tr, p.features[i], id, true);
    tbody.appendChild(tr);
  });
  if (!p.ids.length) empty(tbody, 4, "No results.");
  const excluded = instance.exclude
    ? instance.exclude.length + " own items left out, " : "";
  const given = typed.length
    ? "from a given history of " + typed.length + " items, " : "";
  $("status").textContent = p.ids.length + " items from model version " +
    response.headers.get("X-Model-Version") + " (" + given + excluded +
    Math.round(ms) + " ms)" +
    (historyValues.size ? "; marked: values also in the user's items" : "");
  document.body.dataset.ready = "1";
}

setup().catch((e) => showError(e.message));
</script>
</body>
</html>
"""


def render(model_name: str) -> str:
  """The page for a served model."""
  return _PAGE.replace("__TITLE__", html.escape(model_name)).replace(
    "__MODEL__", json.dumps(model_name).replace("</", "<\\/")
  )
