// fashionrec web page: pick or drop a photo, optionally crop it, filter, and see the top-k similar items.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, crop: null, drag: null };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadInfo() {
  try {
    const resp = await fetch("/info");
    const info = await resp.json();
    if (!resp.ok) throw new Error(info.message || resp.statusText);
    $("versions").textContent = `model ${info.model_version} · index ${info.index_version} · ${info.items} items`;
    for (const c of info.categories) {
      const opt = document.createElement("option");
      opt.value = c;
      opt.textContent = c;
      $("category").appendChild(opt);
    }
    $("k").max = info.max_k;
    $("k").value = info.default_k;
  } catch (err) {
    $("versions").textContent = `not ready: ${err.message}`;
  }
}

function choose(file) {
  if (!file) return;
  state.file = file;
  state.crop = null;
  $("crop").hidden = true;
  $("preview").src = URL.createObjectURL(file);
  $("preview-wrap").hidden = false;
  $("drop-text").textContent = file.name;
  $("search").disabled = false;
  search();
}

// --- crop rectangle, drawn in display pixels and sent in the image's own pixels -------------------------
function pointIn(event) {
  const rect = $("preview").getBoundingClientRect();
  return {
    x: Math.min(Math.max(event.clientX - rect.left, 0), rect.width),
    y: Math.min(Math.max(event.clientY - rect.top, 0), rect.height),
  };
}

function drawCrop(a, b) {
  const box = $("crop");
  box.style.left = `${Math.min(a.x, b.x)}px`;
  box.style.top = `${Math.min(a.y, b.y)}px`;
  box.style.width = `${Math.abs(a.x - b.x)}px`;
  box.style.height = `${Math.abs(a.y - b.y)}px`;
  box.hidden = false;
}

$("stage").addEventListener("mousedown", (e) => { e.preventDefault(); state.drag = pointIn(e); });
window.addEventListener("mousemove", (e) => { if (state.drag) drawCrop(state.drag, pointIn(e)); });
window.addEventListener("mouseup", (e) => {
  if (!state.drag) return;
  const a = state.drag, b = pointIn(e);
  state.drag = null;
  if (Math.abs(a.x - b.x) < 8 || Math.abs(a.y - b.y) < 8) { clearCrop(); return; }
  const img = $("preview");
  const sx = img.naturalWidth / img.clientWidth, sy = img.naturalHeight / img.clientHeight;
  state.crop = [Math.min(a.x, b.x) * sx, Math.min(a.y, b.y) * sy, Math.max(a.x, b.x) * sx, Math.max(a.y, b.y) * sy]
    .map((v, i) => Math.round(Math.min(v, i % 2 === 0 ? img.naturalWidth : img.naturalHeight)));
  search();
});

function clearCrop() {
  state.crop = null;
  $("crop").hidden = true;
}
$("clear-crop").addEventListener("click", () => { clearCrop(); search(); });

// --- choosing a file ----------------------------------------------------------------------------------
$("file").addEventListener("change", (e) => choose(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  choose(e.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });

// --- searching ----------------------------------------------------------------------------------------
function render(data) {
  const list = $("results");
  list.replaceChildren();
  for (const item of data.items) {
    const li = document.createElement("li");
    li.className = "result";
    const img = document.createElement("img");
    img.src = item.image_url;
    img.alt = item.title;
    img.loading = "lazy";
    const meta = document.createElement("div");
    meta.className = "meta";
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = item.title;
    const line = document.createElement("div");
    line.textContent = `${item.category} · `;
    if (item.kids) {
      const badge = document.createElement("span");
      badge.className = "kids";
      badge.textContent = "kids";
      line.prepend(badge);
    }
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = item.score.toFixed(3);
    line.appendChild(score);
    meta.append(title, line);
    li.append(img, meta);
    list.appendChild(li);
  }
  $("versions").textContent = `model ${data.model_version} · index ${data.index_version}`;
}

async function search(event) {
  if (event) event.preventDefault();
  if (!state.file) return;
  const form = new FormData();
  form.append("image", state.file);
  form.append("k", $("k").value || "5");
  if ($("category").value) form.append("category", $("category").value);
  if ($("kids").value) form.append("kids", $("kids").value);
  if (state.crop) form.append("crop", state.crop.join(","));
  setStatus("Searching…");
  try {
    const started = performance.now();
    const resp = await fetch("/recommend", { method: "POST", body: form });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.message || resp.statusText);
    render(data);
    setStatus(`${data.items.length} results in ${Math.round(performance.now() - started)} ms`);
  } catch (err) {
    $("results").replaceChildren();
    setStatus(err.message, true);
  }
}

$("filters").addEventListener("submit", search);
for (const id of ["category", "kids", "k"]) $(id).addEventListener("change", () => search());
loadInfo();
