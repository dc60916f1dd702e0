// Daguerre Studio: a client of the task API like any other (POST /v1, GET/DELETE /v1/gallery), with the key
// kept in this browser. No framework, no build step: ES modules, fetch and <canvas>.
const $ = (sel) => document.querySelector(sel);
const KEY = "daguerre.apiKey";
const POLL_MS = 400;
const GENERATING_KINDS = new Set(["dev", "schnell", "fill", "kontext", "control"]);
const SUITS = { dev: "photoreal text-to-image and edits; about 28 steps", schnell: "fast drafts in about 4 steps",
  fill: "inpainting and outpainting", kontext: "editing a start image by instruction",
  control: "structure from a Canny/Depth guide" };
let config = null;
let apiKey = localStorage.getItem(KEY) || "";
let source = null; // {dataURI, width, height}
let models = [];
let guide = null; // {dataURI, edgesUUID (the server's canny of it, once previewed)}

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
  let r = await api("GET", "/v1/gallery?limit=1");
  if (r.status === 401 && apiKey) { // a key saved for another server: try this one without it
    const saved = apiKey;
    apiKey = "";
    r = await api("GET", "/v1/gallery?limit=1");
    if (r.status === 401) apiKey = saved; else localStorage.removeItem(KEY);
  }
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
  loadCharacters();
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
  const nets = models.filter((m) => m.kind === "controlnet");
  $("#control-box").hidden = !nets.length;
  for (const m of nets) option($("#control-model"), m.id, m.name);
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
  const size = m?.size_bytes ? `${(m.size_bytes / 1e9).toFixed(m.size_bytes < 1e9 ? 3 : 1)} GB` : null;
  const info = m ? [SUITS[m.kind], `kind ${m.kind}`, size, m.profile && `profile ${m.profile}`,
    m.demo && "demo: random weights"] : [];
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
  let reply;
  try { reply = await enhanceTask(text); } catch { $("#enhance-status").textContent = "not signed in"; return; }
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

// ---- ControlNet guide, with the server's own canny preview (imageControlNetPreProcess)
$("#guide").addEventListener("change", () => {
  const file = $("#guide").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => { guide = { dataURI: reader.result, edgesUUID: null }; showGuide(reader.result); };
  reader.readAsDataURL(file);
});
for (const id of ["#canny-low", "#canny-high", "#control-canny"]) {
  $(id).addEventListener("change", () => { if (guide) { guide.edgesUUID = null; showGuide(guide.dataURI); } });
}
function showGuide(src) { $("#guide-preview").src = src; $("#guide-preview").hidden = false; }
$("#drop-guide").addEventListener("click", () => { guide = null; $("#guide").value = ""; $("#guide-preview").hidden = true; });
$("#canny-preview").addEventListener("click", async () => {
  if (!guide) { fieldError("controlNet", "choose a guide image first"); return; }
  clearErrors();
  const reply = await tasks([{ taskType: "imageControlNetPreProcess", taskUUID: uuid(), inputImage: guide.dataURI,
    preProcessorType: "canny", lowThresholdCanny: Number($("#canny-low").value),
    highThresholdCanny: Number($("#canny-high").value), outputType: "URL", outputFormat: "PNG" }]);
  if (reply.errors?.length) { showErrors(reply.errors.map((e) => ({ ...e, parameter: "controlNet" }))); return; }
  guide.edgesUUID = reply.data[0].guideImageUUID;
  showGuide(reply.data[0].guideImageURL);
});

function controlNet() {
  if (!guide || $("#control-box").hidden) return undefined;
  const c = { model: $("#control-model").value, weight: Number($("#control-weight").value) };
  if (!$("#control-canny").checked) c.guideImage = guide.dataURI;
  else if (guide.edgesUUID) c.guideImage = guide.edgesUUID; // the previewed edges, exactly
  else Object.assign(c, { guideImage: guide.dataURI, preprocessor: "canny",
    lowThresholdCanny: Number($("#canny-low").value), highThresholdCanny: Number($("#canny-high").value) });
  return [c];
}

// ---- errors in plain words, next to their field
function fieldError(parameter, message) {
  const top = (parameter || "").split(".")[0];
  const el = document.querySelector(`.field-error[data-for="${top}"]`) || $("#form-error");
  el.textContent = message;
}
function clearErrors() { document.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; }); }
function showErrors(errors) { for (const e of errors) fieldError(e.parameter, e.message); }

function outpaintSides() {
  const sides = Object.fromEntries(["top", "bottom", "left", "right"].map((k) => [k, Number($(`#out-${k}`).value || 0)]));
  return Object.values(sides).some((v) => v > 0) ? sides : null;
}

// ---- LoRAs (the catalog's) and saved characters (this key's)
$("#add-lora").addEventListener("click", () => {
  const loras = models.filter((m) => m.kind === "lora");
  if (!loras.length) { fieldError("lora", "this server has no LoRAs in its catalog"); return; }
  const n = document.querySelectorAll(".lora").length;
  const row = document.createElement("div");
  row.className = "lora";
  row.innerHTML = `<div><label for="lora-${n}">LoRA</label><select id="lora-${n}"></select></div>
    <div><label for="lora-w-${n}">Weight</label><input id="lora-w-${n}" type="number" step="0.05" min="-4" max="4" value="1"></div>
    <button type="button">Remove</button>`;
  for (const m of loras) option(row.querySelector("select"), m.id, m.name);
  row.querySelector("button").addEventListener("click", () => row.remove());
  $("#loras").append(row);
});

async function loadCharacters() {
  const r = await api("GET", "/v1/characters");
  if (r.status !== 200) return;
  const sel = $("#character");
  const keep = sel.value;
  sel.replaceChildren();
  option(sel, "", "(none)");
  for (const c of r.body.data) option(sel, c.name, `${c.name} (seed ${c.seed})`);
  sel.value = keep;
}

$("#character-save").addEventListener("click", async () => {
  clearErrors();
  const seed = $("#character-seed").value === "" ? Number($("#seed").value || 0) : Number($("#character-seed").value);
  const r = await api("POST", "/v1/characters", { name: $("#character-name").value.trim(),
    anchor: $("#character-anchor").value.trim(), seed });
  if (r.status !== 200) { showErrors(r.body.errors); return; }
  await loadCharacters();
  $("#character").value = r.body.data[0].name;
});
$("#character-delete").addEventListener("click", async () => {
  const name = $("#character").value;
  if (!name) return;
  await api("DELETE", `/v1/characters/${encodeURIComponent(name)}`);
  $("#character").value = "";
  loadCharacters();
});

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
  const character = $("#character").value;
  if (character) extra.character = character; // its seed is the character's: no seed of our own
  else if ($("#seed-lock").checked && $("#seed").value !== "") extra.seed = Number($("#seed").value);
  const loras = [...document.querySelectorAll(".lora")].map((row) => ({
    model: row.querySelector("select").value, weight: Number(row.querySelector("input").value) }));
  if (loras.length) extra.lora = loras;
  extra.controlNet = controlNet();
  if (source) {
    extra.seedImage = source.dataURI;
    const out = outpaintSides();
    if (out) {
      extra.outpaint = out;
      t.width = source.width + out.left + out.right;
      t.height = source.height + out.top + out.bottom;
    } else {
      extra.strength = Number($("#strength").value);
      if (painted) { extra.maskImage = maskDataURI(); extra.maskMargin = numberOrNone("#mask-margin"); }
    }
  }
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) t[k] = v;
  return t;
}

async function generate(ev) {
  ev?.preventDefault();
  clearErrors();
  const task = buildTask();
  let reply;
  try { reply = await tasks([task]); } catch (e) { fieldError("", `could not reach the server (${e.message})`); return; }
  if (reply.errors?.length) { showErrors(reply.errors); return; }
  watch(task);
}
$("#compose").addEventListener("submit", generate);
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && !document.querySelector("dialog[open]")) generate(ev);
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
    try { reply = await tasks([{ taskType: "getResponse", taskUUID: task.taskUUID }]); } catch {
      li.querySelector(".status").textContent = "connection lost, retrying...";
      setTimeout(poll, 2000);
      return;
    }
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
    const done = items.filter((x) => x.status === "success");
    for (const d of done) showResult(images, d);
    if (done.length && !$("#seed-lock").checked) $("#seed").value = Math.min(...done.map((d) => d.seed));
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
    const siblings = r.body.data.filter((x) => x.taskUUID === item.taskUUID).length;
    const del = Object.assign(document.createElement("button"), { type: "button",
      textContent: siblings > 1 ? `Delete task (${siblings} images)` : "Delete" });
    del.setAttribute("aria-label", `delete the task of the image with seed ${item.seed} (${siblings} image(s))`);
    use.setAttribute("aria-label", `use the settings of the image with seed ${item.seed}`);
    del.addEventListener("click", async () => {
      await api("DELETE", `/v1/gallery/${item.taskUUID}`);
      loadGallery();
    });
    const pick = Object.assign(document.createElement("input"), { type: "checkbox", className: "pick" });
    pick.setAttribute("aria-label", `select the image with seed ${item.seed} for comparison`);
    pick.addEventListener("change", () => {
      $("#compare").disabled = document.querySelectorAll(".card .pick:checked").length !== 2;
    });
    row.append(use, del, pick);
    card.append(img, row);
    card.item = item;
    return card;
  });
  $("#gallery").replaceChildren(...cards);
  $("#compare").disabled = true;
}

$("#compare").addEventListener("click", () => {
  const [a, b] = [...document.querySelectorAll(".card .pick:checked")].map((p) => p.closest(".card").item);
  $("#compare-a").src = a.imageURL; $("#compare-b").src = b.imageURL;
  const keys = [...new Set([...Object.keys(a.recipe || {}), ...Object.keys(b.recipe || {})])];
  const differ = keys.filter((k) => JSON.stringify(a.recipe?.[k]) !== JSON.stringify(b.recipe?.[k]) && k !== "batch_index");
  $("#compare-diff").textContent = differ.length
    ? differ.map((k) => `${k}: ${JSON.stringify(a.recipe?.[k])}  |  ${JSON.stringify(b.recipe?.[k])}`).join("\n")
    : "the recipes are the same";
  $("#compare-dialog").showModal();
});
$("#compare-close").addEventListener("click", () => $("#compare-dialog").close());

function recipeTask(r) {
  // The task that re-runs a text-to-image recipe (the same fields the form would send).
  const t = { taskType: "imageInference", taskUUID: uuid(), model: r.model, positivePrompt: r.positive_prompt,
    width: r.width, height: r.height, steps: r.steps, seed: r.seed, numberResults: 1, scheduler: r.scheduler,
    outputType: "URL", outputFormat: r.output_format, outputQuality: r.output_quality, deliveryMethod: "async" };
  if (r.guidance != null) t.CFGScale = r.guidance;
  if (r.true_cfg_scale != null) { t.trueCFGScale = r.true_cfg_scale; t.negativePrompt = r.negative_prompt; }
  if (r.loras?.length) t.lora = r.loras.map((l) => ({ model: l.model, weight: l.weight }));
  return t;
}

async function reproduce(item) {
  const verdict = $("#details-verdict");
  const r = item.recipe;
  if (!r || r.workflow !== "txt2img" || r.batch_size !== 1 || r.controlnets?.length || r.ip_adapters?.length) {
    verdict.textContent = "reproduce here covers single text-to-image results; use `daguerre reproduce` for the rest";
    return;
  }
  verdict.textContent = "running...";
  const task = recipeTask(r);
  const reply = await tasks([task]);
  if (reply.errors?.length) { verdict.textContent = reply.errors[0].message; return; }
  let done = null;
  const deadline = Date.now() + 10 * 60 * 1000;
  while (!done) {
    await new Promise((ok) => setTimeout(ok, POLL_MS));
    let res;
    try { res = await tasks([{ taskType: "getResponse", taskUUID: task.taskUUID }]); } catch { continue; }
    if (res.errors?.length) { verdict.textContent = res.errors[0].message; return; }
    done = res.data.find((d) => d.status === "success");
    if (!done && (!res.data.some((d) => d.status === "processing") || Date.now() > deadline)) {
      verdict.textContent = "the reproduction did not finish"; return;
    }
  }
  const [a, b] = await Promise.all([item.imageURL, done.imageURL].map((u) => fetch(u).then((x) => x.arrayBuffer())));
  const same = a.byteLength === b.byteLength && new Uint8Array(a).every((v, i) => v === new Uint8Array(b)[i]);
  verdict.textContent = same ? "identical bytes" : "the bytes differ (another device or version?)";
  loadGallery();
}

function details(item) {
  $("#details-image").src = item.imageURL;
  $("#details-recipe").textContent = JSON.stringify(item.recipe, null, 2);
  $("#details-download").href = item.imageURL;
  $("#details-download").setAttribute("download", `daguerre-${item.seed}.${item.format}`);
  $("#details-use").onclick = () => { useRecipe(item.recipe); $("#details").close(); };
  $("#details-verdict").textContent = "";
  $("#details-reproduce").onclick = () => reproduce(item);
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
  $("#character").value = "";
  $("#loras").replaceChildren();
  for (const l of r.loras || []) {
    $("#add-lora").click();
    const row = [...document.querySelectorAll(".lora")].at(-1);
    row.querySelector("select").value = l.model;
    row.querySelector("input").value = l.weight;
  }
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
  if (await signedIn()) { loadGallery(); loadCharacters(); }
}
start();
