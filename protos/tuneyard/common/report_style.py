"""The report's look: colours, the page's CSS and its one small inline script (no network, no CDN).

Colours are chosen so that a trial reads the same in every plot: :func:`trial_colour` gives each trial
id its own hue (golden-angle steps, so 24 or 100 trials never repeat a colour), state colours are kept
for states alone (the Pareto front is purple, not FAILED's red), and an objective is drawn on one
sequential scale (:func:`scale_colour`, viridis' stops) with a legend of its values.
"""

from __future__ import annotations

import colorsys

from tuneyard.v1 import service_pb2

__all__ = ["CSS", "FRONT", "SCRIPT", "STATE_COLOURS", "scale_colour", "trial_colour"]

STATE_COLOURS: dict[int, str] = {
    service_pb2.TRIAL_COMPLETED: "#2ca02c",
    service_pb2.TRIAL_FAILED: "#d62728",
    service_pb2.TRIAL_PRUNED: "#7f7f7f",
    service_pb2.TRIAL_CANCELLED: "#bcbd22",
    service_pb2.TRIAL_INFEASIBLE: "#ff7f0e",
    service_pb2.TRIAL_RUNNING: "#1f77b4",
}
FRONT = "#6a3d9a"  # the Pareto front: a colour no trial state uses
DOMINATED = "#b0b0b0"
VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
GOLDEN_ANGLE = 137.508


def trial_colour(trial_id: int) -> str:
    """A trial's own colour, the same in every plot: hue by golden-angle steps, two lightness bands."""
    hue = (trial_id * GOLDEN_ANGLE) % 360 / 360
    lightness = 0.42 if trial_id % 2 else 0.55
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.72)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def scale_colour(t: float | None) -> str:
    """A position in [0, 1] on the objective's colour scale (viridis); grey for no value."""
    if t is None:
        return DOMINATED
    t = min(max(t, 0.0), 1.0) * (len(VIRIDIS) - 1)
    k = min(int(t), len(VIRIDIS) - 2)
    a, b, f = VIRIDIS[k], VIRIDIS[k + 1], t - k
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b, strict=True))


CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#d9dee5;--bg:#f5f7fa;--card:#fff;--accent:#3558d4}
*{box-sizing:border-box}body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:var(--fg);
background:var(--bg);font-size:14px;line-height:1.45}
header.top{background:#1d2330;color:#fff;padding:14px 28px;display:flex;gap:18px;align-items:baseline;flex-wrap:wrap}
header.top h1{font-size:20px;margin:0}header.top a{color:#c9d4ff}
header.top code{background:#2c3445;color:#e6e9ef}header.top .meta{color:#c5cbd6}
main{padding:18px 28px;max-width:none}
nav.crumbs{background:#141925;padding:6px 28px}nav.crumbs a{color:#c9d4ff;text-decoration:none}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 18px;margin:0 0 18px}
section h2{font-size:16px;margin:0 0 10px}
.note{color:var(--muted);font-size:12.5px;margin:4px 0 8px}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600;color:#fff;
background:#7f7f7f}
.badge.COMPLETED{background:#2ca02c}.badge.RUNNING{background:#1f77b4}.badge.FAILED{background:#d62728}
.badge.PENDING{background:#9aa3ad}.badge.CANCELLED{background:#bcbd22}.badge.PRUNED{background:#7f7f7f}
.badge.INFEASIBLE{background:#ff7f0e}
table{border-collapse:collapse;font-size:13px;width:100%}
td,th{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;position:sticky;top:0;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}td.inactive{color:var(--muted);font-style:italic;text-align:right}
#trial-table th{cursor:pointer;user-select:none}#trial-table th[data-sort=asc]::after{content:" \\25B2"}
#trial-table th[data-sort=desc]::after{content:" \\25BC"}#trial-table tr:hover td{background:#f3f6ff}
.table-wrap{max-height:640px;overflow:auto;border:1px solid var(--line);border-radius:6px}
.tools{display:flex;gap:12px;align-items:center;margin-bottom:8px}
.tools input{padding:5px 8px;border:1px solid var(--line);border-radius:5px;min-width:260px}
svg.plot{width:100%;height:auto;display:block}svg text{font-size:12px;fill:#333}
svg .axis{stroke:#555;stroke-width:1}svg .grid{stroke:#e6e9ee;stroke-width:1}
svg .hot{stroke-width:4px;opacity:1}svg circle.hot{stroke:#000;stroke-width:2px}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12.5px;margin:6px 0}
.legend span{white-space:nowrap;cursor:default}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.cards{display:flex;flex-wrap:wrap;gap:14px 48px}.cards>div{max-width:100%;overflow-x:auto}
.cards dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}
.cards dt{color:var(--muted)}.cards dd{margin:0;font-variant-numeric:tabular-nums}
.big{font-size:26px;font-weight:650}.big small{font-size:13px;color:var(--muted);font-weight:400}
.grid-plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:10px}
.side{display:grid;grid-template-columns:minmax(0,3fr) minmax(200px,1fr);gap:16px;align-items:start}
code{font-size:12px;background:#eef1f5;border-radius:3px;padding:0 3px}
"""

# Sort and filter the trial table; highlight a trial in every plot while the pointer is on it. Installed
# once on the document, so the dashboard's live redraws (which swap the page's content and dispatch
# "report:redrawn") keep the user's sort order and filter.
SCRIPT = """<script>
(() => {
  if (window.tuneyardReport) return;
  window.tuneyardReport = true;
  const state = {col: null, desc: false, filter: ""};
  const key = (row) => {
    const cell = row.cells[state.col];
    const raw = cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent.trim();
    const n = parseFloat(raw);
    return raw === "" ? null : (isNaN(n) ? raw.toLowerCase() : n);
  };
  const compare = (a, b) => {
    const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;
    return (x < y ? -1 : x > y ? 1 : 0) * (state.desc ? -1 : 1);
  };
  const apply = () => {
    const table = document.getElementById("trial-table");
    if (!table) return;
    const body = table.tBodies[0], rows = [...body.rows], words = state.filter.toLowerCase().split(/\\s+/);
    rows.forEach((r) => { r.hidden = !words.every((w) => r.textContent.toLowerCase().includes(w)); });
    if (state.col !== null) rows.sort(compare).forEach((r) => body.appendChild(r));
    const order = state.desc ? "desc" : "asc";
    table.querySelectorAll("th").forEach((th, i) => { th.dataset.sort = i === state.col ? order : ""; });
    const count = document.getElementById("trial-count");
    if (count) count.textContent = rows.filter((r) => !r.hidden).length + " of " + rows.length + " trials shown";
    const input = document.getElementById("trial-filter");
    if (input && input.value !== state.filter) input.value = state.filter;
  };
  document.addEventListener("click", (e) => {
    const th = e.target.closest("#trial-table th");
    if (!th) return;
    state.desc = state.col === th.cellIndex ? !state.desc : false;
    state.col = th.cellIndex;
    apply();
  });
  document.addEventListener("input", (e) => {
    if (e.target.id === "trial-filter") { state.filter = e.target.value; apply(); }
  });
  const mark = (e, on) => {
    const el = e.target.closest && e.target.closest("[data-trial]");
    if (!el) return;
    const same = document.querySelectorAll('[data-trial="' + el.dataset.trial + '"]');
    same.forEach((x) => x.classList.toggle("hot", on));
  };
  document.addEventListener("mouseover", (e) => mark(e, true));
  document.addEventListener("mouseout", (e) => mark(e, false));
  document.addEventListener("report:redrawn", apply);
})();
</script>"""
