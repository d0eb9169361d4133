// FCHM dashboard: cameras with live status, a detection timeline per camera, and human
// views restored on demand. A plain ES module over the REST API (/v1): no build step,
// nothing loaded from outside this cloud. The API key lives in this tab's sessionStorage.
//
// Ids and nanosecond times are read from the exact `<name>_str` fields (JavaScript
// numbers round above 2^53) and computed with BigInt.

const POLL_MS = 3000; // cameras, timeline and detections
const VIEW_POLL_MS = 400; // a view job until it is done or failed
const ENHANCED = "enhanced"; // the view kind the camera sends its own pixels for
const ENHANCEMENT_BYTES = 16000; // its budget, on top of the frame's machine bitstream
const KEY_STORAGE = "fchm.apiKey";
const NS_PER_S = 1_000_000_000n;
const PALETTE = ["#2563eb", "#e11d48", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777"];
const RANGES = [
  { label: "10 minutes · 10 s bars", bucket: "10s", bucketS: 10, spanS: 600 },
  { label: "1 hour · 1 min bars", bucket: "1m", bucketS: 60, spanS: 3600 },
  { label: "6 hours · 5 min bars", bucket: "5m", bucketS: 300, spanS: 21600 },
  { label: "24 hours · 15 min bars", bucket: "15m", bucketS: 900, spanS: 86400 },
  { label: "7 days · 1 h bars", bucket: "1h", bucketS: 3600, spanS: 604800 },
];
const STEPS = ["queued", "running", "done"];

const $ = (id) => document.getElementById(id);
let schemaLoaded = Promise.resolve();

const state = {
  key: sessionStorage.getItem(KEY_STORAGE),
  kinds: ["preview"], // view kinds, preview first (from /openapi.json)
  labels: [], // the bundle's classes, for stable colours
  cameras: [],
  cameraId: null,
  range: RANGES[0],
  bucketFilter: null, // {since, until} (BigInt ns) of a clicked timeline bar
  detections: [],
  job: null, // the view being shown: {detection, frame, view, history, imageUrl, error}
  pollGeneration: 0,
};

// ── REST ───────────────────────────────────────────────────────────────────

class ApiError extends Error {
  constructor(status, detail, retryAfter = null) {
    super(detail);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function api(path, { method = "GET", body, blob = false } = {}) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body && JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, `the cloud did not answer (${err.message})`);
  }
  if (!response.ok) {
    const problem = await response.json().catch(() => ({})); // RFC 9457 problem details
    const retry = response.headers.get("Retry-After");
    throw new ApiError(response.status, problem.detail || response.statusText, retry);
  }
  return blob ? response.blob() : response.json();
}

function describe(err) {
  if (!(err instanceof ApiError)) return String(err.message || err);
  const retry = err.retryAfter ? ` Retry in ${err.retryAfter} s.` : "";
  switch (err.status) {
    case 0: return `Cannot reach the cloud: ${err.message}`;
    case 401: return `API key refused (401): ${err.message}`;
    case 403: return `Not allowed (403): ${err.message}`;
    case 429: return `The view queue is full (429): ${err.message}.${retry}`;
    default: return `Error ${err.status}: ${err.message}`;
  }
}

/** What the API says about itself: view kinds and the bundle's labels (no key needed). */
async function loadSchema() {
  try {
    const schema = await (await fetch("/openapi.json")).json();
    const kinds = schema.components.schemas.ViewRequest.properties.kind.enum || [];
    state.kinds = [...kinds].sort((a, b) => (b === "preview") - (a === "preview"));
    const params = schema.paths["/v1/detections"].get.parameters;
    const label = params.find((p) => p.name === "label").schema;
    const list = (label.anyOf || [label]).find((s) => s.type === "array");
    state.labels = (list && list.items.enum) || [];
  } catch {
    // An older cloud: keep the defaults (preview only, colours by first sight).
  }
}

// ── small helpers ──────────────────────────────────────────────────────────

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const nsDate = (ns) => new Date(Number(BigInt(ns) / 1_000_000n));
const clock = (date) => date.toISOString().slice(11, 19);
const stamp = (date) => date.toISOString().slice(0, 19).replace("T", " ");
const today = (date) => date.toISOString().slice(0, 10) === new Date().toISOString().slice(0, 10);
const shortTime = (date) => (today(date) ? clock(date) : stamp(date));
const number = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));

function ago(ns) {
  if (!ns) return "never";
  const s = Math.max(0, (Date.now() - nsDate(ns).getTime()) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return stamp(nsDate(ns));
}

function colour(label) {
  if (!state.labels.includes(label)) state.labels.push(label);
  return PALETTE[state.labels.indexOf(label) % PALETTE.length];
}

function labelChip(label) {
  const chip = el("span", { class: "chip" }, label);
  chip.style.setProperty("--c", colour(label));
  return chip;
}

// ── sign in, polling ───────────────────────────────────────────────────────

function showBanner(text) {
  $("banner").textContent = text;
  $("banner").hidden = false;
}

function showLogin(error = "") {
  state.pollGeneration += 1; // stops the poll loop
  $("app").hidden = $("session").hidden = true;
  $("login").hidden = false;
  $("banner").hidden = true;
  $("login-error").textContent = error;
  $("login-error").hidden = !error;
  $("api-key").focus();
}

async function connect(key) {
  state.key = key;
  await schemaLoaded;
  try {
    state.cameras = (await api("/v1/cameras")).items;
  } catch (err) {
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    showLogin(describe(err));
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $("login").hidden = true;
  $("app").hidden = $("session").hidden = false;
  renderCameras();
  pollLoop(++state.pollGeneration);
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  $("api-key").value = "";
  showLogin(message);
}

async function pollLoop(generation) {
  while (generation === state.pollGeneration) {
    try {
      state.cameras = (await api("/v1/cameras")).items;
      renderCameras();
      if (state.cameraId) await refreshCamera();
      $("banner").hidden = true;
      $("poll-state").textContent = `Live · updated ${clock(new Date())} UTC`;
    } catch (err) {
      if (err.status === 401) return signOut(describe(err));
      showBanner(describe(err));
    }
    await sleep(POLL_MS);
  }
}

// ── cameras ────────────────────────────────────────────────────────────────

function renderCameras() {
  $("camera-list").replaceChildren(...state.cameras.map(cameraItem));
  $("no-cameras").hidden = state.cameras.length > 0;
}

function cameraItem(camera) {
  const s = camera.status;
  const selected = camera.camera_id === state.cameraId;
  const button = el("button", {
    type: "button",
    class: `camera${selected ? " selected" : ""}`,
    "data-camera": camera.camera_id,
    "data-online": String(s.online),
  });
  button.append(
    el("span", { class: "camera-head" },
      el("span", { class: `dot ${s.online ? "online" : "offline"}` }),
      el("span", { class: "camera-name" }, camera.camera_id),
      el("span", { class: `badge ${s.online ? "online" : "offline"}` }, s.online ? "online" : "offline")),
    el("span", { class: "camera-line", title: s.last_frame || "" }, `Last frame ${ago(s.last_frame_ns_str)}`),
    el("span", { class: "camera-line stats" },
      `${number(s.fps)} fps · ${number(s.kbit_s)} kbit/s · level ${s.rate_level ?? "–"}`),
  );
  button.addEventListener("click", () => selectCamera(camera.camera_id));
  return el("li", {}, button);
}

async function selectCamera(id) {
  Object.assign(state, { cameraId: id, bucketFilter: null, detections: [] });
  showJob(null);
  renderCameras();
  $("pick-camera").hidden = true;
  $("camera-detail").hidden = false;
  $("camera-title").textContent = id;
  $("timeline").replaceChildren();
  renderDetections();
  try {
    await refreshCamera();
  } catch (err) {
    if (err.status === 401) return signOut(describe(err));
    showBanner(describe(err));
  }
}

// ── timeline and detections ────────────────────────────────────────────────

/** The window the timeline covers: ending now for a live camera, else at its last frame. */
function timelineWindow(camera) {
  const last = camera.status.last_frame_ns_str;
  if (!last) return null;
  const bucketNs = BigInt(state.range.bucketS) * NS_PER_S;
  const anchor = camera.status.online ? BigInt(Date.now()) * 1_000_000n : BigInt(last);
  const until = (anchor / bucketNs + 1n) * bucketNs;
  return { since: until - BigInt(state.range.spanS) * NS_PER_S, until, bucketNs };
}

async function refreshCamera() {
  const id = state.cameraId;
  const camera = state.cameras.find((c) => c.camera_id === id);
  if (!camera) return;
  const win = timelineWindow(camera);
  const list = new URLSearchParams({ camera: id, order: "newest", limit: "50" });
  if (state.bucketFilter) {
    list.set("since_ns", String(state.bucketFilter.since));
    list.set("until_ns", String(state.bucketFilter.until));
  }
  const counts = win && new URLSearchParams({
    camera: id, bucket: state.range.bucket, by_label: "true",
    since_ns: String(win.since), until_ns: String(win.until),
  });
  const [timeline, page] = await Promise.all([
    counts ? api(`/v1/detections/counts?${counts}`) : null,
    api(`/v1/detections?${list}`),
  ]);
  if (id !== state.cameraId) return; // another camera was picked meanwhile
  renderTimeline(win, timeline);
  state.detections = page.items;
  renderDetections();
}

function renderTimeline(win, counts) {
  const box = $("timeline");
  if (!win) {
    box.replaceChildren(el("p", { class: "muted" }, "No frames yet."));
    $("legend").replaceChildren();
    return;
  }
  const width = Math.max(320, box.clientWidth || 720);
  const height = 160;
  const left = 36, bottom = 22, top = 10;
  const plot = height - bottom - top;
  const n = Number((win.until - win.since) / win.bucketNs);
  const slot = (width - left) / n;
  const gap = slot > 4 ? 1 : 0;
  const max = 2 * Math.ceil(Math.max(1, ...counts.buckets.map((b) => b.count)) / 2); // even
  const picked = state.bucketFilter && state.bucketFilter.since;
  const chart = svg("svg", {
    class: picked ? "chart filtered" : "chart", viewBox: `0 0 ${width} ${height}`, width, height,
    role: "img", "aria-label": `${counts.total} detections`,
  });
  for (const f of [0, 0.5, 1]) {
    const y = top + plot * (1 - f);
    chart.append(svg("line", { class: f ? "grid" : "axis", x1: left, x2: width, y1: y, y2: y }));
    if (f) chart.append(svg("text", { class: "tick", x: left - 6, y: y + 4, "text-anchor": "end" },
      String(max * f)));
  }
  const totals = {};
  for (const b of counts.buckets) {
    const start = BigInt(b.start_ns_str);
    const x = left + Number((start - win.since) / win.bucketNs) * slot + gap;
    let y = top + plot;
    const parts = Object.entries(b.labels || { detections: b.count });
    for (const [label, count] of parts.sort(([a], [b2]) => colourOrder(a) - colourOrder(b2))) {
      totals[label] = (totals[label] || 0) + count;
      const h = (plot * count) / max;
      y -= h;
      const bar = svg("rect", {
        class: start === picked ? "bar picked" : "bar", x, y, width: Math.max(1, slot - 2 * gap), height: h,
        fill: colour(label), "data-label": label, "data-count": count,
      });
      bar.append(svg("title", {}, `${stamp(nsDate(start))} UTC · ${label}: ${count}`));
      bar.addEventListener("click", () => filterBucket(start, win.bucketNs));
      chart.append(bar);
    }
  }
  const fmt = state.range.spanS > 21600 ? stamp : clock;
  const ticks = [[win.since, "start"], [(win.since + win.until) / 2n, "middle"], [win.until, "end"]];
  for (const [ns, anchor] of ticks) {
    const x = left + (Number(ns - win.since) / Number(win.until - win.since)) * (width - left);
    chart.append(svg("text", { class: "tick", x, y: height - 6, "text-anchor": anchor },
      fmt(nsDate(ns))));
  }
  box.replaceChildren(chart);
  const legend = Object.entries(totals).map(([label, count]) =>
    el("span", { class: "legend-item" }, labelChip(label), ` ${count}`));
  if (!legend.length) legend.push(el("span", { class: "muted" }, "No detections in this window."));
  $("legend").replaceChildren(...legend);
}

const colourOrder = (label) => (colour(label), state.labels.indexOf(label));

function filterBucket(start, bucketNs) {
  state.bucketFilter = { since: start, until: start + bucketNs };
  refreshCamera().catch((err) => showBanner(describe(err)));
}

function renderDetections() {
  const f = state.bucketFilter;
  $("clear-filter").hidden = $("filter-note").hidden = !f;
  if (f) {
    $("filter-note").textContent =
      `Detections from ${stamp(nsDate(f.since))} to ${clock(nsDate(f.until))} UTC`;
  }
  $("detection-rows").replaceChildren(...state.detections.map(detectionRow));
  $("no-detections").hidden = state.detections.length > 0;
}

function detectionRow(d) {
  const chosen = state.job && state.job.detection.id_str === d.id_str;
  const row = el("tr", {
    class: `detection${chosen ? " selected" : ""}`, tabindex: "0", "data-detection": d.id_str,
    "data-frame": d.frame_id_str,
  });
  const time = nsDate(d.time_ns_str);
  row.append(
    el("td", { title: `${stamp(time)} UTC` }, shortTime(time)),
    el("td", {}, labelChip(d.label)),
    el("td", { class: "num" }, d.score.toFixed(2)),
    el("td", { class: "num" }, d.frame_id_str),
  );
  row.addEventListener("click", () => selectDetection(d));
  row.addEventListener("keydown", (e) => e.key === "Enter" && selectDetection(d));
  return row;
}

// ── human views ────────────────────────────────────────────────────────────

function showJob(job) {
  if (state.job && state.job.imageUrl) URL.revokeObjectURL(state.job.imageUrl);
  state.job = job;
  renderJob();
}

async function selectDetection(detection) {
  const job = { detection, frame: null, view: null, history: [], imageUrl: null, error: null };
  showJob(job);
  renderDetections();
  try {
    job.frame = await api(`/v1/frames/${detection.frame_id_str}`);
    await requestView(job, state.kinds[0]);
  } catch (err) {
    failJob(job, err);
  }
}

/** POST /v1/views, then poll the job until it is done (fetch the PNG) or failed. A refined
 * kind's preview is shown as soon as the worker has stored it, while the job runs on. */
async function requestView(job, kind) {
  Object.assign(job, { history: [], error: null, view: null, stage: null });
  if (job.imageUrl) URL.revokeObjectURL(job.imageUrl);
  job.imageUrl = null;
  renderJob();
  const body = { frame_id: job.detection.frame_id_str, kind };
  if (kind === ENHANCED) body.enhancement_bytes = ENHANCEMENT_BYTES;
  track(job, await api("/v1/views", { method: "POST", body }));
  while (state.job === job && !["done", "failed"].includes(job.view.status)) {
    await sleep(VIEW_POLL_MS);
    track(job, await api(`/v1/views/${job.view.id}`));
    if (job.view.status === "running" && !job.imageUrl && job.view.links.preview) {
      await showPreview(job);
    }
  }
  if (state.job !== job || job.view.status !== "done") return;
  showImage(job, await api(job.view.links.image, { blob: true }), "final");
}

async function showPreview(job) {
  try {
    showImage(job, await api(job.view.links.preview, { blob: true }), "preview");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 409)) throw err; // 409: not stored yet
  }
}

function showImage(job, blob, stage) {
  if (job.imageUrl) URL.revokeObjectURL(job.imageUrl);
  job.imageUrl = URL.createObjectURL(blob);
  job.stage = stage;
  renderJob();
}

function track(job, view) {
  job.view = view;
  const last = job.history[job.history.length - 1];
  if (!last || last.status !== view.status) job.history.push({ status: view.status, at: Date.now() });
  if (state.job === job) renderJob();
}

function failJob(job, err) {
  if (err.status === 401) return signOut(describe(err));
  job.error = describe(err);
  if (state.job === job) renderJob();
}

/** The next reconstruction kind (enhanced is asked of the camera: its own button). */
function nextKind(view) {
  const kinds = state.kinds.filter((k) => k !== ENHANCED);
  const at = view ? kinds.indexOf(view.kind) : -1;
  return at < 0 ? undefined : kinds[at + 1];
}

function renderJob() {
  const job = state.job;
  $("view-hint").hidden = Boolean(job);
  $("view-body").hidden = !job;
  const refine = $("refine");
  const next = job && job.view && job.view.status === "done" && nextKind(job.view);
  refine.disabled = !next;
  refine.textContent = next ? `Refine → ${next}` : "Refine";
  refine.title = state.kinds.length > 1
    ? "Request a refined view of this frame"
    : `This cloud offers one view kind (${state.kinds.join(", ")}); refined views come later`;
  const enhance = $("enhance");
  enhance.hidden = !state.kinds.includes(ENHANCED);
  enhance.disabled = !(job && job.frame) || Boolean(job.view && job.view.kind === ENHANCED &&
    !["done", "failed"].includes(job.view.status));
  if (!job) return;
  const d = job.detection;
  $("view-title").replaceChildren(labelChip(d.label),
    ` ${d.score.toFixed(2)} · frame ${d.frame_id_str} · ${stamp(nsDate(d.time_ns_str))} UTC`);
  const status = job.view ? job.view.status : job.error ? "failed" : "requesting";
  $("view-panel").dataset.status = status;
  $("view-panel").dataset.history = job.history.map((h) => h.status).join(",");
  $("job-steps").hidden = !job.view;
  const reached = job.history.map((h) => h.status);
  for (const li of $("job-steps").children) {
    const step = li.dataset.step;
    const failedHere = status === "failed" && step === "done";
    li.textContent = failedHere ? "failed" : step;
    li.className = failedHere ? "failed" : step === status ? "current"
      : reached.includes(step) || STEPS.indexOf(step) < STEPS.indexOf(status) ? "reached" : "";
  }
  $("view-meta").textContent = job.view ? viewMeta(job)
    : job.error ? "No view was queued; click the detection again to retry." : "Requesting a view…";
  $("view-description").textContent = job.view ? job.view.description : "";
  const error = job.error || (job.view && job.view.status === "failed" &&
    `The view failed: ${job.view.error || "no reason given"}`);
  $("view-error").textContent = error || "";
  $("view-error").hidden = !error;
  const fallback = job.view && job.view.status === "done" && job.view.fallback;
  $("view-fallback").textContent = fallback
    ? `Shown from the machine bitstream alone: ${job.view.fallback}` : "";
  $("view-fallback").hidden = !fallback;
  $("view-stage").hidden = !job.imageUrl;
  $("view-stage").dataset.stage = job.stage || "";
  $("stage-note").hidden = job.stage !== "preview";
  if (job.imageUrl) {
    $("view-image").src = job.imageUrl;
    // The boxes need the view's size, which the job reports once done.
    $("view-overlay").hidden = !job.view.width;
    if (job.view.width) drawOverlay(job);
  }
}

function viewMeta(job) {
  const v = job.view;
  const t0 = job.history[0].at;
  const steps = job.history.map((h) => `${h.status} +${((h.at - t0) / 1000).toFixed(1)} s`);
  const size = v.width ? ` · ${v.width}×${v.height}` : "";
  return `Kind ${v.kind}${size} · ${steps.join(" → ")}`;
}

/** Boxes are in the frame's pixels; the view may be smaller: scale to the view's size. */
function drawOverlay(job) {
  const { frame, view, detection } = job;
  const sx = view.width / frame.image_width;
  const sy = view.height / frame.image_height;
  const overlay = $("view-overlay");
  overlay.setAttribute("viewBox", `0 0 ${view.width} ${view.height}`);
  const others = frame.detections.filter((d) => d.id_str !== detection.id_str);
  const shapes = [...others, detection].map((d) => {
    const chosen = d === detection;
    const b = d.box;
    const box = svg("rect", {
      class: chosen ? "box chosen" : "box", "data-detection": d.id_str,
      x: b.x1 * sx, y: b.y1 * sy, width: (b.x2 - b.x1) * sx, height: (b.y2 - b.y1) * sy,
      stroke: colour(d.label),
    });
    if (!chosen) return box;
    const size = Math.max(8, view.width / 28);
    const tag = svg("text", { class: "box-tag", x: b.x1 * sx + 2, y: Math.max(size, b.y1 * sy - 3),
      "font-size": size, fill: colour(d.label) }, `${d.label} ${d.score.toFixed(2)}`);
    return svg("g", {}, box, tag);
  });
  overlay.replaceChildren(...shapes);
}

// ── start ──────────────────────────────────────────────────────────────────

function start() {
  schemaLoaded = loadSchema();
  $("range").replaceChildren(...RANGES.map((r, i) => el("option", { value: String(i) }, r.label)));
  $("range").addEventListener("change", (e) => {
    state.range = RANGES[Number(e.target.value)];
    state.bucketFilter = null;
    refreshCamera().catch((err) => showBanner(describe(err)));
  });
  $("clear-filter").addEventListener("click", () => {
    state.bucketFilter = null;
    refreshCamera().catch((err) => showBanner(describe(err)));
  });
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    connect($("api-key").value.trim());
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("enhance").addEventListener("click", () => {
    const job = state.job;
    if (job && job.frame) requestView(job, ENHANCED).catch((err) => failJob(job, err));
  });
  $("refine").addEventListener("click", () => {
    const job = state.job;
    const kind = job && nextKind(job.view);
    if (kind) requestView(job, kind).catch((err) => failJob(job, err));
  });
  if (state.key) connect(state.key);
  else showLogin();
}

start();
