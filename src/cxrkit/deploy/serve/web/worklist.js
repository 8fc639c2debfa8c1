// cxrkit web page, Worklist tab: the DICOM node's triaged studies (GET /v1/worklist), most urgent first, and for a
// selected study its films with heatmap overlays. Images are fetched with the API key header and shown through blob:
// URLs (an <img src> cannot send headers). Server data is only written with textContent / attribute setters.
"use strict";

(function () {
  const KEY_STORAGE = "cxrkit.apiKey"; // shared with app.js (the key box above both tabs)
  const PAGE = 50;
  const REFRESH_MS = 30000;
  const $ = (id) => document.getElementById(id);
  const state = { offset: 0, selected: null, shownKey: null, blobs: [], timer: null, loading: false };

  function headers() {
    const key = sessionStorage.getItem(KEY_STORAGE);
    return key ? { "X-API-Key": key } : {};
  }

  function setStatus(text, isError) {
    const el = $("wl-status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  async function getJSON(url) {
    const r = await fetch(url, { headers: headers(), cache: "no-store" });
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      const why = body && body.error ? body.error : r.statusText;
      const hint = r.status === 401 || r.status === 403 ? " Enter the API key above." : "";
      throw new Error("Refused (" + r.status + "): " + why + hint);
    }
    return body;
  }

  // -- tabs -------------------------------------------------------------------------------------------------------
  function showTab(name) {
    const worklist = name === "worklist";
    $("tab-single").setAttribute("aria-selected", String(!worklist));
    $("tab-worklist").setAttribute("aria-selected", String(worklist));
    $("view-single").hidden = worklist;
    $("view-worklist").hidden = !worklist;
    if (worklist) {
      history.replaceState(null, "", "#worklist");
      load();
    } else {
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  // -- formatting -------------------------------------------------------------------------------------------------
  function when(unixSeconds) {
    const d = new Date(unixSeconds * 1000);
    const p = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " + p(d.getHours()) + ":" +
      p(d.getMinutes()) + ":" + p(d.getSeconds());
  }

  // Positive findings of a study, most probable first; a finding seen only on films that failed the quality gate
  // is marked so (the model's scores on such films are not trusted).
  function positives(entry) {
    const best = new Map();
    for (const film of entry.films) {
      for (const f of film.findings) {
        if (!f.positive) continue;
        const had = best.get(f.name);
        const trusted = Boolean(film.quality_ok) || Boolean(had && had.trusted);
        best.set(f.name, { p: had ? Math.max(had.p, f.probability) : f.probability, trusted: trusted });
      }
    }
    return [...best.entries()].sort((a, b) => b[1].p - a[1].p)
      .map(([name, v]) => name + " " + v.p.toFixed(2) + (v.trusted ? "" : " (failed film)"));
  }

  function delivery(d) {
    if (d.dead > 0) return { text: d.dead + " failed (dead letter)", cls: "bad" };
    if (d.pending > 0) return { text: d.pending + " pending" + (d.sent ? ", " + d.sent + " sent" : ""), cls: "wait" };
    if (d.sent > 0) return { text: d.sent + " sent", cls: "ok" };
    return { text: "not queued", cls: "muted" };
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  function priorityChip(entry) {
    const chip = el("span", entry.priority_label, "prio prio-" + entry.priority_label);
    chip.title = entry.priority_reason;
    return chip;
  }

  // -- the list ---------------------------------------------------------------------------------------------------
  async function load() {
    if (state.loading) return;
    state.loading = true;
    $("wl-refresh").disabled = true;
    try {
      const page = await getJSON("/v1/worklist?limit=" + PAGE + "&offset=" + state.offset);
      if (page.total > 0 && state.offset >= page.total) { // the list shrank under this page: back to the last one
        state.offset = Math.max(0, Math.floor((page.total - 1) / PAGE) * PAGE);
        state.loading = false;
        return load();
      }
      render(page);
      setStatus(page.total ? "" : "The worklist is empty: no study has been processed yet.");
      $("wl-updated").textContent = "updated " + when(Date.now() / 1000);
    } catch (e) {
      setStatus(e.message || String(e), true);
    } finally {
      state.loading = false;
      $("wl-refresh").disabled = false;
    }
  }

  function render(page) {
    $("wl-notice").textContent = page.notice;
    $("wl-notice").hidden = false;
    const rules = $("wl-rules-list");
    rules.replaceChildren(...page.priority_rules.map((r) => {
      const li = el("li");
      li.append(el("span", r.label, "prio prio-" + r.label), document.createTextNode(" " + r.rule));
      return li;
    }));
    $("wl-synthetic").hidden = !page.entries.some((e) => e.synthetic_model);
    const first = page.total ? page.offset + 1 : 0;
    $("wl-range").textContent = first + "-" + (page.offset + page.entries.length) + " of " + page.total;
    $("wl-prev").disabled = page.offset === 0;
    $("wl-next").disabled = page.offset + page.entries.length >= page.total;

    const tbody = $("worklist").querySelector("tbody");
    tbody.replaceChildren();
    // Per-row "synthetic" tags only when the page mixes models; the banner above says it for a uniform page.
    const mixed = page.entries.some((e) => !e.synthetic_model);
    for (const entry of page.entries) tbody.append(row(entry, mixed));
    $("worklist").hidden = page.entries.length === 0;

    const still = page.entries.find((e) => e.entry_id === state.selected);
    if (still) {
      select(still, false);
    } else if (state.selected) { // the selected study left this page
      clearDetail();
    }
  }

  function row(entry, mixed) {
    const tr = el("tr", null, "wl-row prio-row-" + entry.priority_label);
    tr.dataset.entryId = entry.entry_id;
    tr.dataset.priority = String(entry.priority);
    tr.tabIndex = 0;
    tr.setAttribute("aria-selected", String(entry.entry_id === state.selected));
    const prio = el("td");
    prio.append(priorityChip(entry));
    if (entry.synthetic_model && mixed) prio.append(el("span", "synthetic", "tag-synthetic"));
    const pos = positives(entry);
    const findings = el("td", pos.length ? pos.join(", ") : "none", pos.length ? "" : "muted");
    const quality = entry.quality_ok ? el("td", "passed", "ok") :
      el("td", "FAILED: human read", "bad");
    const d = delivery(entry.delivery);
    tr.append(prio, el("td", entry.accession_number || "(none)"), el("td", when(entry.received_at), "num"),
      el("td", entry.abnormality.toFixed(3), "num"), findings, quality, el("td", d.text, d.cls));
    tr.addEventListener("click", () => select(entry, true));
    tr.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(entry, true); }
    });
    return tr;
  }

  // -- the selected study -----------------------------------------------------------------------------------------
  function clearDetail() {
    for (const url of state.blobs) URL.revokeObjectURL(url);
    state.blobs = [];
    state.selected = state.shownKey = null;
    $("wl-detail").hidden = true;
    $("wl-films").replaceChildren();
  }

  function select(entry, scroll) {
    state.selected = entry.entry_id;
    for (const tr of $("worklist").querySelectorAll("tbody tr")) {
      tr.setAttribute("aria-selected", String(tr.dataset.entryId === entry.entry_id));
    }
    $("wl-detail-title").replaceChildren(priorityChip(entry),
      document.createTextNode(" Accession " + (entry.accession_number || "(none)") +
        (entry.study_date ? ", study date " + entry.study_date : "")));
    $("wl-detail-reason").textContent = "Priority " + entry.priority + " (" + entry.priority_label + "): " +
      entry.priority_reason + (entry.synthetic_model ? ". SYNTHETIC MODEL: trained on phantom data." : "");
    const q = $("wl-detail-quality");
    q.className = "quality " + (entry.quality_ok ? "ok" : "bad");
    q.textContent = entry.quality_ok ? "Quality check passed on every film." :
      "Quality check FAILED on at least one film: a human must read this study; the model's scores are not trusted.";
    const d = delivery(entry.delivery);
    $("wl-detail-meta").textContent = "Received " + when(entry.received_at) + ", processed " +
      when(entry.processed_at) + "; results delivered: " + d.text + "; study " + entry.study_instance_uid +
      (entry.model_id ? "; model " + entry.model_id : "") + (entry.runtime ? " (" + entry.runtime + ")" : "");
    const skipped = entry.skipped.map((x) => (x && x.reason) ? x.reason : String(x));
    $("wl-detail-skipped").textContent = skipped.length ?
      skipped.length + " object(s) of this batch not read: " + skipped.join("; ") : "";
    $("wl-detail-skipped").hidden = !skipped.length;
    $("wl-detail").hidden = false;
    // Films are only re-fetched when the study's results changed (not on every periodic refresh).
    const key = entry.entry_id + "@" + entry.processed_at;
    if (key !== state.shownKey) {
      state.shownKey = key;
      renderFilms(entry);
    }
    if (scroll) $("wl-detail").scrollIntoView({ block: "nearest" });
  }

  function renderFilms(entry) {
    for (const url of state.blobs) URL.revokeObjectURL(url);
    state.blobs = [];
    const box = $("wl-films");
    box.replaceChildren();
    entry.films.forEach((film, i) => box.append(filmCard(entry, film, i)));
  }

  async function blobURL(entryId, file) {
    const r = await fetch("/v1/worklist/" + encodeURIComponent(entryId) + "/images/" + encodeURIComponent(file),
      { headers: headers(), cache: "no-store" });
    if (!r.ok) throw new Error("image " + file + ": " + r.status);
    const url = URL.createObjectURL(await r.blob());
    state.blobs.push(url);
    return url;
  }

  function filmCard(entry, film, index) {
    const card = el("article", null, "wl-film");
    card.dataset.sopKey = film.sop_key;
    card.append(el("h3", "Film " + (index + 1) + (film.view ? " (" + film.view + ")" : "") +
      ", abnormality " + film.abnormality.toFixed(3)));
    card.append(el("p", (film.quality_ok ? "Quality passed: " : "Quality FAILED, read by a human: ") +
      film.quality_reason, "quality " + (film.quality_ok ? "ok" : "bad")));
    const cols = el("div", null, "columns");
    const viewWrap = el("div", null, "viewer-wrap");
    const viewer = el("div", null, "viewer");
    const base = el("img", null, "wl-base");
    base.alt = "film " + (index + 1);
    const over = el("img", null, "wl-overlay");
    over.alt = "";
    over.hidden = true;
    viewer.append(base, over);
    const opacity = el("input");
    opacity.type = "range";
    opacity.min = "0";
    opacity.max = "100";
    opacity.value = "100"; // the node's overlays are the heatmap already blended over the film
    opacity.setAttribute("aria-label", "heatmap opacity");
    opacity.addEventListener("input", () => { over.style.opacity = String(opacity.value / 100); });
    const caption = el("p", null, "caption");
    viewWrap.append(viewer, el("label", "heatmap opacity ", "caption"), opacity, caption);

    const images = film.images || {};
    const heatNames = Object.keys(images).filter((n) => n !== "film");
    const filmFile = images.film || null;
    if (filmFile) {
      blobURL(entry.entry_id, filmFile).then((u) => { base.src = u; })
        .catch((e) => { caption.textContent = "Film not available: " + e.message; });
    } else {
      viewer.hidden = true;
      caption.textContent = "No film image was kept for this film.";
    }

    const table = el("table", null, "wl-findings");
    const head = el("tr");
    for (const h of ["finding", "probability", "threshold", "positive", "heatmap"]) head.append(el("th", h));
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    const buttons = [];
    async function toggle(name, button) {
      const showing = over.dataset.finding === name && !over.hidden;
      for (const b of buttons) {
        const on = !showing && b === button;
        b.setAttribute("aria-pressed", String(on));
        b.textContent = on ? "hide" : "show";
      }
      if (showing) {
        over.hidden = true;
        over.dataset.finding = "";
        caption.textContent = "";
        return;
      }
      try {
        if (!button.dataset.url) button.dataset.url = await blobURL(entry.entry_id, images[name]);
      } catch (e) {
        caption.textContent = "Heatmap not available: " + e.message;
        return;
      }
      over.src = button.dataset.url;
      over.dataset.finding = name;
      over.alt = "heatmap for " + name;
      over.style.opacity = String(opacity.value / 100);
      over.hidden = false;
      caption.textContent = "Heatmap for " + name + ": where the model looked, not a localisation.";
    }
    for (const f of film.findings) {
      const tr = el("tr", null, f.positive ? "positive" : "");
      tr.dataset.finding = f.name;
      const prob = el("td", null, "num");
      const bar = el("span", null, "bar");
      bar.style.width = Math.round(f.probability * 80) + "px";
      prob.append(bar, document.createTextNode(f.probability.toFixed(3)));
      const hm = el("td");
      if (images[f.name] && filmFile) {
        const b = el("button", "show", "toggle");
        b.type = "button";
        b.setAttribute("aria-pressed", "false");
        b.setAttribute("aria-label", "heatmap for " + f.name);
        b.addEventListener("click", () => toggle(f.name, b));
        buttons.push(b);
        hm.append(b);
      } else {
        hm.textContent = "-";
      }
      tr.append(el("td", f.name), prob, el("td", f.threshold.toFixed(3), "num"),
        el("td", f.positive ? "yes" : "no", f.positive ? "flag-yes" : "flag-no"), hm);
      table.tBodies[0].append(tr);
    }
    const tableWrap = el("div", null, "table-wrap");
    tableWrap.append(table);
    cols.append(viewWrap, tableWrap);
    card.append(cols);
    // Most probable finding with a heatmap first (findings are sorted by probability).
    const firstHeat = film.findings.find((f) => images[f.name]);
    if (firstHeat && filmFile && heatNames.length) toggle(firstHeat.name, buttons[0]);
    return card;
  }

  // -- wiring -----------------------------------------------------------------------------------------------------
  function init() {
    $("tab-single").addEventListener("click", () => showTab("single"));
    $("tab-worklist").addEventListener("click", () => showTab("worklist"));
    $("wl-refresh").addEventListener("click", load);
    $("api-key").addEventListener("change", () => { if (!$("view-worklist").hidden) load(); });
    $("wl-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); load(); });
    $("wl-next").addEventListener("click", () => { state.offset += PAGE; load(); });
    state.timer = setInterval(() => {
      if (!$("view-worklist").hidden && $("wl-auto").checked && document.visibilityState === "visible") load();
    }, REFRESH_MS);
    if (location.hash === "#worklist") showTab("worklist");
  }

  document.addEventListener("DOMContentLoaded", init);
})();
