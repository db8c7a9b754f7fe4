// ferlab web page: send a photo (file, drop or webcam) to POST /v1/predict, draw each face's box and bars.
// DOM is built with createElement and styles set through the CSSOM, so the page runs under a strict CSP.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = new Set(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]);
let photoUrl = null;
let stream = null;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function colorOf(label) {
  return COLORS.has(label) ? `var(--${label})` : "var(--accent)";
}

function pct(p) {
  return `${Math.round(p * 100)}%`;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadHealth() {
  try {
    const r = await fetch("/health");
    const h = await r.json();
    $("model").textContent = `model ${h.model} · detector ${h.detector}`;
    $("limits").textContent = `JPEG, PNG, WebP, BMP, GIF or TIFF · up to ${Math.round(h.max_bytes / 2 ** 20)} MB`;
  } catch (e) {
    $("model").textContent = "server unreachable";
  }
}

async function analyse(file) {
  if (!file) return;
  stopCamera();
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  $("result").hidden = true;
  setStatus(`Analysing ${file.name || "photo"}…`);
  const body = new FormData();
  body.append("file", file, file.name || "photo.jpg");
  let r, data;
  try {
    r = await fetch("/v1/predict", { method: "POST", body });
    data = await r.json();
  } catch (e) {
    setStatus(`Could not reach the server: ${e.message}`, true);
    return;
  }
  if (!r.ok) {
    setStatus(`Error ${r.status}: ${data.detail || r.statusText}`, true);
    return;
  }
  render(data);
}

function render(data) {
  const img = $("photo");
  img.src = photoUrl;
  const boxes = $("boxes");
  const faces = $("faces");
  boxes.replaceChildren();
  faces.replaceChildren();
  data.faces.forEach((face, i) => {
    const [x, y, w, h] = face.box;
    const color = colorOf(face.label);
    const box = el("div", "box");
    box.dataset.face = i;
    box.style.setProperty("--c", color);
    box.style.left = `${(100 * x) / data.width}%`;
    box.style.top = `${(100 * y) / data.height}%`;
    box.style.width = `${(100 * w) / data.width}%`;
    box.style.height = `${(100 * h) / data.height}%`;
    if (y < data.height * 0.08) box.classList.add("low");  // no room for the tag above the box
    box.append(el("span", "tag", `${i + 1} · ${face.label} ${pct(face.probs[face.label])}`));
    boxes.append(box);
    faces.append(faceCard(face, i, data.classes, color));
  });
  if (!data.faces.length) faces.append(el("p", "empty", data.message || "No face found."));
  const n = data.faces.length;
  setStatus(n ? `${n} face${n > 1 ? "s" : ""} found in ${data.width}×${data.height} px (${Math.round(data.elapsed_ms)} ms)` : "");
  $("drop").classList.add("compact");
  $("result").hidden = false;
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
  const hot = (on) => () => document.querySelector(`.box[data-face="${i}"]`)?.classList.toggle("hot", on);
  card.addEventListener("mouseenter", hot(true));
  card.addEventListener("mouseleave", hot(false));
  return card;
}

async function startCamera() {
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "user" }, audio: false });
  } catch (e) {
    setStatus(`Webcam unavailable: ${e.message}`, true);
    return;
  }
  $("video").srcObject = stream;
  $("drop").hidden = true;
  $("camera").hidden = false;
  setStatus("Look at the camera, then take the photo.");
}

function stopCamera() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
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

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => analyse(e.target.files[0]));
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => { e.preventDefault(); analyse(e.dataTransfer.files[0]); });
  drop.addEventListener("keydown", (e) => { if (e.target === drop && (e.key === "Enter" || e.key === " ")) $("file").click(); });
  if (navigator.mediaDevices?.getUserMedia) {
    $("webcam").addEventListener("click", startCamera);
  } else {
    $("webcam").disabled = true;
    $("webcam").title = "the webcam needs a secure page (https or localhost)";
  }
  $("capture").addEventListener("click", capture);
  $("stop").addEventListener("click", () => { stopCamera(); setStatus(""); });
  loadHealth();
}

init();
