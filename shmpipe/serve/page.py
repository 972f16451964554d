"""The service's page at ``/``: the runs (state, rates, errors, each live view one click away)
and a form to reprocess a stream with changed parameters. Plain HTML and a little script that
reads the same JSON API as every other client."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shmpipe serve</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #ddd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state { padding: .1em .5em; border-radius: .7em; font-size: .9em; }
.running { background: #d4f4dd; } .queued { background: #fff3c4; }
.finished { background: #dde8f8; } .failed { background: #f8d4d4; } .stopped { background: #eee; }
.msg { color: #666; font-size: .85em; max-width: 30em; }
form { display: grid; grid-template-columns: 9em 26em; gap: .4em .8em; align-items: center; }
input, select, textarea { font: inherit; padding: .2em; }
#result { margin-top: .6em; } .error { color: #b00020; }
#node { color: #444; }
</style></head>
<body>
<h1>shmpipe serve</h1>
<div id="node">…</div>
<div id="problems" class="error"></div>
<h2>Runs</h2>
<table id="runs"><thead><tr>
<th>id</th><th>run</th><th>state</th><th>frames in</th><th>out</th><th>errors</th>
<th>frames/s</th><th>workers</th><th>restarts</th><th>overrides</th><th>live view</th>
<th></th></tr></thead><tbody></tbody></table>
<h2>Reprocess</h2>
<form id="reprocess">
<label for="recipe">recipe</label><select id="recipe" name="recipe"></select>
<label for="beamtime">beamtime</label><select id="beamtime" name="beamtime"></select>
<label for="data_source">data source</label><input id="data_source" name="data_source">
<label for="streams">streams</label>
<input id="streams" name="streams" placeholder="empty: all; or scan_0001, scan_0002">
<label for="set">parameters</label>
<textarea id="set" name="set" rows="3" placeholder="kernels.integrate.npt = 500"></textarea>
<label for="token">token</label><input id="token" name="token" type="password">
<span></span><button type="submit">Reprocess</button>
</form>
<div id="result"></div>
<script>
const $ = (id) => document.getElementById(id);
$("token").value = localStorage.getItem("shmpipe-serve-token") || "";
function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  return td;
}
function parseSet(text) {
  const out = {};
  for (const line of text.split(/\\n|;/)) {
    if (!line.trim()) continue;
    const i = line.indexOf("=");
    if (i < 0) throw new Error("parameters: write key = value, got " + line);
    const key = line.slice(0, i).trim(), raw = line.slice(i + 1).trim();
    try { out[key] = JSON.parse(raw); } catch (e) { out[key] = raw; }
  }
  return out;
}
function auth() {
  const token = $("token").value.trim();
  return token ? {"Authorization": "Bearer " + token} : {};
}
const get = (url) => fetch(url, {headers: auth()}).then(r => r.json());
async function post(url, body) {
  const token = $("token").value.trim();
  localStorage.setItem("shmpipe-serve-token", token);
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json",
    "Authorization": "Bearer " + token}, body: JSON.stringify(body)});
  return [r.status, await r.json()];
}
async function stop(id) {
  const [status, body] = await post("api/runs/" + id + "/stop", {});
  $("result").textContent = status < 300 ? "run " + id + ": stopping" : body.error;
  $("result").className = status < 300 ? "" : "error";
}
async function refresh() {
  const [runs, node] = await Promise.all([get("api/runs"), get("api/node")]);
  $("node").textContent = `workers ${node.workers_in_use} of ${node.max_workers} in use, ` +
    `${node.running} running, ${node.queue.length} queued`;
  $("problems").textContent = Object.entries(node.problems).map(([bt, e]) =>
    `beamtime ${bt}: ${e}`).join("; ");
  const body = $("runs").tBodies[0];
  body.replaceChildren();
  for (const r of runs.slice().reverse()) {
    const tr = document.createElement("tr");
    tr.dataset.id = r.id;
    tr.appendChild(cell(r.id));
    const name = document.createElement("div");
    name.textContent = r.name;
    const msg = document.createElement("div");
    msg.className = "msg";
    msg.textContent = r.message + (r.started ? " · started " + r.started : "") +
      (r.outputs.length ? ` · ${r.outputs.length} outputs` : "");
    msg.title = r.outputs.join("\\n");  // where they are, on hovering
    const both = document.createElement("div"); both.append(name, msg);
    tr.appendChild(cell(both));
    const st = document.createElement("span");
    st.className = "state " + r.state;
    st.textContent = r.state + (r.queue_position ? " #" + r.queue_position : "");
    tr.appendChild(cell(st));
    tr.appendChild(cell(r.frames_in, "num"));
    tr.appendChild(cell(r.frames_out, "num"));
    tr.appendChild(cell(r.errors, "num"));
    tr.appendChild(cell(r.rate.toFixed(1), "num"));
    tr.appendChild(cell(r.workers, "num"));
    tr.appendChild(cell(r.restarts, "num"));
    tr.appendChild(cell(Object.entries(r.overrides).map(([k, v]) => k + "=" +
      JSON.stringify(v)).join(", ")));
    if (r.view) {
      const a = document.createElement("a");
      a.href = r.view; a.textContent = "live view"; a.target = "_blank";
      tr.appendChild(cell(a));
    } else tr.appendChild(cell(""));
    if (r.state === "running" || r.state === "queued") {
      const b = document.createElement("button");
      b.textContent = "stop"; b.onclick = () => stop(r.id);
      tr.appendChild(cell(b));
    } else tr.appendChild(cell(""));
    body.appendChild(tr);
  }
}
async function choices() {
  const [recipes, beamtimes] = await Promise.all([get("api/recipes"), get("api/beamtimes")]);
  $("recipe").replaceChildren(...recipes.map(r => new Option(r.name, r.name)));
  $("beamtime").replaceChildren(...beamtimes.map(b => new Option(b, b)));
}
$("reprocess").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const result = $("result");
  try {
    const streams = $("streams").value.split(",").map(s => s.trim()).filter(Boolean);
    const [status, body] = await post("api/runs", {recipe: $("recipe").value,
      beamtime: $("beamtime").value, data_source: $("data_source").value.trim(), streams,
      set: parseSet($("set").value)});
    if (status === 201) {
      result.className = "";
      result.textContent = `run ${body.id} queued: ${body.name}, version ${body.version}`;
    } else {
      result.className = "error";
      result.textContent = body.error;
    }
  } catch (e) { result.className = "error"; result.textContent = e.message; }
  refresh();
});
choices(); refresh(); setInterval(refresh, 1000);
</script></body></html>
"""
