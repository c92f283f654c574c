// The page of `dml serve`: plain JavaScript, no library, no build step.
// It talks to the JSON API of disentangled_ml/serve/app.py and never builds HTML from data
// (track ids and labels come from the user's files): text goes in through textContent only.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  // Tableau 10 plus two: distinct on a white background; unknown labels are grey.
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                   "#9c755f", "#bab0ac", "#17becf", "#8c564b"];
  const UNKNOWN = "#c8cdd5";
  // viridis at five stops, for numeric labels (tempo in BPM)
  const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

  const state = {
    info: null,
    weights: {},        // condition -> 0..1
    query: null,        // {kind: "track", track: {...}} or {kind: "upload", upload: {...}, audio: blob URL}
    results: [],        // the neighbours shown
    map: null,          // /api/map answer, plus bounds and point colours
    seq: 0,             // neighbour requests sent; only the latest one's answer is drawn
    inflight: null,     // its AbortController
    timer: null,
  };

  async function getJSON(url, options) {
    const response = await fetch(url, options);
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
      throw new Error(message);
    }
    return body;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function weightsText() {
    return state.info.conditions.map((c) => `${c}=${state.weights[c].toFixed(2)}`).join(",");
  }

  // ------------------------------------------------------------------ start

  async function start() {
    try {
      state.info = await getJSON("/api/info");
    } catch (e) {
      $("summary").textContent = `could not read the catalogue: ${e.message}`;
      return;
    }
    const info = state.info;
    $("summary").textContent = `${info.tracks.toLocaleString()} tracks · conditions ${info.conditions.join(", ")}` +
      ` · ${info.search} search · ${info.catalogue}`;
    $("k").max = info.k_max;
    $("k").value = info.k_default;
    buildSliders();
    buildMapViews();
    setUploadAvailability();
    document.body.dataset.state = "ready";
    const fromHash = decodeURIComponent(location.hash.replace(/^#track=/, ""));
    if (location.hash.startsWith("#track=") && fromHash) {
      const found = await getJSON(`/api/find?q=${encodeURIComponent(fromHash)}&limit=1`);
      if (found.tracks.length && found.tracks[0].track_id === fromHash) setTrackQuery(found.tracks[0]);
    }
    loadMap();
  }

  // ------------------------------------------------------------------ weights

  function buildSliders() {
    const box = $("sliders");
    const presets = $("presets");
    for (const c of state.info.conditions) {
      state.weights[c] = 1;
      const row = el("label", "slider");
      row.appendChild(el("span", "", c));
      const input = document.createElement("input");
      Object.assign(input, { type: "range", min: 0, max: 1, step: 0.05, value: 1, id: `w-${c}` });
      input.dataset.condition = c;
      const out = el("output", "", "1.00");
      out.id = `w-${c}-value`;
      input.addEventListener("input", () => {
        state.weights[c] = Number(input.value);
        out.textContent = state.weights[c].toFixed(2);
        scheduleNeighbours(60);
      });
      row.append(input, out);
      box.appendChild(row);
    }
    const preset = (label, values) => {
      const b = el("button", "", label);
      b.type = "button";
      b.addEventListener("click", () => { setWeights(values); scheduleNeighbours(0); });
      presets.appendChild(b);
    };
    preset("all equal", Object.fromEntries(state.info.conditions.map((c) => [c, 1])));
    for (const c of state.info.conditions) {
      preset(`only ${c}`, Object.fromEntries(state.info.conditions.map((d) => [d, d === c ? 1 : 0])));
    }
    $("k").addEventListener("input", () => scheduleNeighbours(150));
  }

  function setWeights(values) {
    for (const c of state.info.conditions) {
      state.weights[c] = values[c];
      $(`w-${c}`).value = values[c];
      $(`w-${c}-value`).textContent = values[c].toFixed(2);
    }
  }

  // ------------------------------------------------------------------ finding a track

  let findTimer = null;
  $("find").addEventListener("input", () => {
    clearTimeout(findTimer);
    findTimer = setTimeout(runFind, 120);
  });
  $("find").addEventListener("keydown", async (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    clearTimeout(findTimer);
    const tracks = await runFind();
    if (tracks && tracks.length) setTrackQuery(tracks[0]);
  });

  async function runFind() {
    const text = $("find").value;
    const list = $("find-results");
    let tracks;
    try {
      tracks = (await getJSON(`/api/find?q=${encodeURIComponent(text)}&limit=20`)).tracks;
    } catch (e) {
      list.replaceChildren(el("li", "error", e.message));
      return [];
    }
    if (text !== $("find").value) return tracks;  // the user typed on meanwhile; a newer find follows
    list.replaceChildren(...tracks.map((t) => {
      const li = el("li");
      li.tabIndex = 0;
      li.dataset.trackId = t.track_id;
      li.appendChild(el("span", "id", t.track_id));
      li.appendChild(el("span", "path", t.path));
      const choose = () => setTrackQuery(t);
      li.addEventListener("click", choose);
      li.addEventListener("keydown", (event) => { if (event.key === "Enter") choose(); });
      return li;
    }));
    if (!tracks.length) list.replaceChildren(el("li", "hint", "no track matches"));
    return tracks;
  }

  // ------------------------------------------------------------------ the query

  function setTrackQuery(track) {
    state.query = { kind: "track", track };
    history.replaceState(null, "", `#track=${encodeURIComponent(track.track_id)}`);
    $("find-results").replaceChildren();
    renderQuery();
    scheduleNeighbours(0);
  }

  function setUploadQuery(upload, audioUrl) {
    if (state.query && state.query.kind === "upload") URL.revokeObjectURL(state.query.audio);
    state.query = { kind: "upload", upload, audio: audioUrl };
    history.replaceState(null, "", "#");
    renderQuery();
    scheduleNeighbours(0);
  }

  function labelChips(labels, skip) {
    const box = el("span", "labels");
    for (const [name, value] of Object.entries(labels || {})) {
      if (skip && skip.includes(name)) continue;
      const chip = el("span", "chip");
      chip.appendChild(el("b", "", `${name} `));
      chip.appendChild(document.createTextNode(value === "" ? "?" : value.replaceAll("|", ", ")));
      box.appendChild(chip);
    }
    return box;
  }

  function audioPlayer(url, segment) {
    if (!url) return el("span", "hint", "file not served");
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "none";
    // a media fragment: the player starts at the segment and stops at its end
    audio.src = segment ? `${url}#t=${segment.start_s},${segment.end_s}` : url;
    return audio;
  }

  function renderQuery() {
    const box = $("query");
    box.className = "card";
    box.replaceChildren();
    const q = state.query;
    if (q.kind === "track") {
      box.dataset.trackId = q.track.track_id;
      box.appendChild(el("div", "id", q.track.track_id));
      box.appendChild(labelChips(q.track.labels));
      box.appendChild(el("div", "hint", "first segment"));
      box.appendChild(audioPlayer(q.track.audio, q.track.segment));
    } else {
      box.dataset.trackId = "";
      box.appendChild(el("div", "id", `${q.upload.name} (uploaded)`));
      box.appendChild(el("div", "hint", `${q.upload.segments} segment(s), ${q.upload.duration_s} s, not added to the catalogue`));
      box.appendChild(audioPlayer(q.audio, null));
    }
    drawMap();
  }

  // ------------------------------------------------------------------ neighbours

  function scheduleNeighbours(delay) {
    clearTimeout(state.timer);
    state.timer = setTimeout(fetchNeighbours, delay);
  }

  async function fetchNeighbours() {
    if (!state.query) return;
    if (state.inflight) state.inflight.abort();
    const controller = new AbortController();
    state.inflight = controller;
    const seq = ++state.seq;
    const q = state.query;
    const who = q.kind === "track" ? `track=${encodeURIComponent(q.track.track_id)}` : `upload=${q.upload.upload_id}`;
    const weights = weightsText();
    const url = `/api/neighbours?${who}&weights=${encodeURIComponent(weights)}&k=${encodeURIComponent($("k").value)}`;
    document.body.dataset.state = "busy";
    try {
      const answer = await getJSON(url, { signal: controller.signal });
      if (seq !== state.seq) return;
      $("search-error").textContent = "";
      state.results = answer.results;
      renderNeighbours(answer.results);
      // what the list now shows, for whoever waits on it (the browser test)
      document.body.dataset.shown = `${q.kind === "track" ? q.track.track_id : q.upload.upload_id}|${weights}`;
    } catch (e) {
      if (e.name === "AbortError" || seq !== state.seq) return;
      $("search-error").textContent = e.message;
    } finally {
      if (seq === state.seq) document.body.dataset.state = "ready";
    }
  }

  function renderNeighbours(results) {
    const body = $("neighbours").tBodies[0];
    body.replaceChildren(...results.map((r) => {
      const tr = el("tr");
      tr.dataset.trackId = r.track_id;
      tr.appendChild(el("td", "num", r.rank));
      const name = el("td");
      const b = el("button", "as-query", r.track_id);
      b.type = "button";
      b.title = `make ${r.track_id} the query`;
      b.addEventListener("click", () => setTrackQuery(r));
      name.appendChild(b);
      tr.appendChild(name);
      tr.appendChild(el("td", "num distance", r.distance.toFixed(4)));
      const labels = el("td");
      labels.appendChild(labelChips(r.labels, ["tempo"]));
      tr.appendChild(labels);
      const tempo = r.labels.tempo;
      tr.appendChild(el("td", "num", tempo ? `${Number(tempo).toFixed(1)} BPM` : "–"));
      const listen = el("td");
      listen.appendChild(audioPlayer(r.audio, r.segment));
      listen.appendChild(el("span", "segment",
        `${r.segment.matched ? "matched segment" : "first segment"} ${r.segment.start_s.toFixed(1)}–${r.segment.end_s.toFixed(1)} s`));
      tr.appendChild(listen);
      return tr;
    }));
    drawMap();
  }

  // ------------------------------------------------------------------ uploads

  function setUploadAvailability() {
    const zone = $("dropzone");
    if (!state.info.upload) {
      zone.classList.add("disabled");
      $("dropzone-text").textContent = "Start the server with --export EXPORT_DIR to query by an audio file.";
      zone.querySelector("label").hidden = true;
    }
  }

  async function handleFile(file) {
    $("upload-error").textContent = "";
    if (!state.info.upload) {
      $("upload-error").textContent = "This server was started without --export, so it cannot embed audio files.";
      return;
    }
    const limit = state.info.max_upload_bytes;
    if (file.size > limit) {  // the server refuses it too; saying so here spares sending it
      $("upload-error").textContent = `${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB, over this server's ` +
        `upload limit of ${limit / 2 ** 20} MB; cut it shorter, or restart the server with a larger --max-upload-mb.`;
      return;
    }
    $("upload-status").textContent = `embedding ${file.name}…`;
    try {
      const upload = await getJSON(`/api/upload?name=${encodeURIComponent(file.name)}`, {
        method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" },
      });
      setUploadQuery(upload, URL.createObjectURL(file));
    } catch (e) {
      $("upload-error").textContent = e.message;
    } finally {
      $("upload-status").textContent = "";
    }
  }

  const zone = $("dropzone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) handleFile(event.dataTransfer.files[0]);
  });
  // a file dropped beside the zone must not make the browser leave the page to open it
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("upload-input").addEventListener("change", (event) => {
    if (event.target.files.length) handleFile(event.target.files[0]);
    event.target.value = "";
  });

  // ------------------------------------------------------------------ the map

  function buildMapViews() {
    const select = $("map-view");
    for (const v of state.info.views) {
      const option = el("option", "", v);
      option.value = v;
      select.appendChild(option);
    }
    select.value = state.info.conditions[0] || state.info.views[0];
    select.addEventListener("change", loadMap);
    window.addEventListener("resize", drawMap);
    const canvas = $("map");
    canvas.addEventListener("click", async (event) => {
      const i = pointAt(event);
      if (i < 0) return;
      try {
        setTrackQuery(await getJSON(`/api/track?index=${i}`));
      } catch (e) {
        $("map-status").textContent = e.message;
      }
    });
    let hoverTimer = null;
    canvas.addEventListener("mousemove", (event) => {
      clearTimeout(hoverTimer);
      hoverTimer = setTimeout(async () => {
        const i = pointAt(event);
        const status = $("map-status");
        if (i < 0) { status.textContent = "click a point to make it the query"; return; }
        const labels = state.map.colours.kind === "classes" ? state.map.colours.classes[state.map.colours.index[i]]
          : state.map.colours.kind === "numeric" ? state.map.colours.values[i] : "";
        status.textContent = `track #${i}${labels !== undefined && labels !== "" ? ` · ${state.map.colour_by} ${labels}` : ""}` +
          " · click to make it the query";
      }, 30);
    });
  }

  async function loadMap() {
    const view = $("map-view").value;
    $("map-status").textContent = `computing the map of ${view}…`;
    try {
      const map = await getJSON(`/api/map?view=${encodeURIComponent(view)}`);
      if (view !== $("map-view").value) return;
      state.map = prepareMap(map);
      $("map-method").textContent = `${map.method.toUpperCase()} of the ${view} view` +
        (map.colour_by ? `, coloured by ${map.colour_by}` : "");
      $("map-status").textContent = "click a point to make it the query";
      drawLegend();
      drawMap();
      document.body.dataset.map = view;
    } catch (e) {
      $("map-status").textContent = `no map: ${e.message}`;
    }
  }

  function rampColour(t) {
    const x = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1);
    const i = Math.min(Math.floor(x), RAMP.length - 2);
    const f = x - i;
    const c = RAMP[i].map((v, j) => Math.round(v + f * (RAMP[i + 1][j] - v)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function prepareMap(map) {
    const n = map.x.length;
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < n; i++) {
      x0 = Math.min(x0, map.x[i]); x1 = Math.max(x1, map.x[i]);
      y0 = Math.min(y0, map.y[i]); y1 = Math.max(y1, map.y[i]);
    }
    map.bounds = { x0, x1: x1 > x0 ? x1 : x0 + 1, y0, y1: y1 > y0 ? y1 : y0 + 1 };
    const colours = new Array(n);
    const c = map.colours;
    if (c.kind === "classes") {
      for (let i = 0; i < n; i++) colours[i] = c.index[i] < 0 ? UNKNOWN : PALETTE[c.index[i] % PALETTE.length];
    } else if (c.kind === "numeric") {
      const known = c.values.filter((v) => v !== null);
      c.min = Math.min(...known); c.max = Math.max(...known);
      const span = c.max > c.min ? c.max - c.min : 1;
      for (let i = 0; i < n; i++) colours[i] = c.values[i] === null ? UNKNOWN : rampColour((c.values[i] - c.min) / span);
    } else {
      colours.fill(PALETTE[0]);
    }
    map.pointColours = colours;
    return map;
  }

  function drawLegend() {
    const legend = $("legend");
    legend.replaceChildren();
    const c = state.map.colours;
    if (c.kind === "classes") {
      c.classes.forEach((name, i) => {
        if (i >= PALETTE.length) return;
        const item = el("span", "item");
        const dot = el("i");
        dot.style.background = PALETTE[i];
        item.append(dot, document.createTextNode(name));
        legend.appendChild(item);
      });
      if (c.classes.length > PALETTE.length) legend.appendChild(el("span", "hint", `(+${c.classes.length - PALETTE.length} more, colours repeat)`));
    } else if (c.kind === "numeric") {
      legend.append(document.createTextNode(`${state.map.colour_by} ${c.min.toFixed(0)}`), el("span", "ramp"),
        document.createTextNode(`${c.max.toFixed(0)}`));
    }
  }

  // canvas pixels per CSS pixel, and the plot's margin in CSS pixels
  const MARGIN = 12;

  function toScreen(i) {
    const canvas = $("map");
    const b = state.map.bounds;
    const w = canvas.clientWidth - 2 * MARGIN, h = canvas.clientHeight - 2 * MARGIN;
    return { x: MARGIN + (state.map.x[i] - b.x0) / (b.x1 - b.x0) * w,
             y: MARGIN + (1 - (state.map.y[i] - b.y0) / (b.y1 - b.y0)) * h };
  }

  function pointAt(event) {
    if (!state.map) return -1;
    const rect = $("map").getBoundingClientRect();
    const mx = event.clientX - rect.left, my = event.clientY - rect.top;
    let best = -1, bestD = 8 * 8;  // within 8 CSS pixels
    for (let i = 0; i < state.map.x.length; i++) {
      const p = toScreen(i);
      const d = (p.x - mx) ** 2 + (p.y - my) ** 2;
      if (d < bestD) { bestD = d; best = i; }
    }
    return best;
  }

  function drawMap() {
    const canvas = $("map");
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(canvas.clientWidth * ratio);
    canvas.height = Math.round(canvas.clientHeight * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
    if (!state.map) return;
    const n = state.map.x.length;
    const r = n > 20000 ? 1 : n > 2000 ? 1.8 : 3;
    ctx.globalAlpha = n > 20000 ? 0.5 : 0.85;
    for (let i = 0; i < n; i++) {
      const p = toScreen(i);
      ctx.fillStyle = state.map.pointColours[i];
      if (n > 20000) {  // squares: a tenth of the cost of arcs, and as small as a pixel anyway
        ctx.fillRect(p.x - r, p.y - r, 2 * r, 2 * r);
      } else {
        ctx.beginPath(); ctx.arc(p.x, p.y, r, 0, 2 * Math.PI); ctx.fill();
      }
    }
    ctx.globalAlpha = 1;
    // the neighbours ringed, the query as a larger ring with a cross
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "#1d2430";
    for (const res of state.results) {
      const p = toScreen(res.index);
      ctx.beginPath(); ctx.arc(p.x, p.y, 5, 0, 2 * Math.PI); ctx.stroke();
    }
    if (state.query && state.query.kind === "track") {
      const p = toScreen(state.query.track.index);
      ctx.strokeStyle = "#e0245e"; ctx.lineWidth = 2.5;
      ctx.beginPath(); ctx.arc(p.x, p.y, 8, 0, 2 * Math.PI); ctx.stroke();
      ctx.beginPath(); ctx.moveTo(p.x - 11, p.y); ctx.lineTo(p.x + 11, p.y); ctx.moveTo(p.x, p.y - 11); ctx.lineTo(p.x, p.y + 11); ctx.stroke();
    }
  }

  // For tests and scripting: where track `index` is drawn, in CSS pixels from the canvas's top-left corner.
  window.dmlExplorer = { pointOf: (index) => (state.map ? toScreen(index) : null), state };

  start();
})();
