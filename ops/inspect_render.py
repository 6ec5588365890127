"""The page of `gpo inspect` (ops/inspect_run.py reads the run): trajectories step by step
with V(s_i), A_i, the critical step and its resets, as self-contained HTML (inline CSS and
SVG; every text escaped)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

from protocol.messages import Trajectory

if TYPE_CHECKING:  # the reader's types; it imports this module
    from ops.inspect_run import Row, RunView

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d2330;
 background:#f4f5f8}
h1{font-size:22px;margin:0 0 4px} .meta{color:#5b6474;margin-bottom:18px}
.summary span{display:inline-block;background:#fff;border:1px solid #d9dde5;border-radius:6px;
 padding:4px 10px;margin:0 6px 6px 0}
.trajectory{background:#fff;border:1px solid #d9dde5;border-radius:8px;padding:14px 18px;
 margin:0 0 20px}
.trajectory h2{font-size:15px;margin:0 0 8px;font-family:ui-monospace,monospace}
.tags span{display:inline-block;font-size:12px;border-radius:10px;padding:1px 9px;
 margin-right:6px;background:#eef0f4}
.tags .crit{background:#fff3c4;color:#8a5a00}
.reward{display:inline-block;font-size:12px;border-radius:10px;padding:1px 9px}
.reward.ok{background:#d7f5de;color:#17612b} .reward.bad{background:#fbdcdc;color:#8a1c1c}
.head{display:flex;gap:16px;align-items:flex-start;margin:10px 0}
.prompt{flex:1;background:#f7f8fa;border-left:3px solid #9aa3b2;padding:6px 10px}
figure.chart{flex:none;margin:0;text-align:center;font-size:11px;color:#5b6474}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font:13px/1.4 ui-monospace,monospace}
table{border-collapse:collapse;width:100%} th{text-align:left;font-size:12px;color:#5b6474;
 border-bottom:1px solid #d9dde5;padding:4px 6px}
td{padding:4px 6px;border-bottom:1px solid #eef0f4;vertical-align:top}
td.num{text-align:right;font-family:ui-monospace,monospace;white-space:nowrap;width:70px}
td.idx{width:28px;color:#5b6474} td.bar{width:130px}
tr.critical td{background:#fff3c4} tr.critical td.idx{font-weight:700;color:#8a5a00}
.critical-label{font-size:11px;font-weight:700;color:#8a5a00;margin-left:6px}
.abar{height:10px;background:#eef0f4;position:relative;border-radius:2px}
.abar i{position:absolute;top:0;height:10px;border-radius:2px}
.pos{background:#3aa757} .neg{background:#d9534f}
tr.end td{color:#5b6474;font-style:italic}
.resets{margin-top:12px;border-top:1px dashed #c4cad6;padding-top:8px}
.resets h3{font-size:13px;margin:0 0 6px}
.reset-rollout{display:flex;gap:10px;border-bottom:1px solid #eef0f4;padding:4px 2px}
.reset-rollout .reward{flex:none;align-self:flex-start}
.kept{color:#8c94a3} .regenerated{background:#fff3c4;border-radius:2px}
.none{color:#8c94a3;font-style:italic}
"""


def render(view: RunView, tokenizer) -> str:
    """The whole page as one string; every text from the run goes through `esc`."""
    summary = (
        f"<span>{view.fresh} fresh trajectories</span>"
        f"<span>{view.with_reset} with a reset request</span>"
        f"<span>{view.reset_rollouts} reset rollouts</span>"
        f"<span>{len(view.rows)} shown</span>"
        + (f"<span>{view.undecodable} undecodable</span>" if view.undecodable else "")
    )
    body = "".join(render_row(row, tokenizer) for row in view.rows) or (
        '<p class="none">No fresh trajectories in this run yet.</p>'
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>gpo inspect: {esc(view.run_id)}</title><style>{CSS}</style></head><body>"
        f"<h1>Critical steps of run {esc(view.run_id)}</h1>"
        f'<div class="meta">read from {esc(view.source)}. V(s<sub>i</sub>): Monte Carlo value'
        " of the state before step i; A<sub>i</sub> = V(s<sub>i+1</sub>) - V(s<sub>i</sub>);"
        " the highlighted step is the one the estimator reset.</div>"
        f'<div class="summary">{summary}</div>{body}</body></html>'
    )


def render_row(row: Row, tokenizer) -> str:
    t, req = row.trajectory, row.reset
    prompt = tokenizer.decode(t.prefix_token_ids[: t.prompt_len], skip_special_tokens=True)
    steps = step_texts(t, tokenizer)
    m = req.critical_step if req else None
    tags = [reward_tag(t.reward), f"<span>policy v{t.policy_version}</span>"]
    tags.append(f"<span>{len(steps)} steps</span>")
    if req:
        tags.append(f'<span class="crit">critical step {m} ({esc(req.selection)})</span>')
    elif row.values is not None:
        tags.append("<span>no critical step: every A<sub>i</sub> is 0</span>")
    else:
        tags.append("<span>not estimated yet</span>")
    values = row.values if row.values is not None and len(row.values) == len(steps) + 1 else None
    table = "".join(step_row(i, text, values, m) for i, text in enumerate(steps))
    if values is not None:
        table += (
            f'<tr class="end"><td class="idx">T</td><td>end: V(s<sub>T</sub>) = reward</td>'
            f'<td class="num value">{values[-1]:.2f}</td><td></td><td class="bar"></td></tr>'
        )
    chart = value_chart(values, m) if values is not None else ""
    return (
        f'<section class="trajectory" data-trajectory-id="{esc(t.id)}">'
        f'<h2>{esc(t.id)}</h2><div class="tags">{"".join(tags)}</div>'
        f'<div class="head"><div class="prompt"><pre>{esc(prompt)}</pre></div>{chart}</div>'
        "<table><thead><tr><th>#</th><th>step</th><th>V(s<sub>i</sub>)</th>"
        f"<th>A<sub>i</sub></th><th></th></tr></thead><tbody>{table}</tbody></table>"
        f"{render_resets(row, tokenizer)}</section>"
    )


def step_row(i: int, text: str, values: np.ndarray | None, critical: int | None) -> str:
    cls = ' class="step critical"' if i == critical else ' class="step"'
    label = '<span class="critical-label">critical step</span>' if i == critical else ""
    if values is None:
        cells = '<td class="num value">-</td><td class="num advantage">-</td><td class="bar"></td>'
    else:
        a = float(values[i + 1] - values[i])
        width, sign = min(abs(a), 1.0) * 50, "pos" if a >= 0 else "neg"
        left = 50 if a >= 0 else 50 - width
        cells = (
            f'<td class="num value">{values[i]:.2f}</td>'
            f'<td class="num advantage">{a:+.2f}</td>'
            f'<td class="bar"><div class="abar"><i class="{sign}" '
            f'style="left:{left:.1f}%;width:{width:.1f}%"></i></div></td>'
        )
    return f'<tr{cls}><td class="idx">{i}</td><td><pre>{esc(text)}</pre>{label}</td>{cells}</tr>'


def render_resets(row: Row, tokenizer) -> str:
    if row.reset is None:
        return ""
    m, kids = row.reset.critical_step, row.children
    head = (
        f"<h3>Reset rollouts from before step {m} (V(s<sub>{m}</sub>) = {row.reset.value:.2f},"
        f" {len(kids)} of {row.reset.n} found"
    )
    if kids:
        head += f", mean reward {np.mean([k.reward for k in kids]):.2f}"
    kept = {0: "", 1: "[step 0 kept] "}.get(m, f"[steps 0-{m - 1} kept] ")
    items = []
    for k in kids:
        first, *rest = step_texts(k, tokenizer) or [""]
        items.append(
            f'<div class="reset-rollout" data-parent-id="{esc(k.parent_id or "")}"'
            f' data-trajectory-id="{esc(k.id)}">{reward_tag(k.reward)}<pre>'
            f'<span class="kept">{kept}</span><span class="regenerated">{esc(first)}</span>'
            f"{esc(''.join(rest))}</pre></div>"
        )
    if not kids:
        items.append('<p class="none">none in the stream (not generated yet, or trimmed)</p>')
    return f'<div class="resets">{head})</h3>{"".join(items)}</div>'


def step_texts(t: Trajectory, tokenizer) -> list[str]:
    """The text of each step: the completion decoded once and cut at each span's first
    character, so multi-token characters and leading spaces stay whole."""
    from actors.steps import token_char_starts

    starts, text = token_char_starts(t.completion_token_ids.tolist(), tokenizer)
    cuts = [starts[a] if a < len(starts) else len(text) for a, _ in t.step_spans] + [len(text)]
    return [text[cuts[i] : cuts[i + 1]] for i in range(len(t.step_spans))]


def value_chart(values: np.ndarray, critical: int | None, w: int = 260, h: int = 90) -> str:
    """Inline SVG of V(s_0)..V(s_T) against the step boundary; the critical step's segment
    drawn thick and orange."""
    pad, n = 12, len(values) - 1
    xs = [pad + (w - 2 * pad) * i / max(n, 1) for i in range(n + 1)]
    ys = [h - pad - (h - 2 * pad) * float(np.clip(v, 0, 1)) for v in values]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    parts = [
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#c4cad6"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{w - pad}" y2="{pad}" stroke="#eef0f4"/>',
        f'<polyline points="{points}" fill="none" stroke="#4a6fd1" stroke-width="2"/>',
    ]
    if critical is not None and critical < n:
        a, b = critical, critical + 1
        parts.append(
            f'<line x1="{xs[a]:.1f}" y1="{ys[a]:.1f}" x2="{xs[b]:.1f}" y2="{ys[b]:.1f}"'
            ' stroke="#f0a020" stroke-width="5" stroke-linecap="round"/>'
        )
    parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#4a6fd1"/>' for x, y in zip(xs, ys)]
    parts += [
        f'<text x="2" y="{pad + 3}" font-size="9" fill="#8c94a3">1</text>',
        f'<text x="2" y="{h - pad + 3}" font-size="9" fill="#8c94a3">0</text>',
    ]
    return (
        f'<figure class="chart"><svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"'
        f' aria-label="step values">{"".join(parts)}</svg><figcaption>V(s<sub>i</sub>) at each'
        " step boundary; the critical step in orange</figcaption></figure>"
    )


def reward_tag(reward: float) -> str:
    cls = "ok" if reward >= 0.5 else "bad"
    return f'<span class="reward {cls}">reward {reward:.2f}</span>'


def esc(text: str) -> str:
    return html.escape(str(text), quote=True)
