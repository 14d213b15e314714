// The page's only script: pick or drop images, POST each to /v1/classify, show the answers.
// Server and file data reach the page through textContent and element properties only,
// never as HTML, so a label or a file name cannot inject markup.
"use strict";

(() => {
  // The service's base URL, from where this script was loaded (<base>/static/page.js),
  // so the page also works under a route prefix (/web/).
  const BASE = new URL("../", document.currentScript.src);
  const KEY_STORAGE = "rabbit-serve.api-key";
  const TOP_K_CHOICES = [1, 3, 5, 10, 20];
  const TIMING_NAMES = { queue: "queue", batch_wait: "batch wait", inference: "inference" };

  const $ = (id) => document.getElementById(id);
  const keyRow = $("key-row");
  const keyInput = $("api-key");
  const topK = $("top-k");
  const fileInput = $("files");
  const drop = $("drop");
  const results = $("results");
  const notice = $("notice");
  const template = $("card-template");

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function showNotice(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  function showKeyField(needed) {
    keyRow.hidden = false;
    keyInput.classList.toggle("needed", needed && !keyInput.value);
  }

  function fillTopK(defaultK, maxK) {
    const choices = new Set(TOP_K_CHOICES.filter((k) => k <= maxK));
    choices.add(Math.min(defaultK, maxK));
    topK.replaceChildren();
    for (const k of [...choices].sort((a, b) => a - b)) {
      const option = el("option", "", String(k));
      option.value = String(k);
      option.selected = k === defaultK;
      topK.append(option);
    }
  }

  async function loadConfig() {
    fillTopK(5, 100);
    try {
      const response = await fetch(new URL("page/config", BASE), { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const config = await response.json();
      fillTopK(config.default_top_k, config.max_top_k);
      if (config.api_keys) showKeyField(false);
    } catch (error) {
      // The page still works: a 401 from the first call brings up the key field.
      showNotice(`Could not read the page settings (${error.message}); using defaults.`);
    }
    document.body.dataset.ready = "true";
  }

  // An error body is the API's {"detail": "..."}; a proxy in front may answer in text.
  async function errorText(response) {
    const body = await response.text();
    let message = body.trim();
    try {
      const parsed = JSON.parse(body);
      if (parsed && typeof parsed.detail === "string") message = parsed.detail;
    } catch (_) {
      // Not JSON: show the text as it came.
    }
    let text = `HTTP ${response.status}${message ? ": " + message.slice(0, 500) : ""}`;
    const retry = response.headers.get("Retry-After");
    if (retry && (response.status === 429 || response.status === 503)) {
      text += ` (retry after ${retry} s)`;
    }
    return text;
  }

  function format(ms) {
    return ms >= 100 ? ms.toFixed(0) : ms.toFixed(1);
  }

  function showTimings(card, timings) {
    const bar = card.querySelector(".timing-bar");
    const list = card.querySelector(".timing-list");
    const total = timings.total;
    let accounted = 0;
    for (const [key, value] of Object.entries(timings)) {
      if (key === "total" || typeof value !== "number") continue;
      const name = TIMING_NAMES[key] || key.replace(/_/g, " ");
      const swatchClass = key in TIMING_NAMES ? `t-${key}` : "t-other";
      const dt = el("dt");
      dt.append(el("span", `swatch ${swatchClass}`), name);
      const dd = el("dd", "", `${format(value)} ms`);
      dd.dataset.timing = key;
      list.append(dt, dd);
      if (total > 0) {
        const segment = el("span", swatchClass);
        segment.style.width = `${Math.min(100, (100 * value) / total)}%`;
        segment.title = `${name}: ${format(value)} ms`;
        bar.append(segment);
      }
      accounted += value;
    }
    if (typeof total === "number") {
      const dt = el("dt");
      dt.append(el("span", "swatch t-other"), "total");
      const dd = el("dd", "", `${format(total)} ms`);
      dd.dataset.timing = "total";
      list.append(dt, dd);
      if (total > accounted) {
        const rest = el("span", "t-other");
        rest.style.width = `${(100 * (total - accounted)) / total}%`;
        rest.title = `ingress and reply: ${format(total - accounted)} ms`;
        bar.append(rest);
      }
    }
    card.querySelector(".timings").hidden = false;
  }

  function showResult(card, result) {
    card.dataset.state = "done";
    card.dataset.batchSize = String(result.batch_size);
    card.querySelector(".status").textContent =
      `batch size ${result.batch_size} · ${result.model}`;
    const list = card.querySelector(".predictions");
    for (const p of result.predictions) {
      const item = el("li", "prediction");
      item.dataset.classId = String(p.class_id);
      item.dataset.score = String(p.score);
      const row = el("div", "row");
      const label = el("span", "label", p.label);
      label.append(el("span", "class-id", `#${p.class_id}`));
      row.append(label, el("span", "score", `${(100 * p.score).toFixed(1)}%`));
      const bar = el("div", "bar");
      const fill = el("span");
      fill.style.width = `${Math.max(0, Math.min(1, p.score)) * 100}%`;
      bar.append(fill);
      item.append(row, bar);
      list.append(item);
    }
    showTimings(card, result.timings_ms || {});
  }

  function showError(card, text) {
    card.dataset.state = "error";
    card.querySelector(".status").textContent = text;
  }

  async function classify(file, card) {
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("top_k", topK.value);
    const headers = {};
    const key = keyInput.value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(new URL("v1/classify", BASE), {
        method: "POST", body: form, headers,
      });
    } catch (error) {
      showError(card, `network error: ${error.message}`);
      return;
    }
    if (response.ok) {
      showResult(card, await response.json());
      return;
    }
    card.dataset.status = String(response.status);
    showError(card, await errorText(response));
    if (response.status === 401) showKeyField(true);
  }

  function addCard(file) {
    const card = template.content.firstElementChild.cloneNode(true);
    const thumb = card.querySelector(".thumb");
    const url = URL.createObjectURL(file);
    thumb.src = url;
    thumb.alt = file.name;
    // A file that is not an image shows no picture; its card still shows the answer.
    thumb.addEventListener("error", () => { thumb.hidden = true; }, { once: true });
    card.dataset.url = url;
    const name = card.querySelector(".name");
    name.textContent = file.name;
    name.title = `${file.name} (${(file.size / 1024).toFixed(1)} KiB)`;
    results.append(card);
    return card;
  }

  function submit(files) {
    showNotice("");
    // One request per image, all at once: the service batches them together.
    const work = [...files].map((file) => classify(file, addCard(file)));
    return Promise.all(work);
  }

  function clearResults() {
    for (const card of results.querySelectorAll(".card")) URL.revokeObjectURL(card.dataset.url);
    results.replaceChildren();
    showNotice("");
  }

  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("input", () => {
    sessionStorage.setItem(KEY_STORAGE, keyInput.value);
    keyInput.classList.remove("needed");
  });
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  $("clear").addEventListener("click", clearResults);
  fileInput.addEventListener("change", () => {
    const files = [...fileInput.files];
    fileInput.value = ""; // the same files may be picked again
    if (files.length) submit(files);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      fileInput.click();
    }
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  // A file dropped beside the drop zone would make the browser open it instead.
  for (const type of ["dragover", "drop"]) {
    document.addEventListener(type, (event) => event.preventDefault());
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer && event.dataTransfer.files.length) submit(event.dataTransfer.files);
  });

  loadConfig();
})();
