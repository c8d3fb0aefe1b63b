/* rgi report: draws the page from the JSON block #rows (written by rgi_core/report/html.py).
 *
 * Every string from the catalog reaches the page through textContent, text nodes or setAttribute on plain
 * attributes (title, data-*), never through innerHTML, so a file name such as `<img src=x onerror=...>.png`
 * is shown as text. Image sources are only `img/<20 hex digits>.png` names the builder wrote. */
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("rows").textContent);
  const COLS = DATA.columns;
  const COL = new Map(COLS.map((c, i) => [c, i]));
  const ROWS = DATA.rows;
  const IMAGES = DATA.images;
  const PAGE = DATA.page_size || 100;
  const IMAGE_COLUMNS = ["thumbnail_uri", "restored_uri", "anomaly_map_uri", "mask_uri"];
  const IMAGE_LABELS = { thumbnail_uri: "input", restored_uri: "restored", anomaly_map_uri: "anomaly map",
    mask_uri: "mask M" };
  const FLAG_LABELS = { is_blurry: "blurry", is_dark: "dark", is_bright: "bright",
    is_low_information: "low information", is_odd_aspect: "odd aspect", is_odd_size: "odd size" };
  const FLAGS = Object.keys(FLAG_LABELS).filter((c) => COL.has(c));
  const HAS_DUP = COL.has("duplicate_of");
  const HAS_NEAR = COL.has("near_duplicate_group");
  const HAS_CHECKS = FLAGS.length > 0 || HAS_DUP || HAS_NEAR;
  const FILE_NAME = /^[0-9a-f]{20}$/;
  const SVG = "http://www.w3.org/2000/svg";
  const NUM = new Intl.NumberFormat("en-US");
  const COLLATOR = new Intl.Collator("en", { numeric: true });

  const get = (r, c) => { const i = COL.get(c); return i === undefined ? null : ROWS[r][i]; };
  const $ = (id) => document.getElementById(id);

  /** An element with properties (class, text, attributes) and children (nodes or strings, added as text). */
  function el(tag, props, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = String(v);
      else if (k === "title" || k === "role" || k === "tabindex" || k.startsWith("data-") || k.startsWith("aria-")) {
        e.setAttribute(k, String(v));
      } else e[k] = v;
    }
    for (const c of children || []) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  /** A value as text: numbers rounded to 5 significant digits, lists joined, null as a dash. */
  function fmt(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(5)));
    if (Array.isArray(v)) return v.length ? v.map(fmt).join(", ") : "(none)";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  const score = (v) => (typeof v === "number" ? v.toFixed(3) : "—");
  /** An ISO timestamp to the second, "UTC" for +00:00 (other text as it is). */
  const when = (v) => (typeof v === "string" ? v.replace(/^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d+)?(\+00:00|Z)?$/,
    (m, day, time, frac, utc) => `${day} ${time}${utc ? " UTC" : ""}`) : fmt(v));
  const short = (s) => (s && s.length > 12 ? s.slice(0, 8) + "…" : s);
  const fileName = (v) => { const s = fmt(v); return s.slice(s.lastIndexOf("/") + 1) || s; };

  /** Pretty JSON of a *_json column (the text itself if it does not parse). */
  function prettyJson(text) {
    if (typeof text !== "string") return fmt(text);
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return text; }
  }

  function picture(name, alt, placeholder) {
    if (name && FILE_NAME.test(name)) {
      const img = el("img", { src: "img/" + name + ".png", alt: alt, title: alt, decoding: "async" });
      img.addEventListener("error", () => img.replaceWith(el("span", { class: "placeholder", text: "missing" })));
      return img;
    }
    return el("span", { class: "placeholder", title: alt, text: placeholder });
  }

  /** Row r's picture for one image column (a placeholder says why there is none). */
  function rowPicture(r, column) {
    const j = DATA.image_columns.indexOf(column);
    const uri = j < 0 ? null : get(r, column);
    const name = j < 0 ? null : IMAGES[r][j];
    const why = uri ? "unreadable" : (column === "thumbnail_uri" ? "no thumbnail" : "none");
    return picture(name, IMAGE_LABELS[column] + (uri ? ": " + uri : ""), why);
  }

  // ---- filters ---------------------------------------------------------------------------------------------
  // Each filter is a list of choices {label, test(r)}; a select's option value is the choice's index, so no
  // catalog string is ever used as a value or compared as markup.
  function distinct(column) {
    const seen = new Set();
    for (let r = 0; r < ROWS.length; r++) { const v = get(r, column); if (v !== null) seen.add(v); }
    return [...seen].sort((a, b) => COLLATOR.compare(String(a), String(b)));
  }

  function equalsChoices(column, label) {
    return distinct(column).map((v) => ({ label: label ? label(v) : String(v), test: (r) => get(r, column) === v }));
  }

  const FILTERS = [];
  if (COL.has("status")) FILTERS.push({ id: "filter-status", label: "status", choices: equalsChoices("status") });
  if (COL.has("method")) FILTERS.push({ id: "filter-method", label: "method", choices: equalsChoices("method") });
  if (COL.has("run_id")) FILTERS.push({ id: "filter-run", label: "run", choices: equalsChoices("run_id") });
  // which path produced the row: triage (no solve), detect (stopped at the restoration stage's switch or its early read), solve
  if (COL.has("stage")) FILTERS.push({ id: "filter-stage", label: "path", choices: equalsChoices("stage") });
  if (COL.has("flagged_by")) {
    const detectors = new Set();
    for (let r = 0; r < ROWS.length; r++) for (const d of get(r, "flagged_by") || []) detectors.add(d);
    const choices = [...detectors].sort().map((d) => ({
      label: d, test: (r) => (get(r, "flagged_by") || []).includes(d) }));
    choices.push({ label: "(flagged by none)", test: (r) => !(get(r, "flagged_by") || []).length });
    FILTERS.push({ id: "filter-detector", label: "flagged by", choices: choices });
  }
  if (COL.has("is_anomalous")) {
    FILTERS.push({ id: "filter-anomalous", label: "anomalous", choices: [
      { label: "yes", test: (r) => get(r, "is_anomalous") === true },
      { label: "no", test: (r) => get(r, "is_anomalous") === false },
      { label: "unknown", test: (r) => get(r, "is_anomalous") === null }] });
  }
  if (HAS_CHECKS) {
    const choices = [{ label: "any check", test: (r) => checks(r).length > 0 },
      { label: "no check", test: (r) => checks(r).length === 0 }];
    for (const f of FLAGS) choices.push({ label: FLAG_LABELS[f], test: (r) => get(r, f) === true });
    if (HAS_DUP) choices.push({ label: "exact duplicate", test: (r) => get(r, "duplicate_of") !== null });
    if (HAS_NEAR) choices.push({ label: "near duplicate", test: (r) => get(r, "near_duplicate_group") !== null });
    FILTERS.push({ id: "filter-check", label: "dataset check", choices: choices });
  }

  /** The dataset checks that flag row r: {text, title} (a duplicate names the other source by its file name). */
  function checks(r) {
    const out = FLAGS.filter((f) => get(r, f) === true).map((f) => ({ text: FLAG_LABELS[f], title: f }));
    const dup = HAS_DUP ? get(r, "duplicate_of") : null;
    const near = HAS_NEAR ? get(r, "near_duplicate_group") : null;
    if (dup !== null) out.push({ text: "duplicate of " + fileName(dup), title: "duplicate_of: " + fmt(dup) });
    if (near !== null) out.push({ text: "near duplicates: " + fileName(near), title: "near_duplicate_group: " + fmt(near) });
    return out;
  }

  const state = { chosen: {}, search: "", sort: "anomaly_score", dir: "desc", page: 0 };
  let view = [];  // row indices that pass the filters, in sort order

  function buildFilters() {
    const form = $("filters");
    for (const f of FILTERS) {
      const select = el("select", { id: f.id }, [el("option", { value: "", text: "all" })]);
      f.choices.forEach((c, i) => select.append(el("option", { value: String(i), text: c.label })));
      select.addEventListener("change", () => { state.chosen[f.id] = select.value; update(); });
      form.append(el("label", {}, [f.label, select]));
    }
    const search = el("input", { id: "filter-text", type: "search", placeholder: "file name, key or error" });
    search.addEventListener("input", () => { state.search = search.value.toLowerCase(); update(); });
    form.append(el("label", {}, ["search", search]));
    const reset = el("button", { type: "button", id: "filter-reset", text: "clear filters" });
    reset.addEventListener("click", () => {
      for (const f of FILTERS) $(f.id).value = "";
      search.value = ""; state.chosen = {}; state.search = ""; update();
    });
    form.append(reset);
    form.addEventListener("submit", (e) => e.preventDefault());
  }

  /** Set a filter from elsewhere on the page (a run card, the errors section) by its choice's label. */
  function choose(filterId, label) {
    const f = FILTERS.find((x) => x.id === filterId);
    const i = f ? f.choices.findIndex((c) => c.label === label) : -1;
    if (i < 0) return;
    $(filterId).value = String(i);
    state.chosen[filterId] = String(i);
    update();
    $("images-section").scrollIntoView();
  }

  function passes(r) {
    for (const f of FILTERS) {
      const i = state.chosen[f.id];
      if (i !== undefined && i !== "" && !f.choices[Number(i)].test(r)) return false;
    }
    if (state.search) {
      const hay = [get(r, "source_uri"), get(r, "image_key"), get(r, "error")].join("\n").toLowerCase();
      if (!hay.includes(state.search)) return false;
    }
    return true;
  }

  // ---- sorting ---------------------------------------------------------------------------------------------
  function compare(a, b) {
    const va = get(a, state.sort), vb = get(b, state.sort);
    const na = va === null, nb = vb === null;
    if (na || nb) return na === nb ? a - b : (na ? 1 : -1);  // nulls last in both directions
    let c;
    if (typeof va === "number" && typeof vb === "number") c = va - vb;
    else if (typeof va === "boolean" && typeof vb === "boolean") c = Number(va) - Number(vb);
    else c = COLLATOR.compare(String(va), String(vb));
    return c !== 0 ? (state.dir === "asc" ? c : -c) : a - b;
  }

  // ---- the table -------------------------------------------------------------------------------------------
  const TABLE = [
    { label: "input · restored · anomaly map · mask M", cell: (r) => el("td", {}, [
      el("div", { class: "thumbs" }, IMAGE_COLUMNS.map((c) => rowPicture(r, c)))]) },
    { key: "source_uri", label: "source", cell: (r) => {
      const source = fmt(get(r, "source_uri"));
      const cut = source.lastIndexOf("/") + 1;  // the file name first, its folder below it
      return el("td", { class: "source", title: source }, [el("div", { class: "name", text: source.slice(cut) }),
        cut ? el("div", { class: "dir", text: source.slice(0, cut) }) : null,
        get(r, "error") ? el("div", { class: "err", text: get(r, "error") }) : null]);
    } },
    { key: "status", label: "status", cell: (r) => el("td", {}, [
      el("span", { class: "status " + String(get(r, "status")).replace(/[^a-z]/g, ""), text: fmt(get(r, "status")) })]) },
    { key: "anomaly_score", label: "score", first: "desc", cell: (r) => el("td", { class: "num", text: score(get(r, "anomaly_score")) }) },
    { key: "is_anomalous", label: "anomalous", first: "desc", cell: (r) => {
      const v = get(r, "is_anomalous");
      return el("td", { class: v ? "anomalous" : "", text: v === null ? "—" : (v ? "yes" : "no") });
    } },
  ];
  if (COL.has("flagged_by")) {
    TABLE.push({ label: "flagged by", cell: (r) => el("td", {}, (get(r, "flagged_by") || []).map(
      (d) => el("span", { class: "badge detector", text: d }))) });
  }
  if (HAS_CHECKS) {
    TABLE.push({ label: "checks", cell: (r) => el("td", { class: "checks" }, checks(r).map(
      (c) => el("span", { class: "badge flag", text: c.text, title: c.title }))) });
  }
  if (COL.has("stage")) {  // restored = the input on a triage or detect row: nothing was restored
    TABLE.push({ key: "stage", label: "path", cell: (r) => el("td", { class: "stage", text: fmt(get(r, "stage")) }) });
  }
  TABLE.push({ key: "method", label: "method", cell: (r) => el("td", { text: fmt(get(r, "method")) }) });
  TABLE.push({ key: "run_id", label: "run", cell: (r) => el("td", { title: fmt(get(r, "run_id")), text: short(fmt(get(r, "run_id"))) }) });
  for (const t of TABLE) if (t.key && !COL.has(t.key)) delete t.key;  // a column this catalog lacks: not sortable

  function buildHeader() {
    const tr = el("tr");
    for (const t of TABLE) {
      const th = el("th", { text: t.label, "data-sort": t.key || null, class: t.key ? "sortable" : null });
      if (t.key) {
        th.addEventListener("click", () => {
          if (state.sort === t.key) state.dir = state.dir === "asc" ? "desc" : "asc";
          else { state.sort = t.key; state.dir = t.first || "asc"; }
          update();
        });
      }
      tr.append(th);
    }
    document.querySelector("#images thead").append(tr);
  }

  function renderHeader() {
    for (const th of document.querySelectorAll("#images th[data-sort]")) {
      if (th.dataset.sort === state.sort) th.setAttribute("aria-sort", state.dir === "asc" ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  function renderTable() {
    const pages = Math.max(1, Math.ceil(view.length / PAGE));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    const start = state.page * PAGE;
    const body = document.querySelector("#images tbody");
    const rows = view.slice(start, start + PAGE).map((r, k) => {
      const tr = el("tr", { tabindex: 0, "data-row": r }, TABLE.map((t) => t.cell(r)));
      tr.addEventListener("click", () => openDetail(start + k));
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetail(start + k); });
      return tr;
    });
    body.replaceChildren(...rows);
    if (!rows.length) body.append(el("tr", {}, [el("td", { colSpan: TABLE.length, class: "muted", text: "no rows match the filters" })]));
    renderPager($("pager-top"), pages, start, true);
    renderPager($("pager-bottom"), pages, start, false);
  }

  function renderPager(box, pages, start, withCount) {
    const end = Math.min(view.length, start + PAGE);
    const go = (p) => () => { state.page = p; renderTable(); if (!withCount) $("images-section").scrollIntoView(); };
    const button = (cls, text, title, page, off) => {
      const b = el("button", { type: "button", class: cls, text: text, title: title, disabled: off });
      b.addEventListener("click", go(page));
      return b;
    };
    const input = el("input", { type: "number", class: "page", min: 1, max: pages, value: state.page + 1 });
    input.addEventListener("change", () => go(Math.min(pages, Math.max(1, Number(input.value) || 1)) - 1)());
    const parts = [];
    if (withCount) {
      const total = ROWS.length;
      const text = view.length ? `rows ${NUM.format(start + 1)}–${NUM.format(end)} of ${NUM.format(view.length)}` : "no rows";
      const filtered = view.length === total ? "" : ` (filtered from ${NUM.format(total)})`;
      parts.push(el("span", { id: "count", class: "count", "data-shown": view.length, "data-total": total,
        text: text + filtered }));
    }
    parts.push(button("first", "«", "first page", 0, state.page === 0),
      button("prev", "‹", "previous page", state.page - 1, state.page === 0),
      el("span", {}, ["page ", input, ` of ${NUM.format(pages)}`]),
      button("next", "›", "next page", state.page + 1, state.page >= pages - 1),
      button("last", "»", "last page", pages - 1, state.page >= pages - 1));
    box.replaceChildren(...parts);
  }

  // ---- histogram ---------------------------------------------------------------------------------------------
  const THRESHOLDS = (() => {  // threshold -> the runs that used it
    const byValue = new Map();
    const cols = DATA.runs.columns, ti = cols.indexOf("score_threshold"), ri = cols.indexOf("run_id");
    if (ti < 0) return byValue;
    for (const row of DATA.runs.rows) {
      if (typeof row[ti] !== "number") continue;
      if (!byValue.has(row[ti])) byValue.set(row[ti], []);
      byValue.get(row[ti]).push(row[ri]);
    }
    return byValue;
  })();
  const SCORE_RANGE = (() => {
    let lo = Infinity, hi = -Infinity;
    for (let r = 0; r < ROWS.length; r++) {
      const v = get(r, "anomaly_score");
      if (typeof v === "number") { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    }
    for (const t of THRESHOLDS.keys()) if (lo <= hi) { lo = Math.min(lo, t); hi = Math.max(hi, t); }
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    return [lo, hi];
  })();

  function renderHistogram() {
    const box = $("histogram");
    const scores = view.map((r) => get(r, "anomaly_score")).filter((v) => typeof v === "number");
    if (!scores.length) { box.replaceChildren(el("p", { class: "muted", text: "no scores among these rows" })); return; }
    const W = 760, H = 220, L = 44, R = 16, T = 14, B = 34, BINS = 40;
    const [lo, hi] = SCORE_RANGE;
    const counts = new Array(BINS).fill(0);
    for (const v of scores) counts[Math.min(BINS - 1, Math.max(0, Math.floor((v - lo) / (hi - lo) * BINS)))]++;
    const top = Math.max(...counts);
    const x = (v) => L + (v - lo) / (hi - lo) * (W - L - R);
    const y = (c) => H - B - c / top * (H - T - B);
    const s = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", id: "histogram-svg",
      "aria-label": "histogram of anomaly scores" });
    s.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    const bw = (W - L - R) / BINS;
    counts.forEach((c, i) => {
      if (!c) return;
      const a = lo + (hi - lo) * i / BINS, b = lo + (hi - lo) * (i + 1) / BINS;
      const bar = svg("rect", { class: "bar", x: L + i * bw + 0.5, width: Math.max(1, bw - 1), y: y(c), height: H - B - y(c) });
      bar.append(svg("title", {}, `${NUM.format(c)} rows with score ${a.toFixed(3)} to ${b.toFixed(3)}`));
      s.append(bar);
    });
    for (let k = 0; k <= 4; k++) {
      const v = lo + (hi - lo) * k / 4;
      s.append(svg("text", { x: x(v), y: H - B + 14, "text-anchor": "middle" }, v.toFixed(2)));
    }
    s.append(svg("text", { x: L - 6, y: T + 4, "text-anchor": "end" }, NUM.format(top)));
    s.append(svg("text", { x: L - 6, y: H - B, "text-anchor": "end" }, "0"));
    s.append(svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "anomaly score"));
    let k = 0;
    for (const [t, runs] of THRESHOLDS) {
      const line = svg("line", { class: "threshold", x1: x(t), x2: x(t), y1: T, y2: H - B, "data-threshold": t });
      line.append(svg("title", {}, `score threshold ${t} (runs ${runs.join(", ")})`));
      s.append(line, svg("text", { class: "threshold-label", x: x(t) + 4, y: T + 10 + 12 * k++ }, `threshold ${fmt(t)}`));
    }
    const over = THRESHOLDS.size === 1 ? scores.filter((v) => v > [...THRESHOLDS.keys()][0]).length : null;
    box.replaceChildren(s, el("p", { class: "muted", text: `${NUM.format(scores.length)} scores` +
      (over === null ? (THRESHOLDS.size ? "" : "; no score threshold recorded for these runs")
        : `, ${NUM.format(over)} over the threshold`) }));
  }

  // ---- runs, errors ------------------------------------------------------------------------------------------
  function renderRuns() {
    const cols = DATA.runs.columns;
    const runs = DATA.runs.rows.map((row) => Object.fromEntries(cols.map((c, i) => [c, row[i]])));
    const box = $("runs");
    if (!runs.length) { box.append(el("p", { class: "muted", text: "no run rows in the catalog for these images" })); return; }
    const fixed = (v, digits) => (typeof v === "number" ? v.toFixed(digits) : "—");
    const head = ["status", "run", "started", "ok", "errors", "skipped", "images/s", "seconds", "prior", "method",
      "config_hash", "score threshold", ""];
    const body = el("tbody");
    for (const run of runs) {
      const more = el("dl");
      for (const [k, v] of [["source", run.source], ["device", run.device], ["ended", when(run.ended_at)],
        ["shards", run.shards], ["prior_id", run.prior_id], ["model_id", run.model_id]]) {
        more.append(el("dt", { text: k }), el("dd", { text: fmt(v) }));
      }
      const details = el("details", {}, [el("summary", { text: "parameters" }), more]);
      for (const [key, label] of [["parameters_json", "parameters"], ["shard_errors_json", "shard errors"],
        ["versions_json", "versions"]]) {
        if (run[key] && run[key] !== "{}") details.append(el("div", { class: "muted", text: label }), el("pre", { text: prettyJson(run[key]) }));
      }
      const show = el("button", { type: "button", text: "images" , title: "show this run's images in the table" });
      show.addEventListener("click", () => choose("filter-run", String(run.run_id)));
      const status = el("td", {}, [el("span", { class: "status " + String(run.status).replace(/[^a-z]/g, ""), text: fmt(run.status) })]);
      if (run.error) status.append(el("div", { class: "err", text: run.error }));
      body.append(el("tr", { "data-run": run.run_id }, [status,
        el("td", { class: "id", text: fmt(run.run_id) }), el("td", { class: "when", text: when(run.started_at) }),
        el("td", { class: "num", text: fmt(run.images_ok) }), el("td", { class: "num", text: fmt(run.images_error) }),
        el("td", { class: "num", text: fmt(run.images_skipped) }),
        el("td", { class: "num", text: fixed(run.images_per_second, 2) }), el("td", { class: "num", text: fixed(run.seconds, 1) }),
        el("td", { text: fmt(run.prior) }), el("td", { text: fmt(run.method) }), el("td", { text: fmt(run.config_hash) }),
        el("td", { class: "num", text: fmt(run.score_threshold) }), el("td", {}, [details, show])]));
    }
    box.append(el("div", { class: "table-wrap runs-wrap" }, [el("table", { id: "runs-table" }, [
      el("thead", {}, [el("tr", {}, head.map((h) => el("th", { text: h })))]), body])]));
  }

  function renderErrors() {
    const box = $("errors");
    const errors = [];
    for (let r = 0; r < ROWS.length; r++) if (get(r, "status") === "error") errors.push(r);
    if (!errors.length) { box.append(el("p", { class: "muted", text: "no error rows" })); return; }
    const LIMIT = 500;
    const table = el("table", { id: "errors-table" }, [el("thead", {}, [el("tr", {}, [
      el("th", { text: "source" }), el("th", { text: "error" }), el("th", { text: "run" })])])]);
    const body = el("tbody");
    for (const r of errors.slice(0, LIMIT)) {
      body.append(el("tr", {}, [el("td", { text: fmt(get(r, "source_uri")) }), el("td", { text: fmt(get(r, "error")) }),
        el("td", { title: fmt(get(r, "run_id")), text: short(fmt(get(r, "run_id"))) })]));
    }
    table.append(body);
    const only = el("button", { type: "button", text: "show only these rows in the table" });
    only.addEventListener("click", () => choose("filter-status", "error"));
    box.append(el("p", {}, [`${NUM.format(errors.length)} rows could not be cleaned` +
      (errors.length > LIMIT ? ` (the first ${LIMIT} below). ` : ". "), only]), table);
  }

  // ---- detail view -------------------------------------------------------------------------------------------
  let detailAt = -1;

  function figure(caption, content) {
    return el("figure", {}, [content, el("figcaption", { text: caption })]);
  }

  function openDetail(pos) {
    if (pos < 0 || pos >= view.length) return;
    detailAt = pos;
    const r = view[pos];
    $("detail-title").textContent = fmt(get(r, "source_uri"));
    const figures = IMAGE_COLUMNS.map((c) => figure(IMAGE_LABELS[c], el("div", { class: "big" }, [rowPicture(r, c)])));
    const j = DATA.image_columns.indexOf("anomaly_map_uri");
    const map = j < 0 ? null : IMAGES[r][j];
    if (map) {  // CSS stacking only: no canvas, whose pixel reads a file:// page may not make
      for (const c of ["thumbnail_uri", "restored_uri"]) {
        const k = DATA.image_columns.indexOf(c);
        const base = k < 0 ? null : IMAGES[r][k];
        if (!base) continue;
        const overlay = picture(map, "anomaly map", "");
        overlay.classList.add("overlay");
        figures.push(figure(IMAGE_LABELS[c] + " + anomaly map",
          el("div", { class: "stack" }, [picture(base, IMAGE_LABELS[c], ""), overlay])));
      }
    }
    $("detail-images").replaceChildren(...figures);
    setOverlayOpacity();
    const body = el("tbody");
    for (const c of COLS) {
      const v = get(r, c);
      const cell = c.endsWith("_json") && v ? el("td", {}, [el("pre", { text: prettyJson(v) })])
        : el("td", { class: v === null ? "null" : "", text: fmt(v) });
      body.append(el("tr", { "data-field": c }, [el("th", { text: c }), cell]));
    }
    $("detail-fields").replaceChildren(body);
    $("detail-prev").disabled = pos === 0;
    $("detail-next").disabled = pos === view.length - 1;
    $("detail").hidden = false;
    $("detail-close").focus();
  }

  function closeDetail() { $("detail").hidden = true; detailAt = -1; }

  function setOverlayOpacity() {
    const value = Number($("overlay-opacity").value) / 100;
    for (const img of document.querySelectorAll("#detail img.overlay")) img.style.opacity = String(value);
  }

  function bindDetail() {
    $("detail-close").addEventListener("click", closeDetail);
    $("detail-prev").addEventListener("click", () => openDetail(detailAt - 1));
    $("detail-next").addEventListener("click", () => openDetail(detailAt + 1));
    $("overlay-opacity").addEventListener("input", setOverlayOpacity);
    $("detail").addEventListener("click", (e) => { if (e.target === $("detail")) closeDetail(); });
    document.addEventListener("keydown", (e) => {
      if ($("detail").hidden) return;
      if (e.key === "Escape") closeDetail();
      else if (e.target instanceof HTMLInputElement) return;  // the arrows move the opacity slider
      else if (e.key === "ArrowLeft") openDetail(detailAt - 1);
      else if (e.key === "ArrowRight") openDetail(detailAt + 1);
    });
  }

  // ---- putting it together -----------------------------------------------------------------------------------
  function update() {
    view = [];
    for (let r = 0; r < ROWS.length; r++) if (passes(r)) view.push(r);
    view.sort(compare);
    state.page = 0;
    renderHeader();
    renderTable();
    renderHistogram();
  }

  document.title = "rgi report · " + DATA.catalog;
  $("catalog").textContent = DATA.catalog;
  $("generated").textContent = DATA.generated_at;
  const scope = [`${NUM.format(ROWS.length)} image rows`];
  if (DATA.total_rows > ROWS.length) scope.push(`the ${NUM.format(ROWS.length)} highest scores of ${NUM.format(DATA.total_rows)}`);
  if (DATA.runs_selected) scope.push("runs " + DATA.runs_selected.join(", "));
  $("catalog").after(" · " + scope.join(" · "));
  renderRuns();
  renderErrors();
  buildFilters();
  buildHeader();
  bindDetail();
  update();
  document.body.dataset.ready = "1";
})();
