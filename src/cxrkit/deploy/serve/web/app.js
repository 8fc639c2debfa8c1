// cxrkit web page: upload a film, show findings, heatmaps and the quality verdict. No dependencies, no build step.
// Server data is only ever written with textContent / attribute setters (never innerHTML).
"use strict";

(function () {
  const KEY_STORAGE = "cxrkit.apiKey";
  const $ = (id) => document.getElementById(id);
  let authRequired = false;
  let current = null; // the last predict response

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  function apiHeaders() {
    const key = sessionStorage.getItem(KEY_STORAGE);
    return authRequired && key ? { "X-API-Key": key } : {};
  }

  async function checkAuth() {
    try {
      const r = await fetch("/healthz");
      const body = await r.json();
      authRequired = Boolean(body.auth_required);
    } catch (e) {
      setStatus("The server does not answer: " + e, true);
    }
    $("auth").hidden = !authRequired;
    $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  }

  async function upload(file) {
    if (!file) return;
    if (authRequired && !sessionStorage.getItem(KEY_STORAGE)) {
      setStatus("Enter the API key first.", true);
      $("api-key").focus();
      return;
    }
    const form = new FormData();
    form.append("file", file, file.name || "upload");
    const heat = $("want-heatmaps").checked;
    setStatus("Analysing " + (file.name || "the file") + " ...");
    $("results").setAttribute("aria-busy", "true");
    let response, body;
    try {
      response = await fetch("/v1/predict?heatmap=" + heat, { method: "POST", body: form, headers: apiHeaders() });
      body = await response.json();
    } catch (e) {
      setStatus("Upload failed: " + e, true);
      return;
    } finally {
      $("results").removeAttribute("aria-busy");
    }
    if (!response.ok) {
      setStatus("Refused (" + response.status + "): " + (body && body.error ? body.error : response.statusText), true);
      return;
    }
    current = body;
    render(body);
    setStatus("Done in " + Math.round(Object.values(body.timing_ms).reduce((a, b) => a + b, 0)) + " ms (server time).");
  }

  function render(res) {
    $("notice").textContent = res.notice;
    $("synthetic").hidden = !res.warning;
    $("synthetic").textContent = res.warning || "";
    const q = $("quality");
    // a pass is only green when a fitted gate scored the image; basic checks alone are not a quality check
    const gated = res.quality.score !== null && res.quality.score !== undefined;
    const verdict = !res.quality.ok ? "bad" : gated ? "ok" : "unchecked";
    q.className = "quality " + verdict;
    q.textContent = {
      ok: "Quality check passed: ",
      unchecked: "Not quality-checked (no gate fitted): ",
      bad: "Quality check FAILED - results unreliable: ",
    }[verdict] + res.quality.reason;
    $("abnormality").textContent = "Abnormality score: " + res.abnormality.toFixed(3) +
      "  (" + res.positive_findings.length + " finding(s) above threshold)";
    $("model").textContent = "Model " + res.model_id + ", version " + res.model_version + "; image " +
      res.image.format.toUpperCase() + " " + res.image.width + " x " + res.image.height + "; request " + res.request_id;

    const base = $("base-image");
    const overlay = $("overlay");
    overlay.hidden = true;
    overlay.removeAttribute("src");
    drawBoxes(null);
    if (res.heatmaps) {
      base.src = res.heatmaps.image;
    } else {
      base.removeAttribute("src");
    }
    $("viewer").hidden = !res.heatmaps;

    const tbody = $("findings").querySelector("tbody");
    tbody.replaceChildren();
    for (const f of res.findings) {
      const tr = document.createElement("tr");
      tr.className = f.positive ? "positive" : "";
      tr.dataset.finding = f.name;
      const name = document.createElement("td");
      name.textContent = f.name;
      const prob = document.createElement("td");
      prob.className = "num";
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = Math.round(f.probability * 80) + "px";
      prob.append(bar, document.createTextNode(f.probability.toFixed(3)));
      const thr = document.createElement("td");
      thr.className = "num";
      thr.textContent = f.threshold.toFixed(3);
      const pos = document.createElement("td");
      pos.className = f.positive ? "flag-yes" : "flag-no";
      pos.textContent = f.positive ? "yes" : "no";
      const hm = document.createElement("td");
      if (res.heatmaps && res.heatmaps.overlays[f.name]) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "toggle";
        b.textContent = "show";
        b.setAttribute("aria-pressed", "false");
        b.setAttribute("aria-label", "heatmap for " + f.name);
        b.addEventListener("click", () => toggle(f.name));
        hm.append(b);
      } else {
        hm.textContent = "-";
      }
      tr.append(name, prob, thr, pos, hm);
      tbody.append(tr);
    }
    $("results").hidden = false;
    if (res.heatmaps && res.findings.length) toggle(res.findings[0].name); // most probable finding first
  }

  // The shown finding's boxes (positive findings only, as in the SR) as SVG rectangles over the image; the
  // viewBox is the uploaded image's pixel frame, the frame the API gives the boxes in.
  function drawBoxes(name) {
    const svg = $("boxes");
    svg.replaceChildren();
    const boxes = (name && current && current.heatmaps && current.heatmaps.boxes &&
                   current.heatmaps.boxes[name]) || [];
    svg.style.display = boxes.length ? "block" : "none";
    if (!boxes.length) return 0;
    svg.setAttribute("viewBox", "0 0 " + current.image.width + " " + current.image.height);
    const ns = svg.namespaceURI; // the SVG namespace, without writing a URL into the page
    for (const b of boxes) {
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("x", String(b.x));
      r.setAttribute("y", String(b.y));
      r.setAttribute("width", String(b.w));
      r.setAttribute("height", String(b.h));
      const t = document.createElementNS(ns, "title");
      t.textContent = name + ": peak " + b.score.toFixed(2);
      r.append(t);
      svg.append(r);
    }
    return boxes.length;
  }

  function toggle(name) {
    const overlay = $("overlay");
    const showing = overlay.dataset.finding === name && !overlay.hidden;
    for (const b of document.querySelectorAll("#findings button.toggle")) {
      const on = !showing && b.closest("tr").dataset.finding === name;
      b.setAttribute("aria-pressed", String(on));
      b.textContent = on ? "hide" : "show";
    }
    if (showing) {
      overlay.hidden = true;
      overlay.dataset.finding = "";
      $("heatmap-caption").textContent = "";
      drawBoxes(null);
      return;
    }
    overlay.src = current.heatmaps.overlays[name];
    overlay.dataset.finding = name;
    overlay.alt = "heatmap for " + name;
    overlay.style.opacity = String($("opacity").value / 100);
    overlay.hidden = false;
    const n = drawBoxes(name);
    $("heatmap-caption").textContent = "Heatmap (" + current.heatmaps.method + ") for " + name +
      ": where the model looked, not a localisation." +
      (n ? " White boxes: the " + n + " hottest region(s) of the map." : "");
  }

  function init() {
    checkAuth();
    $("api-key").addEventListener("input", (e) => {
      const v = e.target.value.trim();
      if (v) sessionStorage.setItem(KEY_STORAGE, v); else sessionStorage.removeItem(KEY_STORAGE);
    });
    $("file-input").addEventListener("change", (e) => {
      upload(e.target.files[0]);
      e.target.value = ""; // picking the same file again re-uploads
    });
    $("opacity").addEventListener("input", (e) => {
      $("overlay").style.opacity = String(e.target.value / 100);
    });
    const drop = $("drop");
    for (const ev of ["dragenter", "dragover"]) {
      drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
    }
    for (const ev of ["dragleave", "drop"]) {
      drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
    }
    drop.addEventListener("drop", (e) => {
      const file = e.dataTransfer && e.dataTransfer.files[0];
      if (file) upload(file);
    });
    // Dropping a file anywhere else must not navigate away from the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
  }

  document.addEventListener("DOMContentLoaded", init);
})();
