// Daguerre Studio: a client of the task API like any other (POST /v1, GET/DELETE /v1/gallery), with the key
// kept in this browser. No framework, no build step: ES modules, fetch and <canvas>.
const $ = (sel) => document.querySelector(sel);
const KEY = "daguerre.apiKey";
const POLL_MS = 400;
const GENERATING_KINDS = new Set(["dev", "schnell", "fill", "kontext", "control"]);
let config = null;
let apiKey = localStorage.getItem(KEY) || "";
let source = null; // {dataURI, width, height}
let models = [];

// ---- the API
async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 204) return { status: 204, body: null };
  let json = null;
  try { json = await r.json(); } catch { json = { errors: [{ message: `the server answered ${r.status}` }] }; }
  return { status: r.status, body: json };
}

async function tasks(list) {
  const r = await api("POST", "/v1", list);
  if (r.status === 401) { askKey(r.body.errors[0].message); throw new Error("not signed in"); }
  return r.body;
}

const uuid = () => crypto.randomUUID();

// ---- sign in
function askKey(message) {
  $("#key-error").textContent = message && apiKey ? message : "";
  if (!$("#key-dialog").open) $("#key-dialog").showModal();
  $("#api-key").focus();
}

async function signedIn() {
  const r = await api("GET", "/v1/gallery?limit=1");
  if (r.status === 401) { askKey(r.body.errors[0].message); return false; }
  $("#sign-out").hidden = !apiKey;
  return true;
}

$("#key-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  apiKey = $("#api-key").value.trim();
  const ok = (await api("GET", "/v1/gallery?limit=1")).status !== 401;
  if (!ok) { $("#key-error").textContent = "that key was refused"; return; }
  localStorage.setItem(KEY, apiKey);
  $("#key-dialog").close();
  $("#sign-out").hidden = false;
  loadGallery();
});
$("#sign-out").addEventListener("click", () => { localStorage.removeItem(KEY); apiKey = ""; location.reload(); });

// ---- the form
function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value; o.textContent = text ?? value;
  select.append(o);
}

function buildForm() {
  for (const m of models.filter((m) => GENERATING_KINDS.has(m.kind))) {
    option($("#model"), m.id, `${m.name} (${m.kind})`);
  }
  showModel();
  for (const s of config.schedulers) option($("#scheduler"), s);
  $("#scheduler").value = "Default";
  for (const a of config.aspects) option($("#aspect"), a.name);
  const formula = $("#formula");
  for (const [category, presets] of Object.entries(config.presets)) {
    const id = `formula-${category}`;
    const div = document.createElement("div");
    div.innerHTML = `<label for="${id}">${category}</label>`;
    const sel = document.createElement("select");
    sel.id = id; sel.dataset.category = category;
    option(sel, "", "(add...)");
    for (const p of presets) option(sel, p.text, p.id.replaceAll("-", " "));
    sel.title = "adds the preset's words to the prompt";
    sel.addEventListener("change", () => {
      if (!sel.value) return;
      const text = $("#prompt").value.trim();
      $("#prompt").value = text ? `${text}, ${sel.value}` : sel.value;
      sel.value = "";
      lintSoon();
    });
    div.append(sel);
    formula.append(div);
  }
}

function showModel() {
  const m = models.find((x) => x.id === $("#model").value);
  const info = m ? [`kind ${m.kind}`, m.profile && `profile ${m.profile}`, m.demo && "demo: random weights"] : [];
  $("#model-info").textContent = info.filter(Boolean).join(" · ");
}
$("#model").addEventListener("change", showModel);

function snapSize() {
  const a = config.aspects.find((x) => x.name === $("#aspect").value);
  const mp = Number($("#megapixels").value) * 1024 * 1024;
  const step = config.sizeStep;
  const w = Math.sqrt((mp * a.w) / a.h);
  const clamp = (v) => Math.min(2048, Math.max(128, Math.round(v / step) * step));
  $("#width").value = clamp(w);
  $("#height").value = clamp((w * a.h) / a.w);
}
$("#aspect").addEventListener("change", snapSize);
$("#megapixels").addEventListener("change", snapSize);
$("#use-default-negative").addEventListener("click", () => { $("#negative").value = config.defaultNegative; });
$("#strength").addEventListener("input", () => { $("#strength-value").textContent = $("#strength").value; });

// ---- prompt lint and enhancement (the promptEnhance task)
let lintTimer = null;
function lintSoon() { clearTimeout(lintTimer); lintTimer = setTimeout(lintNow, 700); }
$("#prompt").addEventListener("input", lintSoon);

async function enhanceTask(prompt) {
  return tasks([{ taskType: "promptEnhance", taskUUID: uuid(), prompt, promptMaxLength: 400, promptVersions: 1 }]);
}

async function lintNow() {
  const text = $("#prompt").value.trim();
  const list = $("#lint");
  if (text.length < 2) { list.replaceChildren(); return; }
  try {
    const reply = await enhanceTask(text);
    const warnings = (reply.data?.[0]?.warnings || []).filter((w) => !w.startsWith("added") && w.includes(":"));
    list.replaceChildren(...warnings.map((w) => Object.assign(document.createElement("li"), { textContent: w })));
  } catch { /* signed out: the dialog says so */ }
}

$("#enhance").addEventListener("click", async () => {
  const text = $("#prompt").value.trim();
  if (!text) { fieldError("positivePrompt", "write a prompt first"); return; }
  $("#enhance-status").textContent = "enhancing...";
  const reply = await enhanceTask(text);
  $("#enhance-status").textContent = "";
  if (reply.errors?.length) { showErrors(reply.errors); return; }
  const enhanced = reply.data[0].text;
  const diff = $("#enhance-diff");
  const added = enhanced.startsWith(text) ? enhanced.slice(text.length) : enhanced;
  diff.replaceChildren(document.createTextNode(enhanced.startsWith(text) ? text : ""),
    Object.assign(document.createElement("ins"), { textContent: added }));
  diff.hidden = false;
  $("#prompt").value = enhanced;
  lintSoon();
});

// ---- the start image and the mask
const canvas = $("#mask-canvas");
const ctx = canvas.getContext("2d");
let painting = false;
let painted = false;

$("#source").addEventListener("change", () => {
  const file = $("#source").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => useSource(reader.result);
  reader.readAsDataURL(file);
});

function useSource(dataURI) {
  const img = $("#source-preview");
  img.onload = () => {
    source = { dataURI, width: img.naturalWidth, height: img.naturalHeight };
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    clearMask();
    $("#edit").hidden = false;
  };
  img.src = dataURI;
}

function clearMask() { ctx.clearRect(0, 0, canvas.width, canvas.height); painted = false; }
$("#clear-mask").addEventListener("click", clearMask);
$("#drop-source").addEventListener("click", () => { source = null; $("#edit").hidden = true; $("#source").value = ""; });

function paint(ev) {
  const r = canvas.getBoundingClientRect();
  const x = ((ev.clientX - r.left) * canvas.width) / r.width;
  const y = ((ev.clientY - r.top) * canvas.height) / r.height;
  const size = (Number($("#brush").value) * canvas.width) / r.width;
  ctx.globalCompositeOperation = $("#eraser").checked ? "destination-out" : "source-over";
  ctx.fillStyle = "#ff2d55";
  ctx.beginPath(); ctx.arc(x, y, size / 2, 0, Math.PI * 2); ctx.fill();
  if (!$("#eraser").checked) painted = true;
}
canvas.addEventListener("pointerdown", (ev) => { painting = true; canvas.setPointerCapture(ev.pointerId); paint(ev); });
canvas.addEventListener("pointermove", (ev) => { if (painting) paint(ev); });
canvas.addEventListener("pointerup", () => { painting = false; });

function maskDataURI() {
  // White where painted, black elsewhere: the task API's mask convention.
  const out = document.createElement("canvas");
  out.width = canvas.width; out.height = canvas.height;
  const o = out.getContext("2d");
  o.fillStyle = "#000"; o.fillRect(0, 0, out.width, out.height);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const m = o.getImageData(0, 0, out.width, out.height);
  for (let i = 3; i < pixels.data.length; i += 4) {
    if (pixels.data[i] > 0) { m.data[i - 3] = m.data[i - 2] = m.data[i - 1] = 255; }
  }
  o.putImageData(m, 0, 0);
  return out.toDataURL("image/png");
}

// ---- errors in plain words, next to their field
function fieldError(parameter, message) {
  const top = (parameter || "").split(".")[0];
  const el = document.querySelector(`.field-error[data-for="${top}"]`) || $("#form-error");
  el.textContent = message;
}
function clearErrors() { document.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; }); }
function showErrors(errors) { for (const e of errors) fieldError(e.parameter, e.message); }

// ---- generate
function numberOrNone(id) { const v = $(id).value.trim(); return v === "" ? undefined : Number(v); }

function buildTask() {
  const t = {
    taskType: "imageInference", taskUUID: uuid(), model: $("#model").value,
    positivePrompt: $("#prompt").value.trim(), width: Number($("#width").value), height: Number($("#height").value),
    numberResults: Number($("#n").value || 1), scheduler: $("#scheduler").value, outputType: "URL",
    outputFormat: $("#format").value, deliveryMethod: "async", includeProgress: true,
  };
  const extra = { negativePrompt: $("#negative").value.trim() || undefined, steps: numberOrNone("#steps"),
    CFGScale: numberOrNone("#cfg"), trueCFGScale: numberOrNone("#true-cfg") };
  if ($("#seed-lock").checked && $("#seed").value !== "") extra.seed = Number($("#seed").value);
  if (source) {
    extra.seedImage = source.dataURI;
    extra.strength = Number($("#strength").value);
    if (painted) { extra.maskImage = maskDataURI(); extra.maskMargin = numberOrNone("#mask-margin"); }
  }
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) t[k] = v;
  return t;
}

async function generate(ev) {
  ev?.preventDefault();
  clearErrors();
  const task = buildTask();
  const reply = await tasks([task]);
  if (reply.errors?.length) { showErrors(reply.errors); return; }
  watch(task);
}
$("#compose").addEventListener("submit", generate);
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) generate(ev);
});

function watch(task) {
  const li = document.createElement("li");
  li.className = "task";
  li.dataset.task = task.taskUUID;
  li.innerHTML = `<div class="row"><strong></strong><span class="status muted" aria-live="polite">queued</span>
    <button type="button" class="cancel">Cancel</button></div>
    <progress max="1" value="0" aria-label="progress"></progress><div class="images"></div>`;
  li.querySelector("strong").textContent = task.positivePrompt.slice(0, 60);
  $("#tasks").prepend(li);
  li.querySelector(".cancel").addEventListener("click", async () => {
    await tasks([{ taskType: "cancelTask", taskUUID: task.taskUUID }]);
  });
  const images = li.querySelector(".images");
  const poll = async () => {
    let reply;
    try { reply = await tasks([{ taskType: "getResponse", taskUUID: task.taskUUID }]); } catch { return; }
    if (reply.errors?.length) {
      li.querySelector(".status").textContent = reply.errors[0].message;
      li.querySelector(".cancel").remove();
      return;
    }
    const items = reply.data;
    const pending = items.filter((d) => d.status === "processing");
    const first = pending[0];
    if (first?.queuePosition !== undefined) {
      li.querySelector(".status").textContent = first.queuePosition ? `queued: ${first.queuePosition} ahead` : "next";
    } else if (first?.progress) {
      const p = first.progress;
      li.querySelector("progress").max = p.total || 1;
      li.querySelector("progress").value = p.step;
      li.querySelector(".status").textContent = `step ${p.step} of ${p.total}`;
      if (first.previewImage) showPreview(images, first.previewImage);
    }
    for (const d of items.filter((x) => x.status === "success")) showResult(images, d);
    if (pending.length) { setTimeout(poll, POLL_MS); return; }
    li.querySelector(".status").textContent = "done";
    li.querySelector("progress").value = li.querySelector("progress").max;
    li.querySelector(".cancel")?.remove();
    loadGallery();
  };
  setTimeout(poll, POLL_MS);
}

function showPreview(box, dataURI) {
  let img = box.querySelector("img.preview");
  if (!img) { img = Object.assign(document.createElement("img"), { className: "preview", alt: "live preview" }); box.prepend(img); }
  img.src = dataURI;
}

function showResult(box, d) {
  box.querySelector("img.preview")?.remove();
  if (box.querySelector(`img[data-image="${d.imageUUID}"]`)) return;
  const img = Object.assign(document.createElement("img"), { src: d.imageURL, alt: `result, seed ${d.seed}` });
  img.dataset.image = d.imageUUID;
  box.append(img);
  $("#seed").value = d.seed;
}

// ---- the gallery (this key's, kept by the server)
async function loadGallery() {
  const r = await api("GET", "/v1/gallery?limit=60");
  if (r.status !== 200) return;
  const cards = r.body.data.map((item) => {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.image = item.imageUUID;
    const img = Object.assign(document.createElement("img"), { src: item.imageURL, loading: "lazy",
      alt: item.recipe?.positive_prompt?.slice(0, 80) || "result", tabIndex: 0 });
    img.addEventListener("click", () => details(item));
    img.addEventListener("keydown", (ev) => { if (ev.key === "Enter") details(item); });
    const row = document.createElement("div");
    row.className = "row";
    row.innerHTML = `<span>seed ${item.seed}</span>`;
    const use = Object.assign(document.createElement("button"), { type: "button", textContent: "Use settings" });
    use.addEventListener("click", () => useRecipe(item.recipe));
    const del = Object.assign(document.createElement("button"), { type: "button", textContent: "Delete" });
    del.setAttribute("aria-label", `delete the image with seed ${item.seed}`);
    del.addEventListener("click", async () => {
      await api("DELETE", `/v1/gallery/${item.taskUUID}`);
      loadGallery();
    });
    row.append(use, del);
    card.append(img, row);
    return card;
  });
  $("#gallery").replaceChildren(...cards);
}

function details(item) {
  $("#details-image").src = item.imageURL;
  $("#details-recipe").textContent = JSON.stringify(item.recipe, null, 2);
  $("#details-download").href = item.imageURL;
  $("#details-download").setAttribute("download", `daguerre-${item.seed}.${item.format}`);
  $("#details-use").onclick = () => { useRecipe(item.recipe); $("#details").close(); };
  $("#details").showModal();
}
$("#details-close").addEventListener("click", () => $("#details").close());

function useRecipe(r) {
  if (!r) return;
  const set = (id, v) => { $(id).value = v ?? ""; };
  if ([...$("#model").options].some((o) => o.value === r.model)) $("#model").value = r.model;
  set("#prompt", r.original_prompt || r.positive_prompt);
  set("#negative", r.negative_prompt);
  set("#width", r.width); set("#height", r.height); set("#steps", r.steps);
  set("#cfg", r.guidance); set("#true-cfg", r.true_cfg_scale);
  $("#scheduler").value = r.scheduler || "Default";
  set("#seed", r.seed); $("#seed-lock").checked = true; set("#n", 1);
  $("#format").value = r.output_format || "JPG";
  showModel();
  $("#prompt").focus();
}

// ---- start
async function start() {
  const [cfg, health] = await Promise.all([fetch("/studio/config.json").then((r) => r.json()),
    fetch("/health/ready").then((r) => r.json())]);
  config = cfg;
  models = health.models || [];
  $("#server-note").textContent = health.demo ? "demo server: random weights, images are noise" : `Daguerre ${health.version}`;
  buildForm();
  if (await signedIn()) loadGallery();
}
start();
