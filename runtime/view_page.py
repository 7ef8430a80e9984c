"""The live view's page: one self-contained HTML file (no external script or style), built
from the JSON API and the WebSocket stream of runtime/view_routes.py."""

from __future__ import annotations

BLANK = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='64' height='64'/%3E"

STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin: 0.2em 0; }
section.camera { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em 1em;
  margin: 0 0 1em 0; }
.images { display: flex; gap: 1em; } figure { margin: 0; }
figure img { width: 320px; max-width: 40vw; image-rendering: pixelated; background: #eee; }
.NG { color: #c00; font-weight: bold; } .OK { color: #080; font-weight: bold; }
.threshold input[type=range] { width: 320px; vertical-align: middle; }
.ngs img { width: 96px; margin-right: 4px; border: 2px solid #c00; }
.message.error { color: #c00; } small { color: #666; font-weight: normal; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 2px 6px; }
"""

CARD = """
<h2><span class="name"></span> <small class="where"></small></h2>
<div class="images">
 <figure><img class="frame" alt="latest frame" src="{blank}">
  <figcaption>frame <span class="frame-no">-</span> <span class="decision"></span>
  score <span class="score">-</span></figcaption></figure>
 <figure><img class="heat" alt="heat map" src="{blank}">
  <figcaption>heat map and regions</figcaption></figure>
</div>
<p class="counters">frames <b class="frames">0</b> &middot; OK <b class="ok">0</b> &middot;
 NG <b class="ng">0</b> &middot; <b class="fps">0</b> fps &middot; latency p50
 <b class="p50">-</b> ms, p99 <b class="p99">-</b> ms &middot; dropped <b class="dropped">0</b></p>
<div class="threshold">threshold <b class="current">-</b>;
 try <input type="range" class="slider" aria-label="threshold">
 <output class="chosen">-</output>: <span class="preview">-</span>
 <button class="apply">apply</button> <span class="message"></span></div>
<div class="bundle">bundle <input class="bundle-path" size="40" aria-label="bundle folder">
 <button class="switch">change over</button> <span class="switch-message message"></span></div>
<p>last NG frames:</p><div class="ngs"></div>
"""

SCRIPT = r"""
const cards = {};
const $ = (card, cls) => card.querySelector('.' + cls);
const fmt = (x, d) => (x === null || x === undefined) ? '-' : Number(x).toFixed(d);

async function api(path, body) {
  const init = body === undefined ? {} : {method: 'POST',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)};
  const r = await fetch(path, init);
  const data = await r.json();
  return {ok: r.ok, data};
}

function card(status) {
  if (cards[status.camera]) return cards[status.camera];
  const el = document.createElement('section');
  el.className = 'camera';
  el.dataset.camera = status.camera;
  el.innerHTML = CARD;
  $(el, 'name').textContent = status.camera;
  const c = {el, name: status.camera, scores: [], dirty: false, ngKey: ''};
  $(el, 'slider').addEventListener('input', () => { c.dirty = true; preview(c); });
  $(el, 'apply').addEventListener('click', () => apply(c));
  $(el, 'switch').addEventListener('click', () => changeover(c));
  document.getElementById('cameras').appendChild(el);
  cards[status.camera] = c;
  return c;
}

function counters(status) {
  const c = card(status), el = c.el;
  c.threshold = status.threshold;
  $(el, 'where').textContent = status.bundle + ' (' + status.file + ')';
  for (const k of ['frames', 'ok', 'ng', 'dropped']) $(el, k).textContent = status[k];
  $(el, 'fps').textContent = fmt(status.fps, 1);
  const e2e = status.latency_ms.end_to_end || {};
  $(el, 'p50').textContent = fmt(e2e.p50, 1);
  $(el, 'p99').textContent = fmt(e2e.p99, 1);
  $(el, 'current').textContent = fmt(status.threshold, 4);
  const key = status.last_ng.map(n => n.frame).join(',');
  if (key !== c.ngKey) {
    c.ngKey = key;
    const box = $(el, 'ngs');
    box.replaceChildren(...status.last_ng.map(n => {
      const img = document.createElement('img');
      img.src = n.url;
      img.alt = img.title = 'frame ' + n.frame + ', score ' + fmt(n.score, 4);
      return img;
    }));
  }
}

function setSlider(c) {
  const s = $(c.el, 'slider');
  const values = c.scores.concat([c.threshold]);
  let lo = Math.min(...values), hi = Math.max(...values);
  const pad = (hi - lo) * 0.05 || 0.05;
  lo -= pad; hi += pad;
  s.min = lo; s.max = hi; s.step = (hi - lo) / 200;
  if (!c.dirty) s.value = c.threshold;
  preview(c);
}

function preview(c) {
  const t = parseFloat($(c.el, 'slider').value);
  const ng = c.scores.filter(x => x > t).length;
  const now = c.scores.filter(x => x > c.threshold).length;
  $(c.el, 'chosen').textContent = fmt(t, 4);
  $(c.el, 'preview').textContent = ng + ' of the last ' + c.scores.length +
    ' frames would be NG (at the threshold in use: ' + now + ')';
}

async function refreshScores(c) {
  const r = await api('/api/cameras/' + encodeURIComponent(c.name));
  if (!r.ok) return;
  counters(r.data);
  c.scores = r.data.scores.map(p => p[1]);
  setSlider(c);
}

async function apply(c) {
  const value = parseFloat($(c.el, 'slider').value);
  const msg = $(c.el, 'message');
  msg.textContent = 'applying ' + fmt(value, 4) + ' ...';
  const r = await api('/api/cameras/' + encodeURIComponent(c.name) + '/threshold',
                      {threshold: value});
  msg.className = 'message' + (r.ok ? '' : ' error');
  msg.textContent = r.ok ? 'threshold ' + fmt(r.data.threshold, 4) + ' written to ' +
    r.data.file + ' and in use' : r.data.error + (r.data.fix ? ' (' + r.data.fix + ')' : '');
  c.dirty = false;
  await refreshScores(c);
  await changeovers();
}

async function changeover(c) {
  const msg = $(c.el, 'switch-message');
  const bundle = $(c.el, 'bundle-path').value;
  msg.textContent = 'changing over ...';
  const r = await api('/api/cameras/' + encodeURIComponent(c.name) + '/changeover', {bundle});
  msg.className = 'switch-message message' + (r.ok ? '' : ' error');
  msg.textContent = r.ok ? 'now on ' + r.data.bundle : r.data.error;
  await changeovers();
}

async function changeovers() {
  const r = await api('/api/changeovers');
  if (!r.ok) return;
  const body = document.querySelector('#changeovers tbody');
  body.replaceChildren(...r.data.changeovers.slice().reverse().map(rec => {
    const tr = document.createElement('tr');
    for (const v of [rec.time, rec.camera, rec.what, rec.bundle, fmt(rec.threshold, 4),
                     rec.via, rec.reason]) {
      const td = document.createElement('td');
      td.textContent = v === undefined ? '' : v;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function stream() {
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') +
                           location.host + '/ws');
  const conn = document.getElementById('conn');
  ws.onopen = () => { conn.textContent = 'streaming'; };
  ws.onclose = () => { conn.textContent = 'disconnected; retrying'; setTimeout(stream, 2000); };
  ws.onmessage = (event) => {
    const m = JSON.parse(event.data);
    if (m.type === 'status') { m.cameras.forEach(counters); return; }
    const c = cards[m.camera];
    if (!c) return;
    $(c.el, 'frame').src = m.image;
    $(c.el, 'heat').src = m.heat;
    $(c.el, 'frame-no').textContent = m.frame;
    const d = $(c.el, 'decision');
    d.textContent = m.decision;
    d.className = 'decision ' + m.decision;
    $(c.el, 'score').textContent = fmt(m.score, 4);
  };
}

async function main() {
  const r = await api('/api/cameras');
  if (!r.ok) { document.getElementById('conn').textContent = r.data.error; return; }
  r.data.cameras.forEach(counters);
  await Promise.all(Object.values(cards).map(refreshScores));
  await changeovers();
  stream();
  setInterval(() => Object.values(cards).forEach(refreshScores), 2000);
  setInterval(changeovers, 5000);
  document.body.dataset.ready = '1';
}
main();
"""


def page_html() -> str:
    card = CARD.replace("{blank}", BLANK)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<title>dmgrd-edge live view</title><link rel='icon' href='data:,'>"
        f"<style>{STYLE}</style></head><body>"
        "<h1>dmgrd-edge live view</h1><p id='conn'>connecting</p><div id='cameras'></div>"
        "<h2>Changeovers</h2><table id='changeovers'><thead><tr><th>time</th><th>camera</th>"
        "<th>what</th><th>bundle</th><th>threshold</th><th>via</th><th>reason</th></tr>"
        "</thead><tbody></tbody></table>"
        f"<script>const CARD = {_js_string(card)};\n{SCRIPT}</script></body></html>"
    )


def _js_string(text: str) -> str:
    import json

    return json.dumps(text).replace("</", "<\\/")
