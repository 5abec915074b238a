"""The demo's static report: one ``index.html`` beside ``summary.json``,
``grid.png`` and the per-method row images, readable from disk with no server
and no network.

    python -m experiments.report --workdir=runs/demo     (re-renders from summary.json)

`write` is what `experiments.demo` calls after writing its summary. The page
is rendered with Jinja2 from ``experiments/templates/report.html.j2`` with
autoescaping on (method options and error texts are arbitrary strings); all
CSS and the small script that sorts the score table are inline, and images
are referenced by paths relative to ``index.html``.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import re
from typing import Any, Mapping

from experiments import _common as C

TEMPLATES = pathlib.Path(__file__).resolve().parent / "templates"
TEMPLATE = "report.html.j2"

# The demo's four metrics, their column order and defaults for a summary that
# omits their descriptions; summary["metrics"] overrides any of these fields.
# Which direction is better comes from the metrics registry (`direction_of`).
DEFAULT_METRICS: dict[str, dict[str, str]] = {
    "pointing_game": {
        "title": "Pointing game",
        "about": "Fraction of photos whose map's maximum lies within 15 px of a ground-truth box of"
                 " the explained class (Zhang et al. 2016; TorchRay's tolerance)."},
    "energy_pointing_game": {
        "title": "Energy pointing game",
        "about": "Share of the map's positive mass inside the ground-truth boxes (Wang et al. 2020,"
                 " Score-CAM)."},
    "deletion": {
        "title": "Deletion AUC",
        "about": "Area under the class probability while the most salient pixels are zeroed first;"
                 " a faithful map makes it fall fast (Petsiuk et al. 2018, RISE)."},
    "insertion": {
        "title": "Insertion AUC",
        "about": "Area under the class probability while the most salient pixels are put back into a"
                 " blurred photo first; a faithful map makes it rise fast (Petsiuk et al. 2018)."},
}


def direction_of(name: str) -> str:
  """"higher" or "lower": which way metric `name` is better, from the metrics
  registry ("higher" for a name it does not know)."""
  from saljax import metrics
  return (metrics.entry(name).better() if name in metrics.names() else None) or "higher"


DIRECTIONS = ("higher", "lower")
# How the status column sorts and which badge color each status gets.
STATUS_RANK = {"ok": 0, "skipped": 1, "failed": 2, "not applicable": 3}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _num(v: Any) -> float | None:
  """A finite float, or None for a missing / null / non-numeric / NaN value."""
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    return None
  return float(v) if math.isfinite(v) else None


def _fmt(v: Any, digits: int = 3) -> str:
  x = _num(v)
  return "–" if x is None else f"{x:.{digits}f}"


def _fmt_int(v: Any) -> str:
  x = _num(v)
  return "–" if x is None else f"{int(round(x)):,}".replace(",", "\u2009")


def _fmt_duration(v: Any) -> str:
  x = _num(v)
  if x is None:
    return "–"
  if x < 60:
    return f"{x:.1f} s"
  m, s = divmod(int(round(x)), 60)
  return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _option_text(v: Any) -> str:
  """A method option as short text: scalars as they are, the rest as compact JSON."""
  if isinstance(v, str):
    return v
  try:
    return json.dumps(v, separators=(",", ":"), sort_keys=True, default=str)
  except (TypeError, ValueError):
    return str(v)


def _relative_image(path: Any, what: str) -> str | None:
  """Checks that an image path is a relative file path (the page must work
  offline from the workdir); returns it with forward slashes, None if absent."""
  if path is None or path == "":
    return None
  if not isinstance(path, (str, os.PathLike)):
    raise ValueError(f"{what}: expected a relative path (str), got {type(path).__name__} {path!r}")
  p = os.fspath(path).replace(os.sep, "/")
  if _SCHEME.match(p) or p.startswith("/") or ".." in p.split("/"):
    raise ValueError(f"{what}: expected a path relative to the workdir (a file beside index.html),"
                     f" got {p!r}")
  return p


def _metrics(summary: Mapping) -> list[dict[str, Any]]:
  """The metric columns: the demo's four in their order (when listed or
  scored), then any other metric of summary["metrics"]."""
  given = summary.get("metrics") or {}
  if not isinstance(given, Mapping):
    raise ValueError(f"summary['metrics']: expected a mapping name -> {{direction, title, about}},"
                     f" got {type(given).__name__}")
  scored = {k for rec in (summary.get("methods") or {}).values() if isinstance(rec, Mapping)
            for k in (rec.get("scores") or {})}
  names = [n for n in DEFAULT_METRICS if n in given or n in scored or not given]
  names += [n for n in given if n not in DEFAULT_METRICS]
  out = []
  for n in names:
    info = {**DEFAULT_METRICS.get(n, {}), **(given.get(n) or {})}
    direction = info.get("direction") or direction_of(n)
    if direction not in DIRECTIONS:
      raise ValueError(f"summary['metrics'][{n!r}]['direction']: expected one of {DIRECTIONS},"
                       f" got {direction!r}")
    out.append({"name": n, "title": info.get("title") or n.replace("_", " ").capitalize(),
                "direction": direction, "about": info.get("about", "")})
  return out


def _registry_fallback(name: str) -> dict[str, Any]:
  """Family and year from the explainer registry, for a summary without them."""
  from saljax import explainers
  if name not in explainers.names():
    return {}
  e = explainers.entry(name)
  return {"family": e.family, "year": e.year, "kind": e.kind}


def _methods(summary: Mapping, metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
  methods = summary.get("methods")
  if not isinstance(methods, Mapping):
    raise ValueError(f"summary['methods']: expected a mapping method name -> record,"
                     f" got {type(methods).__name__}")
  rows = []
  for name, rec in methods.items():
    if not isinstance(rec, Mapping):
      raise ValueError(f"summary['methods'][{name!r}]: expected a mapping, got {type(rec).__name__}")
    rec = {**_registry_fallback(name), **{k: v for k, v in rec.items() if v is not None}}
    scores = rec.get("scores") or {}
    status = str(rec.get("status", "unknown"))
    rows.append({
        "name": name, "family": rec.get("family") or "other", "year": rec.get("year"),
        "paper": rec.get("paper"), "kind": rec.get("kind"), "status": status,
        "status_rank": STATUS_RANK.get(status, len(STATUS_RANK)),
        "status_class": re.sub(r"[^a-z]+", "-", status.lower()).strip("-"),
        "note": rec.get("error") if status == "failed" else rec.get("reason"),
        "options": [(str(k), _option_text(v)) for k, v in (rec.get("options") or {}).items()],
        "seconds": _num(rec.get("seconds")), "seconds_text": _fmt(rec.get("seconds"), 1),
        "evaluations": _num(rec.get("evaluations")), "evaluations_text": _fmt_int(rec.get("evaluations")),
        "photos": list(rec.get("photos") or []),
        # Per-photo scores (the demo's "per_photo"), as text: "–" where a photo has no value.
        "per_photo": [(str(p), {m["name"]: _fmt((v or {}).get(m["name"])) for m in metrics})
                      for p, v in (rec.get("per_photo") or {}).items()],
        "image": _relative_image(rec.get("image"), f"summary['methods'][{name!r}]['image']"),
        "scores": {m["name"]: {"value": _num(scores.get(m["name"])), "text": _fmt(scores.get(m["name"])),
                               "best": False} for m in metrics},
    })
  # Best value per metric column, ties included.
  for m in metrics:
    vals = [r["scores"][m["name"]]["value"] for r in rows if r["scores"][m["name"]]["value"] is not None]
    if vals:
      best = max(vals) if m["direction"] == "higher" else min(vals)
      for r in rows:
        if r["scores"][m["name"]]["value"] == best:
          r["scores"][m["name"]]["best"] = True
  return rows


def _families(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Rows grouped by their family in `saljax.viz.family_order` (as the grid),
  by paper year then name within one."""
  from saljax import viz
  titles = viz.FAMILY_TITLES
  fams: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    fams.setdefault(r["family"], []).append(r)
  names = viz.family_order(fams)
  return [{"name": f, "title": titles.get(f, f.replace("_", " ").capitalize()),
           "methods": sorted(fams[f], key=lambda r: (r["year"] or 0, r["name"]))} for f in names]


def _colormap_css(name: str, stops: int = 11) -> str:
  """A CSS linear-gradient sampling one of saljax.viz's colormaps, so the
  legend shows the colors the images use."""
  from saljax import viz
  cm = viz.colormap(name)
  parts = []
  for i in range(stops):
    r, g, b, _ = cm(i / (stops - 1))
    parts.append(f"#{int(round(r * 255)):02x}{int(round(g * 255)):02x}{int(round(b * 255)):02x}"
                 f" {100 * i / (stops - 1):.0f}%")
  return "linear-gradient(to right, " + ", ".join(parts) + ")"


def context(summary: Mapping) -> dict[str, Any]:
  """What the template needs, computed from the summary (numbers formatted,
  best scores marked, methods grouped by family)."""
  if not isinstance(summary, Mapping):
    raise ValueError(f"summary: expected a mapping (the demo's summary.json), got {type(summary).__name__}")
  from saljax import viz
  metrics = _metrics(summary)
  rows = _methods(summary, metrics)
  families = _families(rows)
  counts = dict(summary.get("counts") or {})
  if not counts:
    for r in rows:
      counts[r["status"]] = counts.get(r["status"], 0) + 1
  targets = summary.get("targets") or {}
  photos = []
  for p, top in (summary.get("photos") or {}).items():
    preds = [{"name": str(c.get("name", c.get("class", "?"))), "cls": c.get("class"),
              "probability": _num(c.get("probability")), "text": _fmt(c.get("probability"), 2),
              "target": c.get("class") is not None and c.get("class") == targets.get(p)}
             for c in (top or [])]
    photos.append({"name": p, "predictions": preds})
  gt = summary.get("ground_truth") or {}
  boxes = gt.get("boxes") or {}
  return {
      "model": summary.get("model", "?"), "device": summary.get("device", "?"),
      "version": summary.get("saljax_version", "?"), "note": summary.get("note"),
      "total": _fmt_duration(summary.get("total_seconds")),
      "counts": [(k, v, STATUS_RANK.get(k, 9), re.sub(r"[^a-z]+", "-", k.lower()).strip("-"))
                 for k, v in sorted(counts.items(), key=lambda kv: STATUS_RANK.get(kv[0], 9))],
      "photos": photos,
      "ground_truth": ({"file": gt.get("file"), "how": gt.get("how"),
                        "n_boxes": sum(len(b) for b in boxes.values()), "n_photos": len(boxes)}
                       if gt else None),
      "grid": _relative_image((summary.get("images") or {}).get("grid", "grid.png"),
                              "summary['images']['grid']"),
      "metrics": metrics, "rows": [r for f in families for r in f["methods"]], "families": families,
      "diverging": _colormap_css(viz.DIVERGING_CMAP), "sequential": _colormap_css(viz.SEQUENTIAL_CMAP),
  }


def render(summary: Mapping) -> str:
  """The page's HTML for a summary (see `write`)."""
  import jinja2
  env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                           undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
  return env.get_template(TEMPLATE).render(**context(summary))


def write(workdir: str | os.PathLike, summary: Mapping) -> pathlib.Path:
  """Renders ``<workdir>/index.html`` from the demo's summary (atomically).

  Args:
    workdir: the demo's output directory; image paths in the summary are
      relative to it (the page references them, it does not copy them).
    summary: the dict the demo writes to ``summary.json``; optional keys
      (metrics' descriptions, scores, ground truth, years, papers) may be
      missing, family and year then come from the explainer registry.
  Returns:
    The path of ``index.html``.
  """
  out = pathlib.Path(workdir)
  if not out.is_dir():
    raise FileNotFoundError(f"workdir: expected an existing directory (the demo's output), got {out}")
  html = render(summary)
  path = out / "index.html"
  C.atomic_write_text(path, html)
  return path


def main():
  from absl import app, flags

  workdir = flags.DEFINE_string("workdir", "runs/demo", "The demo's output directory (with summary.json).")

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    src = pathlib.Path(workdir.value) / "summary.json"
    if not src.is_file():
      raise app.UsageError(f"no {src}: run `make demo` (python -m experiments.demo) first")
    print(write(workdir.value, json.loads(src.read_text())))

  app.run(_main)


if __name__ == "__main__":
  main()
