"""The response report: one self-contained HTML page for a reviewed study.

Contents: the study (patient, timepoints with dates and images), the lesion table (colour, id,
name, site, RECIST role; per timepoint volume, long and short axis and status), the RECIST 1.1
response per follow-up with its reason, a size-over-time plot (each lesion's RECIST diameter and
the target sum with the -30 % vs baseline and +20 % vs nadir thresholds), one key slice per lesion
per timepoint (the axial slice it was measured on, its mask outline and the RECIST long/short axes
drawn), and the provenance of every mask. Figures are PNG embedded as base64 (matplotlib, Agg
canvas: no GUI, no global backend change); nothing is fetched from anywhere.

Headless (no Qt, napari or torch): the CLI (``lesionlocator report``), the demo and the GUI's
button all call :func:`write_report`.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .core.measurements import LesionMeasurement
from .core.recist import RecistSummary, recist_for_study
from .core.windows import SITE_WINDOWS, lesion_rgb, window_limits

__all__ = ["build_report", "write_report", "key_slice_png", "size_plot_png", "report_figures"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1d2330;max-width:1400px}
h1{font-size:22px;margin-bottom:2px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccd;padding-bottom:3px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #ccd;padding:3px 7px;text-align:right}
th{background:#eef0f6} td.l,th.l{text-align:left} .muted{color:#667}
.sw{font-size:16px;line-height:12px;vertical-align:middle}
.PD{background:#ffd9d9;font-weight:bold} .PR,.CR{background:#d9f5dc;font-weight:bold} .SD{background:#fff6cc}
.NE{background:#eee} .prov{font-style:italic;color:#a05a00}
.grid{display:grid;gap:6px} .grid figure{margin:0;text-align:center;font-size:12px}
.grid img{width:100%;max-width:240px;border:1px solid #ccd}
.st-new{color:#b00000;font-weight:bold} .st-disappeared,.st-lost{color:#555;font-style:italic}
.st-unverified{color:#a05a00}
"""


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "&ndash;"
    return f"{value:.{digits}f}{suffix}"


def _signed(value, digits: int = 1, suffix: str = " %") -> str:
    if value is None:
        return "&ndash;"
    return f"{value:+.{digits}f}{suffix}"


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb[:3])


# ------------------------------------------------------------------ figures
def size_plot_png(study, rows: Sequence[LesionMeasurement], recist: RecistSummary | None) -> str:
    """Base64 PNG: each lesion's RECIST diameter over time, and the target sum with its thresholds."""
    from matplotlib.figure import Figure

    names = study.names
    dates = [tp.date for tp in study.timepoints]
    use_dates = all(d is not None for d in dates)
    xs = dates if use_dates else list(range(len(names)))
    nodes = set(study.nodes())
    fig = Figure(figsize=(11, 3.8), dpi=90)
    ax1, ax2 = fig.subplots(1, 2)
    by = {(r.lesion_id, r.timepoint): r for r in rows}
    for lid in study.lesion_ids:
        ys, xk = [], []
        seen = False
        for k in range(len(names)):
            r = by.get((lid, k))
            seen = seen or (r is not None and r.present)
            if r is None or not seen:  # not measured, or before it first appeared
                continue
            xk.append(xs[k])
            ys.append((r.short_axis_mm if lid in nodes else r.long_axis_mm) if r.present else 0.0)
        if ys:
            role = study.role(lid)
            style = "-" if role == "target" else "--"
            ax1.plot(xk, ys, style, marker="o", color=lesion_rgb(lid), markeredgecolor="#333", lw=2,
                     label=f"{lid} {study.lesion_name(lid)}{' (T)' if role == 'target' else ''}")
    ax1.set_title("RECIST diameter per lesion (nodes: short axis; T = target)", fontsize=10)
    ax1.set_ylabel("mm")
    ax1.grid(alpha=0.3)
    if study.lesion_ids:
        ax1.legend(fontsize=7, ncol=2, loc="best")
    if recist is not None and recist.targets:
        sums = [t.sum_mm for t in recist.timepoints]
        pts = [(xs[k], s) for k, s in enumerate(sums) if s is not None]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color="#1d2330", lw=2, label="sum of targets")
        base = recist.timepoints[0].sum_mm
        ax2.axhline(0.7 * base, color="#1a8f3a", ls="--", lw=1.3, label="-30 % vs baseline (PR)")
        nadir_x = [xs[k] for k in range(1, len(sums))]
        nadir_y = [1.2 * t.nadir_mm for t in recist.timepoints[1:] if t.nadir_mm is not None]
        if nadir_x and len(nadir_y) == len(nadir_x):
            ax2.step([xs[0], *nadir_x], [nadir_y[0], *nadir_y], where="post", color="#c62828", ls="--", lw=1.3,
                     label="+20 % vs nadir (PD, also needs +5 mm)")
        for k, t in enumerate(recist.timepoints[1:], start=1):
            if t.sum_mm is not None:
                ax2.annotate(t.label, (xs[k], t.sum_mm), textcoords="offset points", xytext=(0, 7), ha="center",
                             fontsize=8, color="#c62828" if t.response == "PD" else "#1d2330")
        ax2.legend(fontsize=7, loc="lower right")
        top = max([v for v in sums if v is not None] + nadir_y + [base])
        ax2.set_ylim(0, 1.2 * top)  # room for the response labels above the points
    else:
        ax2.text(0.5, 0.5, "no target lesions", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_title("Sum of target diameters", fontsize=10)
    ax2.set_ylabel("mm")
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        ax.margins(x=0.1)
        if use_dates:
            ax.set_xticks(xs)
            ax.set_xticklabels([d.isoformat() for d in dates], fontsize=8)
        else:
            ax.set_xticks(xs)
            ax.set_xticklabels(names, fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _crop_half_mm(study, lid: int) -> float:
    """Half the side of the square shown around a lesion: its largest in-plane extent plus margin."""
    ext = 0.0
    for name in study.names:
        obs = study.observation(lid, name)
        if obs is not None and obs.present:
            sp = obs.mask.geometry.spacing
            ext = max(ext, obs.mask.array.shape[1] * sp[1], obs.mask.array.shape[2] * sp[2])
    return max(20.0, 0.5 * ext + max(8.0, 0.35 * ext))


def key_slice_png(study, lid: int, timepoint: str, row: LesionMeasurement | None, *, half_mm: float | None = None,
                  centre_world=None, caption: str = "") -> str | None:
    """Base64 PNG of one lesion at one timepoint: the axial slice it was measured on (or, when it is
    absent, the slice at ``centre_world``), windowed for its site, with its mask outline and the
    RECIST long (solid) and short (dashed) axes. None when there is nothing to show."""
    from matplotlib.figure import Figure

    tp = study[timepoint]
    geom = tp.geometry
    obs = study.observation(lid, timepoint)
    present = obs is not None and obs.present and row is not None and row.present
    if present:
        z = int(row.axial_slice)
        centre = obs.mask.centroid_index()
        cy, cx = float(centre[1]), float(centre[2])
    elif centre_world is not None:
        idx = geom.world_to_index(np.asarray(centre_world, float))
        if not geom.contains_index(np.round(idx)):
            return None
        z, cy, cx = int(round(idx[0])), float(idx[1]), float(idx[2])
    else:
        return None
    half = half_mm if half_mm is not None else _crop_half_mm(study, lid)
    sy, sx = geom.spacing[1], geom.spacing[2]
    y0, y1 = max(0, int(np.floor(cy - half / sy))), min(geom.shape[1], int(np.ceil(cy + half / sy)) + 1)
    x0, x1 = max(0, int(np.floor(cx - half / sx))), min(geom.shape[2], int(np.ceil(cx + half / sx)) + 1)
    ct = tp.image.array[z, y0:y1, x0:x1]
    lo, hi = window_limits(SITE_WINDOWS.get(study.site(lid), "soft tissue"))
    fig = Figure(figsize=(2.6, 2.6), dpi=90, facecolor="black")
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_facecolor("black")
    extent = (-0.5 * sx, (x1 - x0 - 0.5) * sx, (y1 - y0 - 0.5) * sy, -0.5 * sy)
    ax.imshow(ct, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    colour = lesion_rgb(lid)
    if present:
        full = np.zeros((y1 - y0, x1 - x0), bool)
        m = obs.mask
        if m.start[0] <= z < m.stop[0]:
            sub = m.array[z - m.start[0]]
            ys, xs = slice(max(y0, m.start[1]), min(y1, m.stop[1])), slice(max(x0, m.start[2]), min(x1, m.stop[2]))
            if ys.stop > ys.start and xs.stop > xs.start:
                full[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = sub[
                    ys.start - m.start[1]:ys.stop - m.start[1], xs.start - m.start[2]:xs.stop - m.start[2]]
        if full.any():
            gx = (np.arange(x1 - x0)) * sx
            gy = (np.arange(y1 - y0)) * sy
            ax.contour(gx, gy, np.pad(full, 0).astype(float), levels=[0.5], colors=[colour], linewidths=1.6)

        def plot_axis(ends, style):
            if ends is None:
                return
            pts = np.array([geom.world_to_index(np.asarray(p, float)) for p in ends])
            ax.plot((pts[:, 2] - x0) * sx, (pts[:, 1] - y0) * sy, style, color="#ff2a2a" if style == "-" else "#2aa7ff",
                    lw=1.6, solid_capstyle="round")

        plot_axis(row.long_axis_endpoints_mm, "-")
        plot_axis(row.short_axis_endpoints_mm, "--")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_axis_off()
    if caption:
        ax.text(0.02, 0.98, caption, transform=ax.transAxes, va="top", ha="left", fontsize=7, color="white",
                bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "lw": 0})
    bar_x = [0.05 * extent[1], 0.05 * extent[1] + 10.0]
    ax.plot(bar_x, [0.93 * extent[2]] * 2, color="black", lw=4)  # a dark rim: readable on bright or noisy tissue
    ax.plot(bar_x, [0.93 * extent[2]] * 2, color="white", lw=2)
    ax.text(0.05 * extent[1] + 5.0, 0.90 * extent[2], "10 mm", color="white", fontsize=6, ha="center", va="bottom",
            bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.0, "lw": 0})
    return _png(fig)


def report_figures(study, rows: Sequence[LesionMeasurement]) -> dict[tuple[int, str], str | None]:
    """(lesion id, timepoint name) -> base64 PNG key slice (None where nothing can be shown)."""
    by = {(r.lesion_id, study.names[r.timepoint]): r for r in rows}
    out: dict[tuple[int, str], str | None] = {}
    for lid in study.lesion_ids:
        half = _crop_half_mm(study, lid)
        last_world = None
        for name in study.names:
            row = by.get((lid, name))
            obs = study.observation(lid, name)
            status = study.table_status(lid, name)
            if row is not None and row.present and row.centroid_mm is not None:
                last_world = row.centroid_mm
            cap = f"{lid} {name}: {status}"
            if row is not None and row.present:
                cap += f"\nLA {row.long_axis_mm:.1f} / SA {row.short_axis_mm:.1f} mm"
            if obs is None and last_world is None:
                out[(lid, name)] = None
                continue
            out[(lid, name)] = key_slice_png(study, lid, name, row, half_mm=half, centre_world=last_world,
                                             caption=cap)
    return out


# ------------------------------------------------------------------ HTML
def build_report(study, *, recist: RecistSummary | None = None, title: str | None = None,
                 session_folder: str | os.PathLike | None = None) -> str:
    """The report as one HTML string (see the module docstring)."""
    from . import __version__
    from .core.study import now_iso

    rows = study.measurements()
    if recist is None:
        try:
            recist = recist_for_study(study, rows=rows)
        except ValueError as exc:
            recist = None
            recist_note = f"No RECIST assessment: {exc}."
        else:
            recist_note = ""
    else:
        recist_note = ""
    names = study.names
    nodes = set(study.nodes())
    by = {(r.lesion_id, r.timepoint): r for r in rows}
    parts: list[str] = []
    add = parts.append
    title = title or f"Response report: {study.patient_id}"
    add(f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>")
    add(f"<h1>{_esc(title)}</h1>")
    folder = session_folder or getattr(study, "session_folder", None)
    add(f"<p class='muted'>Generated {_esc(now_iso())} by napari-lesionlocator {_esc(__version__)}"
        + (f" from the session <code>{_esc(folder)}</code>" if folder else "") + ". RECIST 1.1 (Eisenhauer 2009);"
        " diameters measured in physical mm on the axial slice where the long axis is longest.</p>")

    # ---- study
    add("<h2>Study</h2><table id='study'><tr><th>#</th><th class='l'>timepoint</th><th>date</th>"
        "<th class='l'>image</th><th>grid (z, y, x)</th><th>spacing (mm)</th></tr>")
    for k, tp in enumerate(study.timepoints):
        src = tp.image.source or "(kept in the session)"
        add(f"<tr><td>{k}</td><td class='l'>{_esc(tp.name)}{' (baseline)' if k == 0 else ''}</td>"
            f"<td>{_esc(tp.acquisition_date or 'undated')}</td><td class='l'>{_esc(src)}</td>"
            f"<td>{_esc(' x '.join(map(str, tp.geometry.shape)))}</td>"
            f"<td>{_esc(' x '.join(f'{s:g}' for s in tp.geometry.spacing))}</td></tr>")
    add("</table>")

    # ---- response
    add("<h2>Response (RECIST 1.1)</h2>")
    if recist is None:
        add(f"<p>{_esc(recist_note or 'No RECIST assessment.')}</p>")
    else:
        tgt = ", ".join(f"{t} ({_esc(study.lesion_name(t))})" for t in recist.targets) or "none"
        nts = ", ".join(str(t) for t in recist.non_targets) or "none"
        add(f"<p>Targets: {tgt}. Non-targets: {nts}. Lymph nodes are measured by their short axis.</p>")
        add("<table id='response'><tr><th class='l'>timepoint</th><th>date</th><th>sum (mm)</th>"
            "<th>vs baseline</th><th>vs nadir</th><th>nadir (mm)</th><th>targets</th><th>non-targets</th>"
            "<th>new lesions</th><th>response</th><th class='l'>reason</th></tr>")
        for t in recist.timepoints:
            cls = t.response.split("/")[0] if t.response != "baseline" else ""
            resp = _esc(t.response) + (" <span class='prov'>(provisional: a target is unverified)</span>"
                                       if t.provisional else "")
            vs_nadir = _signed(t.change_vs_nadir_pct)
            if t.change_vs_nadir_mm is not None and t.timepoint:
                vs_nadir += f" ({t.change_vs_nadir_mm:+.1f} mm)"
            add(f"<tr><td class='l'>{_esc(names[t.timepoint])}</td><td>{_esc(t.date or '')}</td>"
                f"<td>{_fmt(t.sum_mm)}</td><td>{_signed(t.change_vs_baseline_pct)}</td><td>{vs_nadir}</td>"
                f"<td>{_fmt(t.nadir_mm)}</td><td>{_esc(t.target_response or '')}</td>"
                f"<td>{_esc(t.non_target_response or '')}</td>"
                f"<td>{_esc(', '.join(map(str, t.new_lesion_ids)))}</td>"
                f"<td class='{cls} response'>{resp}</td><td class='l reason'>{_esc(t.reason)}</td></tr>")
        add("</table>")
    unverified = study.unverified()
    if unverified:
        add("<p class='prov'>Still unverified: " + ", ".join(f"lesion {lid} at {_esc(n)}" for lid, n in unverified)
            + ".</p>")
    pending = [(n, len(study.candidates(n))) for n in names[1:] if study.candidates(n)]
    if pending:
        add("<p class='prov' id='candidates'>New-lesion candidates the engine proposed and nobody has reviewed: "
            + ", ".join(f"{k} at {_esc(n)}" for n, k in pending) + " (a confirmed new lesion makes that follow-up PD)."
            "</p>")
    add(f"<img id='size-plot' alt='size over time' src='data:image/png;base64,{size_plot_png(study, rows, recist)}'>")

    # ---- lesion table
    add("<h2>Lesions</h2><table id='lesions'><tr><th></th><th>id</th><th class='l'>name</th><th class='l'>site</th>"
        "<th class='l'>role</th>")
    for name in names:
        add(f"<th colspan='4'>{_esc(name)}</th>")
    add("</tr><tr><th colspan='5'></th>" + "<th>mL</th><th>LA mm</th><th>SA mm</th><th>status</th>" * len(names)
        + "</tr>")
    for lid in study.lesion_ids:
        add(f"<tr><td><span class='sw' style='color:{_hex(lesion_rgb(lid))}'>&#9632;</span></td><td>{lid}</td>"
            f"<td class='l'>{_esc(study.lesion_name(lid))}</td><td class='l'>{_esc(study.site(lid))}</td>"
            f"<td class='l'>{_esc(study.role(lid))}</td>")
        for k, name in enumerate(names):
            r = by.get((lid, k))
            status = study.table_status(lid, name)
            if r is not None and r.present:
                la = f"<b>{_fmt(r.long_axis_mm)}</b>" if lid not in nodes else _fmt(r.long_axis_mm)
                sa = f"<b>{_fmt(r.short_axis_mm)}</b>" if lid in nodes else _fmt(r.short_axis_mm)
                add(f"<td>{_fmt(r.volume_ml, 2)}</td><td>{la}</td><td>{sa}</td>")
            else:
                add("<td>&ndash;</td><td>&ndash;</td><td>&ndash;</td>")
            add(f"<td class='l st-{status.replace(' ', '-')}'>{_esc(status)}</td>")
        add("</tr>")
    csv_b64 = base64.b64encode(study.review_csv().encode("utf-8")).decode("ascii")
    add("</table><p class='muted'>Bold: the diameter RECIST uses (long axis; short axis for lymph nodes). "
        f"<a id='review-csv' download='{_esc(study.patient_id)}_review.csv' href='data:text/csv;base64,{csv_b64}'>"
        "Download the table with provenance (CSV)</a>.</p>")

    # ---- key slices
    add("<h2>Key slices</h2><p class='muted'>Each lesion on the axial slice it was measured on, windowed for "
        "its site: mask outline in the lesion's colour, RECIST long axis red (solid), short axis blue (dashed). "
        "Where a lesion is absent, the slice at its last known position.</p>")
    figs = report_figures(study, rows)
    cols = len(names)
    for lid in study.lesion_ids:
        add(f"<h3 style='font-size:14px'><span class='sw' style='color:{_hex(lesion_rgb(lid))}'>&#9632;</span> "
            f"Lesion {lid}: {_esc(study.lesion_name(lid))} ({_esc(study.site(lid))}, {_esc(study.role(lid))})</h3>")
        add(f"<div class='grid' style='grid-template-columns:repeat({cols}, minmax(120px, 240px))'>")
        for name in names:
            png = figs.get((lid, name))
            status = study.table_status(lid, name)
            if png:
                add(f"<figure><img class='key-slice' data-lesion='{lid}' data-timepoint='{_esc(name)}' "
                    f"alt='lesion {lid} at {_esc(name)}' src='data:image/png;base64,{png}'>"
                    f"<figcaption>{_esc(name)}: {_esc(status)}</figcaption></figure>")
            else:
                add(f"<figure><div class='muted' style='padding:40px 0'>{_esc(status)}</div>"
                    f"<figcaption>{_esc(name)}</figcaption></figure>")
        add("</div>")

    # ---- provenance
    add("<h2>Provenance</h2><table id='provenance'><tr><th>id</th><th class='l'>timepoint</th>"
        "<th class='l'>source</th><th class='l'>engine</th><th class='l'>model / parameters</th>"
        "<th class='l'>prompt</th><th class='l'>tracked from</th><th>edits</th><th class='l'>last edit</th>"
        "<th class='l'>user</th><th class='l'>review</th><th class='l'>engine status</th></tr>")
    for name in names:
        for lid, obs in study.observations(name).items():
            p = obs.provenance
            engine = " ".join(x for x in (p.engine, p.engine_version) if x) or "&ndash;"
            tta = None if p.tta is None else f"TTA {'on' if p.tta else 'off'}"
            params = ", ".join(f"{k}={v}" for k, v in sorted(p.parameters.items())) or None
            model = "; ".join(x for x in (p.model, f"folds {p.folds}" if p.folds else None, tta, params) if x)
            prompt = "; ".join(", ".join(f"{k} {v}" for k, v in d.items()) for d in p.prompt)
            status = obs.result.status + (f": {'; '.join(obs.result.messages)}" if obs.result.messages else "")
            add(f"<tr><td>{lid}</td><td class='l'>{_esc(name)}</td><td class='l'>{_esc(p.source)}</td>"
                f"<td class='l'>{engine if engine == '&ndash;' else _esc(engine)}</td><td class='l'>{_esc(model)}</td>"
                f"<td class='l'>{_esc(prompt)}</td><td class='l'>{_esc(p.tracked_from or '')}</td>"
                f"<td>{p.edits}</td><td class='l'>{_esc(p.last_edit or '')}</td><td class='l'>{_esc(p.user)}</td>"
                f"<td class='l'>{_esc(obs.review_label)}</td><td class='l'>{_esc(status)}</td></tr>")
    add("</table>")
    if study.engine:
        add(f"<p class='muted'>Engine of the session: {_esc(study.engine)}</p>")
    add("</body></html>")
    return "\n".join(parts)


def write_report(study, path: str | os.PathLike, *, overwrite: bool = False, **kw) -> Path:
    """Write :func:`build_report` to ``path`` (an ``.html`` file, or a folder: ``<folder>/report.html``)
    atomically; refuses to replace a file unless ``overwrite``."""
    from .io.atomic import atomic_write_text

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        path = path / "report.html"
    text = build_report(study, **kw)
    return atomic_write_text(path, text, overwrite=overwrite)
