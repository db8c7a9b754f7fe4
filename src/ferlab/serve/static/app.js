// ferlab web page: a photo (file, drop or webcam) goes to POST /v1/predict and each face gets its box and bars;
// live mode sends webcam frames over a WebSocket (/v1/live) as fast as the server answers them and draws each frame
// with its boxes; a video goes to POST /v1/video?annotate=true, with a progress bar while it uploads and is analysed,
// and its annotated copy, emotion timeline and face tracks are shown, each downloadable (MP4, CSV, JSON).
// DOM is built with createElement and styles set through the CSSOM, so the page runs under a strict CSP.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = new Set(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt"]);
const LIVE_SIDE = 320;          // a live frame's longer side until the server says what its detector needs
const LIVE_DEPTH = 2;           // live frames in flight: the next is on its way while the server analyses one
const LIVE_QUALITY = 0.8;       // JPEG quality of live frames
const FPS_WINDOW = 16;          // answers the frames/s readout averages over
const STATS_KEPT = 2000;        // latest measurements kept in window.ferlabLive
const LIVE_NUDGE_MS = 250;      // a live frame is taken after this long even if the video reported no new frame
let photoUrl = null;
let photoFile = null;           // the photo on show, sent again when Explain is switched on
let stream = null;
let last = null;                // {data, name}: the server's latest answer on show, for "Download JSON"
let videoUrl = null;            // the annotated video on show (a blob: URL), and its bytes for "Download annotated video"
let videoBlob = null;
const live = { on: false, ws: null, ready: false, pending: [], shown: null, abort: null, canvas: null, paint: 0, nudge: 0 };
// the page's own live measurements: frames sent and answered, and for each drawn frame the milliseconds from taking
// it off the video to drawing it with its boxes (latencyMs) and the server's time on it (serverMs)
const liveStats = (window.ferlabLive = { transport: null, sent: 0, answered: 0, drawn: 0, errors: 0, fps: 0,
  latencyMs: [], serverMs: [], answers: [], started: 0 });

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function colorOf(label) {
  return COLORS.has(label) ? `var(--${label})` : "var(--accent)";
}

function cssColor(label) {  // a canvas cannot read var(--x)
  const style = getComputedStyle(document.documentElement);
  return style.getPropertyValue(COLORS.has(label) ? `--${label}` : "--accent").trim() || "#3e63dd";
}

function pct(p) {
  return `${Math.round(p * 100)}%`;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// The bar under the status: a fraction (0-1) fills it, null makes it indeterminate (busy, no measure), hide removes it.
function setProgress(fraction) {
  const bar = $("progress");
  bar.hidden = false;
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = fraction;
}

function hideProgress() {
  $("progress").hidden = true;
}

function isVideo(file) {
  return (file.type || "").startsWith("video/") || /\.(mp4|m4v|mov|webm|mkv|avi)$/i.test(file.name || "");
}

async function loadHealth() {
  try {
    const r = await fetch("/health");
    const h = await r.json();
    $("model").textContent = `model ${h.model} · detector ${h.detector}`;
    $("limits").textContent = `Photos: JPEG, PNG, WebP, BMP, GIF or TIFF, up to ${Math.round(h.max_bytes / 2 ** 20)} MB · `
      + `videos: MP4, MOV, WebM, MKV or AVI, up to ${Math.round(h.max_video_bytes / 2 ** 20)} MB`;
  } catch (e) {
    $("model").textContent = "server unreachable";
  }
}

function showOnly(section) {  // one result at a time: the photo's or the video's
  $("result").hidden = section !== "result";
  $("video-result").hidden = section !== "video-result";
}

function pick(file) {
  if (!file) return;
  if (isVideo(file)) analyseVideo(file);
  else analyse(file);
}

// ---- photos -------------------------------------------------------------------------------------------------

async function analyse(file) {
  if (!file) return;
  stopCamera();
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  photoFile = file;
  showOnly(null);
  const explain = $("explain").checked;
  setStatus(`Analysing ${file.name || "photo"}${explain ? " and explaining each label" : ""}…`);
  const body = new FormData();
  body.append("file", file, file.name || "photo.jpg");
  let r, data;
  try {
    r = await fetch(explain ? "/v1/predict?explain=true" : "/v1/predict", { method: "POST", body });
    data = await r.json();
  } catch (e) {
    setStatus(`Could not reach the server: ${e.message}`, true);
    return;
  }
  if (!r.ok) {
    setStatus(`Error ${r.status}: ${data.detail || r.statusText}`, true);
    return;
  }
  render(data, file.name || "photo");
}

// Box (and heat map) positions are fractions of the picture, so they follow the picture whatever its size on screen.
function place(node, [x, y, w, h], width, height, mirror = false) {
  node.style.left = `${(100 * (mirror ? width - x - w : x)) / width}%`;
  node.style.top = `${(100 * y) / height}%`;
  node.style.width = `${(100 * w) / width}%`;
  node.style.height = `${(100 * h) / height}%`;
}

function drawBoxes(layer, data, { mirror = false, heatmaps = false } = {}) {
  layer.replaceChildren();
  data.faces.forEach((face, i) => {
    if (heatmaps && face.heatmap) {
      const heat = el("img", "heat");
      heat.alt = "";
      heat.dataset.face = i;
      heat.src = face.heatmap;
      place(heat, face.box, data.width, data.height, mirror);
      layer.append(heat);
    }
    const box = el("div", "box");
    box.dataset.face = i;
    box.dataset.label = face.label;
    box.style.setProperty("--c", colorOf(face.label));
    place(box, face.box, data.width, data.height, mirror);
    if (face.box[1] < data.height * 0.08) box.classList.add("low");  // no room for the tag above the box
    if (face.box[0] + face.box[2] > data.width * 0.7) box.classList.add("end");  // nor on its right: the tag ends with the box
    box.append(el("span", "tag", `${i + 1} · ${face.label} ${pct(face.probs[face.label])}`));
    layer.append(box);
  });
}

function render(data, name) {
  last = { data, name };
  $("photo").src = photoUrl;
  const explained = $("explain").checked && data.faces.some((f) => f.heatmap);
  drawBoxes($("boxes"), data, { heatmaps: explained });
  const faces = $("faces");
  faces.replaceChildren();
  data.faces.forEach((face, i) => faces.append(faceCard(face, i, data.classes, colorOf(face.label))));
  if (!data.faces.length) faces.append(el("p", "empty", data.message || "No face found."));
  const n = data.faces.length;
  setStatus(n ? `${n} face${n > 1 ? "s" : ""} found in ${data.width}×${data.height} px (${Math.round(data.elapsed_ms)} ms)`
    + (explained ? "; the heat maps show the regions that drove each label" : "") : "");
  $("drop").classList.add("compact");
  $("download-image").disabled = false;
  showOnly("result");
}

function faceCard(face, i, classes, color) {
  const card = el("article", "face");
  card.dataset.face = i;
  card.style.setProperty("--c", color);
  const title = el("h2");
  title.append(el("span", "num", `Face ${i + 1}`), el("span", "label", face.label), el("span", "score", pct(face.probs[face.label])));
  card.append(title);
  for (const name of classes) {
    const p = face.probs[name] ?? 0;
    const row = el("div", "bar-row");
    row.dataset.class = name;
    if (name === face.label) row.classList.add("top");
    const bar = el("div", "bar");
    const fill = el("div", "bar-fill");
    fill.style.width = pct(p);
    fill.style.setProperty("--c", colorOf(name));
    bar.append(fill);
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-label", name);
    bar.setAttribute("aria-valuenow", p.toFixed(3));
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "1");
    row.append(el("span", "bar-name", name), bar, el("span", "bar-value", pct(p)));
    card.append(row);
  }
  // pointing at a card lights up its box on the photo
  const hot = (on) => () => document.querySelector(`#boxes .box[data-face="${i}"]`)?.classList.toggle("hot", on);
  card.addEventListener("mouseenter", hot(true));
  card.addEventListener("mouseleave", hot(false));
  return card;
}

function toggleExplain() {
  if (!photoFile || !last || $("result").hidden) return;
  if ($("explain").checked && !last.data.faces.some((f) => f.heatmap)) analyse(photoFile);
  else render(last.data, last.name);  // maps already here: show them; switched off: drop them from view
}

// ---- downloads ----------------------------------------------------------------------------------------------

function save(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function baseName(name) {
  return (name || "result").replace(/\.[^.]*$/, "") || "result";
}

function downloadJson() {
  if (!last) return;
  save(new Blob([JSON.stringify(last.data, null, 2)], { type: "application/json" }), `${baseName(last.name)}-ferlab.json`);
}

// the server's CSV (the one `ferlab predict --save` writes) and its annotated MP4, as they came
function downloadCsv() {
  if (last?.data.emotions_csv) save(new Blob([last.data.emotions_csv], { type: "text/csv" }), `${baseName(last.name)}-ferlab.csv`);
}

function downloadVideo() {
  if (videoBlob) save(videoBlob, `${baseName(last.name)}-ferlab.mp4`);
}

// The photo at its own size with what the page shows drawn on it: heat maps (when on), boxes and labels.
async function downloadImage() {
  if (!last) return;
  const img = $("photo");
  await img.decode();
  const { data } = last;
  const canvas = el("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const g = canvas.getContext("2d");
  g.drawImage(img, 0, 0);
  const sx = canvas.width / data.width, sy = canvas.height / data.height;
  const line = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 200));
  const font = Math.max(12, Math.round(Math.max(canvas.width, canvas.height) / 40));
  for (const heat of $("boxes").querySelectorAll("img.heat")) {
    const [x, y, w, h] = data.faces[Number(heat.dataset.face)].box;
    await heat.decode();
    g.drawImage(heat, x * sx, y * sy, w * sx, h * sy);
  }
  data.faces.forEach((face, i) => {
    const [x, y, w, h] = [face.box[0] * sx, face.box[1] * sy, face.box[2] * sx, face.box[3] * sy];
    const color = cssColor(face.label);
    g.strokeStyle = color;
    g.lineWidth = line;
    g.strokeRect(x + line / 2, y + line / 2, w - line, h - line);
    const text = `${i + 1} · ${face.label} ${pct(face.probs[face.label])}`;
    g.font = `bold ${font}px system-ui, sans-serif`;
    const tw = g.measureText(text).width + font * 0.6, th = font * 1.4;
    const ty = y - th >= 0 ? y - th : y + h;  // above the box, or below it at the top edge
    g.fillStyle = color;
    g.fillRect(x, ty, tw, th);
    g.fillStyle = "#fff";
    g.textBaseline = "middle";
    g.fillText(text, x + font * 0.3, ty + th / 2);
  });
  canvas.toBlob((blob) => save(blob, `${baseName(last.name)}-ferlab.png`), "image/png");
}

// ---- webcam: a photo, or live ------------------------------------------------------------------------------

async function startCamera() {
  if (stream) return true;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "user" }, audio: false });
  } catch (e) {
    setStatus(`Webcam unavailable: ${e.message}`, true);
    return false;
  }
  $("video").srcObject = stream;
  $("drop").hidden = true;
  showOnly(null);
  $("camera").hidden = false;
  setStatus("Look at the camera, then take the photo, or go live.");
  return true;
}

function stopCamera() {
  stopLive();
  if (stream) stream.getTracks().forEach((t) => t.stop());  // releases the camera (its light goes off)
  stream = null;
  $("video").srcObject = null;
  $("camera").hidden = true;
  $("drop").hidden = false;
}

function capture() {
  const video = $("video");
  const canvas = el("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => analyse(new File([blob], "webcam.jpg", { type: "image/jpeg" })), "image/jpeg", 0.92);
}

async function goLive() {
  if (await startCamera()) startLive();
}

// Live mode. Each frame is taken from the video as a picture of its own (an ImageBitmap), scaled down to what the
// server's detector needs, sent as a JPEG over the /v1/live WebSocket, and drawn, that very picture with its boxes,
// when its answer comes back: the boxes are always over the frame they were found in, behind the camera by the time
// the round trip took (the readout shows it). The next frame is taken when an answer comes back, with LIVE_DEPTH
// frames in flight, so a slow server gets fewer frames instead of a queue. Where the WebSocket cannot be opened (a
// proxy that drops it), frames go to POST /v1/predict instead, one at a time. window.ferlabLive holds the page's own
// measurements (bench/live_speed.py reads them).
function startLive() {
  if (live.on || !stream) return;
  Object.assign(live, { on: true, ready: false, transport: null, pending: [], next: 0, side: LIVE_SIDE,
    depth: LIVE_DEPTH, detail: null, shown: null, newFrame: true, capturing: false });
  Object.assign(liveStats, { transport: null, sent: 0, answered: 0, drawn: 0, errors: 0, latencyMs: [], serverMs: [],
    answers: [], started: performance.now() });
  $("live").setAttribute("aria-pressed", "true");
  $("capture").disabled = true;
  $("fps").hidden = false;
  $("fps").textContent = "Live: connecting…";
  setStatus("Live: each face is boxed over the video. Stop camera ends it.");
  watchFrames();
  if (typeof WebSocket === "function") openSocket();
  else useHttp("this browser has no WebSocket");
}

function stopLive() {
  if (!live.on) return;
  live.on = false;
  const ws = live.ws;
  live.ws = null;
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "live mode stopped");
  live.abort?.abort();  // the answer in flight would only be thrown away
  for (const entry of live.pending) entry.frame?.close();
  live.pending = [];
  if (live.shown && !live.shown.drawn) live.shown.entry.frame.close();
  live.shown = null;
  $("live").setAttribute("aria-pressed", "false");
  $("capture").disabled = false;
  $("fps").hidden = true;
  $("live-frame").hidden = true;
  $("live-stage").classList.remove("frames");
  clearTimeout(live.nudge);
  live.nudge = 0;
  $("live-boxes").replaceChildren();
  setStatus(stream ? "Live stopped." : "");
}

function openSocket() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/live`);
  live.ws = ws;
  ws.addEventListener("open", () => {
    if (live.ws === ws && !live.ready) $("fps").textContent = "Live: the server is loading its model…";
  });
  ws.addEventListener("message", (e) => {
    if (live.ws !== ws) return;
    const msg = JSON.parse(e.data);
    if (msg.type === "ready") {
      Object.assign(live, { ready: true, transport: "websocket", side: msg.max_side || LIVE_SIDE });
      liveStats.transport = "websocket";
      $("fps").textContent = "Live: waiting for the first answer…";
      takeFrames();
    } else if (msg.frame === undefined) {
      live.detail = msg.detail;  // why the server is about to close the session
    } else {
      answered(msg);
    }
  });
  ws.addEventListener("close", (e) => {
    if (live.ws !== ws) return;  // a session already stopped
    live.ws = null;
    if (!live.on) return;
    if (!live.ready && !live.detail) {  // no word from the server: the WebSocket never got through
      useHttp(`the WebSocket closed before the server answered (code ${e.code})`);
      return;
    }
    const why = live.detail || e.reason || `the connection closed (code ${e.code})`;
    stopLive();
    setStatus(`Live ended: ${why}`, e.code !== 1000);
  });
}

function useHttp(why) {
  Object.assign(live, { ready: true, transport: "http", depth: 1 });
  liveStats.transport = "http";
  $("fps").textContent = "Live (over HTTP): waiting for the first answer…";
  console.info(`ferlab live mode over HTTP: ${why}`);
  takeFrames();
}

// A new camera frame is taken only once the video has a new one since the last: a fast server never gets the same
// frame twice.
function watchFrames() {
  const video = $("video");
  if (!video.requestVideoFrameCallback) return;
  video.requestVideoFrameCallback(() => {
    if (!live.on) return;
    clearTimeout(live.nudge);
    live.nudge = 0;
    live.newFrame = true;
    watchFrames();
    takeFrames();
  });
}

async function takeFrames() {
  const video = $("video");
  if (!live.on || !live.ready || live.capturing || live.pending.length >= live.depth || !video.videoWidth) return;
  if (video.requestVideoFrameCallback && !live.newFrame) {
    // watchFrames calls again with the camera's next frame; a browser that stopped reporting the frames of a video
    // it does not paint (see paintLive) would stall live mode, so a frame is taken anyway after a while
    live.nudge ||= setTimeout(() => { live.nudge = 0; live.newFrame = true; takeFrames(); }, LIVE_NUDGE_MS);
    return;
  }
  live.capturing = true;
  live.newFrame = false;
  const t = performance.now();
  let frame = null, blob = null;
  try {
    frame = await createImageBitmap(video);  // kept, to be drawn with its own boxes
    const scale = Math.min(1, live.side / Math.max(frame.width, frame.height));
    const small = (live.canvas ||= el("canvas"));
    small.width = Math.round(frame.width * scale);
    small.height = Math.round(frame.height * scale);
    small.getContext("2d").drawImage(frame, 0, 0, small.width, small.height);
    blob = await new Promise((done) => small.toBlob(done, "image/jpeg", LIVE_QUALITY));
    if (blob && live.transport === "websocket") blob = await blob.arrayBuffer();  // sent as it is, no Blob read later
  } catch (e) {
    blob = null;  // the camera stopped meanwhile (its video has no frame to give)
    if (live.on) console.warn(`live frame not taken: ${e.message}`);
  } finally {
    live.capturing = false;
  }
  if (!live.on || !blob) {
    frame?.close();
    return;
  }
  const entry = { id: live.next++, t, frame };
  live.pending.push(entry);
  liveStats.sent += 1;
  if (live.transport === "websocket") live.ws?.send(blob);
  else postFrame(blob, entry);
  takeFrames();  // the second frame in flight, when the camera has one
}

async function postFrame(blob, entry) {
  const body = new FormData();
  body.append("file", blob, "live.jpg");
  live.abort = new AbortController();
  let r, data;
  try {
    r = await fetch("/v1/predict", { method: "POST", body, signal: live.abort.signal });
    data = await r.json();
  } catch (e) {
    if (live.on && e.name !== "AbortError") setStatus(`Could not reach the server: ${e.message}`, true);
    return;
  }
  if (!live.on) return;
  answered(r.ok ? { ...data, type: "faces", frame: entry.id } : { type: "error", frame: entry.id, status: r.status, detail: data.detail || r.statusText });
}

// An answer: its frame (with its boxes) is drawn at the next paint; an older frame not drawn by then is dropped.
function answered(msg) {
  const at = live.pending.findIndex((e) => e.id === msg.frame);
  if (at < 0) return;
  const [entry] = live.pending.splice(at, 1);
  const now = performance.now();
  liveStats.answered += 1;
  liveStats.answers.push(now);
  if (liveStats.answers.length > STATS_KEPT) liveStats.answers.shift();
  if (msg.type === "error") {
    liveStats.errors += 1;
    entry.frame.close();
    setStatus(`Live: frame ${msg.frame} not analysed: ${msg.detail}`, true);
  } else {
    if (msg.elapsed_ms !== undefined) keep(liveStats.serverMs, msg.elapsed_ms);
    if (live.shown && !live.shown.drawn) live.shown.entry.frame.close();  // a newer frame replaces it unseen
    live.shown = { entry, data: msg, drawn: false };
    live.paint ||= requestAnimationFrame(paintLive);
  }
  takeFrames();
}

function keep(list, value) {
  list.push(value);
  if (list.length > STATS_KEPT) list.shift();
}

function paintLive() {
  live.paint = 0;
  const shown = live.shown;
  if (!live.on || !shown || shown.drawn) return;
  const { entry, data } = shown;
  const canvas = $("live-frame");
  if (canvas.width !== entry.frame.width || canvas.height !== entry.frame.height) {
    canvas.width = entry.frame.width;
    canvas.height = entry.frame.height;
  }
  canvas.getContext("2d").drawImage(entry.frame, 0, 0);
  entry.frame.close();
  canvas.hidden = false;
  // the video under the drawn frame is not painted while live mode shows frames: composited at the camera's rate
  // for nothing, it took half of what a software-rendering browser spent (5 frames/s answered with it, 9 without)
  $("live-stage").classList.add("frames");
  // the layer covers the picture inside the <video> box (letterboxed when the shapes differ)
  const video = $("video"), layer = $("live-boxes");
  const scale = Math.min(video.clientWidth / data.width, video.clientHeight / data.height);
  const w = data.width * scale, h = data.height * scale;
  layer.style.left = `${video.offsetLeft + (video.clientWidth - w) / 2}px`;
  layer.style.top = `${video.offsetTop + (video.clientHeight - h) / 2}px`;
  layer.style.width = `${w}px`;
  layer.style.height = `${h}px`;
  drawBoxes(layer, data, { mirror: true });  // the video is shown mirrored, like a mirror; so are the frame and boxes
  layer.dataset.frame = entry.id;
  shown.drawn = true;
  const behind = performance.now() - entry.t;
  keep(liveStats.latencyMs, behind);
  liveStats.drawn += 1;
  const times = liveStats.answers.slice(-FPS_WINDOW);
  const span = (times[times.length - 1] - times[0]) / 1000;
  const fps = times.length > 1 && span > 0 ? (times.length - 1) / span : 0;
  liveStats.fps = fps;
  const n = data.faces.length;
  const readout = $("fps");
  readout.dataset.fps = fps.toFixed(2);
  readout.dataset.frames = liveStats.answered;
  readout.textContent = `Live${live.transport === "http" ? " (over HTTP)" : ""} · ${fps ? fps.toFixed(1) : "–"} frames/s · `
    + `${Math.round(behind)} ms behind · ${n} face${n === 1 ? "" : "s"}` + (n ? ": " + data.faces.map((f) => f.label).join(", ") : "");
}

// ---- videos -------------------------------------------------------------------------------------------------

// Uploaded with XMLHttpRequest, which reports upload progress (fetch cannot): the bar fills as the bytes go, then
// turns indeterminate, with the seconds counted, while the server analyses (it sends no progress of its own).
function analyseVideo(file) {
  stopCamera();
  showOnly(null);
  const name = file.name || "video";
  const body = new FormData();
  body.append("file", file, name);
  const xhr = new XMLHttpRequest();
  let ticker = null;
  xhr.open("POST", "/v1/video?annotate=true");
  xhr.responseType = "json";
  xhr.upload.addEventListener("progress", (e) => {
    if (!e.lengthComputable) return;
    setStatus(`Uploading ${name}… ${Math.round((100 * e.loaded) / e.total)}%`);
    setProgress(e.loaded / e.total);
  });
  xhr.upload.addEventListener("load", () => {
    const t0 = performance.now();
    setStatus(`Analysing ${name}…`);
    setProgress(null);
    ticker = setInterval(() => setStatus(`Analysing ${name}… ${Math.round((performance.now() - t0) / 1000)} s`), 1000);
  });
  xhr.addEventListener("loadend", () => { clearInterval(ticker); hideProgress(); });
  xhr.addEventListener("error", () => setStatus("Could not reach the server.", true));
  xhr.addEventListener("load", () => {
    const data = xhr.response || {};
    if (xhr.status !== 200) setStatus(`Error ${xhr.status}: ${data.detail || xhr.statusText}`, true);
    else renderVideo(data, name);
  });
  setStatus(`Uploading ${name}…`);
  setProgress(0);
  xhr.send(body);
}

// "data:video/mp4;base64,..." -> Blob, decoded here: the page's CSP lets fetch() reach this server only
function dataUrlBlob(url) {
  const [head, b64] = url.split(",", 2);
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: head.slice(5).split(";")[0] });
}

function renderVideo(answer, name) {
  const { annotated_video: annotated, ...data } = answer;  // the video is its own download, not part of the JSON's
  last = { data, name };
  if (videoUrl) URL.revokeObjectURL(videoUrl);
  videoBlob = annotated ? dataUrlBlob(annotated) : null;
  videoUrl = videoBlob ? URL.createObjectURL(videoBlob) : null;
  $("annotated").hidden = !videoUrl;
  $("download-video").disabled = !videoUrl;
  if (videoUrl) $("annotated").src = videoUrl;
  else $("annotated").removeAttribute("src");
  $("timeline").src = data.timeline_png;
  const n = data.tracks.length, k = data.frames_analysed;
  const frames = data.every === 1 && data.frames_total === k ? `all ${k} frames analysed`
    : `${k} frame${k === 1 ? "" : "s"} analysed (1 in ${data.every}${data.frames_total ? ` of ${data.frames_total}` : ""})`;
  $("video-caption").textContent = `${name}: ${frames}, ${n} face track${n === 1 ? "" : "s"}` + (data.note ? `. ${data.note}` : "");
  const rows = $("tracks").tBodies[0];
  rows.replaceChildren();
  for (const t of data.tracks) {
    const tr = el("tr");
    tr.dataset.track = t.track;
    const chip = el("span", "chip", t.label);
    chip.style.setProperty("--c", colorOf(t.label));
    const label = el("td");
    label.append(chip);
    tr.append(el("td", "", `#${t.track}`), el("td", "", `${t.frames} frame${t.frames === 1 ? "" : "s"}`),
      el("td", "", `${t.first_s.toFixed(1)}–${t.last_s.toFixed(1)} s`), label, el("td", "num", pct(t.probs[t.label])));
    rows.append(tr);
  }
  if (!n) {
    const tr = el("tr");
    const td = el("td", "empty-row", "No face found in the analysed frames.");
    td.colSpan = 5;
    tr.append(td);
    rows.append(tr);
  }
  setStatus(`${name}: analysed in ${(data.elapsed_ms / 1000).toFixed(1)} s`);
  $("drop").classList.add("compact");
  showOnly("video-result");
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { pick(e.target.files[0]); e.target.value = ""; });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => { e.preventDefault(); pick(e.dataTransfer.files[0]); });
  drop.addEventListener("keydown", (e) => { if (e.target === drop && (e.key === "Enter" || e.key === " ")) $("file").click(); });
  if (navigator.mediaDevices?.getUserMedia) {
    $("webcam").addEventListener("click", startCamera);
    $("go-live").addEventListener("click", goLive);
  } else {
    for (const id of ["webcam", "go-live"]) {
      $(id).disabled = true;
      $(id).title = "the webcam needs a secure page (https or localhost)";
    }
  }
  $("capture").addEventListener("click", capture);
  $("live").addEventListener("click", () => (live.on ? stopLive() : startLive()));
  $("stop").addEventListener("click", () => { stopCamera(); setStatus(""); });
  $("explain").addEventListener("change", toggleExplain);
  $("download-image").addEventListener("click", downloadImage);
  $("download-json").addEventListener("click", downloadJson);
  $("download-video-json").addEventListener("click", downloadJson);
  $("download-csv").addEventListener("click", downloadCsv);
  $("download-video").addEventListener("click", downloadVideo);
  loadHealth();
}

init();
