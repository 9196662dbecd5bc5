"""Rendering a reconciliation: a terminal table with a summary line, JSON, CSV, or one HTML file.

The HTML page stands alone (inline CSS, no script, no external asset) and escapes every value. CSV
has one row per finding and field, so a spreadsheet can filter by field; formulas are neutralised
(a leading =, +, - or @ gets a quote) since values come from patient records. All of these show
patient data: they are written only where the operator asked.
"""

from __future__ import annotations

import csv
import html
import io
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapter.reconcile.model import Finding, FindingKind

__all__ = ["FORMATS", "ReportMeta", "render", "summary", "summary_line"]

FORMATS = ("table", "json", "csv", "html")

LABELS = {
    FindingKind.MISSING_IN_ONCALL: "missing in OnCall",
    FindingKind.CONTACT_WITHOUT_EMR_ID: "without EMR id",
    FindingKind.DUPLICATE_EMR_ID: "duplicate EMR id",
    FindingKind.DUPLICATE_EMAIL_BIRTH_DATE: "duplicate e-mail+birth date",
    FindingKind.FIELD_MISMATCH: "field mismatch",
    FindingKind.APPOINTMENT_OUT_OF_SYNC: "appointment out of sync",
    FindingKind.CROSSWALK_STALE: "stale crosswalk",
    FindingKind.CROSSWALK_MISSING: "crosswalk missing",
    FindingKind.EMR_RECORD_UNUSABLE: "unusable EMR record",
}


@dataclass(frozen=True)
class ReportMeta:
    generated_at: datetime
    since: datetime
    until: datetime
    emr_source: str | None
    contacts: int
    appointments: int


def summary(findings: list[Finding]) -> dict[str, int]:
    counts = Counter(str(f.kind) for f in findings)
    return {str(kind): counts.get(str(kind), 0) for kind in FindingKind}


def summary_line(findings: list[Finding]) -> str:
    counts = Counter(f.kind for f in findings)
    fixable = sum(1 for f in findings if f.fixable)
    if not findings:
        return "0 findings: OnCall, the crosswalk and the EMR agree"
    parts = [f"{counts[kind]} {LABELS[kind]}" for kind in FindingKind if counts[kind]]
    return (f"{len(findings)} findings: {', '.join(parts)}; {fixable} fixable by --fix, "
            f"{len(findings) - fixable} for a person")


def render(findings: list[Finding], meta: ReportMeta, fmt: str, *, width: int | None = None) -> str:
    if fmt == "json":
        return _json(findings, meta)
    if fmt == "csv":
        return _csv(findings)
    if fmt == "html":
        return _html(findings, meta)
    return _table(findings, meta, width or shutil.get_terminal_size((120, 24)).columns)


def _meta_json(meta: ReportMeta) -> dict[str, Any]:
    return {"generated_at": meta.generated_at.isoformat(), "window": {"since": meta.since.isoformat(),
            "until": meta.until.isoformat()}, "emr_source": meta.emr_source, "contacts": meta.contacts,
            "appointments": meta.appointments}


def _json(findings: list[Finding], meta: ReportMeta) -> str:
    body = {**_meta_json(meta), "summary": summary(findings), "summary_line": summary_line(findings),
            "findings": [f.to_json() for f in findings]}
    return json.dumps(body, indent=2, ensure_ascii=False, default=str) + "\n"


def _fields_text(finding: Finding) -> str:
    return "; ".join(f"{name}: EMR {_show(e)} / OnCall {_show(o)}" for name, (e, o) in finding.fields.items())


def _show(value: Any) -> str:
    return "(empty)" if value in (None, "") else str(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def _table(findings: list[Finding], meta: ReportMeta, width: int) -> str:
    lines = [f"Reconciliation {meta.generated_at:%Y-%m-%d %H:%M} UTC; appointments {meta.since:%Y-%m-%d} to "
             f"{meta.until:%Y-%m-%d}; {meta.contacts} contacts, {meta.appointments} appointments; "
             f"EMR: {meta.emr_source or 'not consulted'}", ""]
    if findings:
        kind_w = max(len(LABELS[f.kind]) for f in findings)
        subj_w = min(28, max(len(f.subject) for f in findings))
        rest = max(30, width - kind_w - subj_w - 6)
        lines.append(f"{'KIND':<{kind_w}}  {'SUBJECT':<{subj_w}}  DETAIL / ACTION")
        for f in findings:
            lines.append(f"{LABELS[f.kind]:<{kind_w}}  {_clip(f.subject, subj_w):<{subj_w}}  "
                         f"{_clip(f.detail, rest)}")
            pad = " " * (kind_w + subj_w + 4)
            if f.fields:
                lines.append(pad + _clip(_fields_text(f), rest))
            mark = "fix: " if f.fixable else "needs a person: "
            lines.append(pad + _clip(mark + (f.action or "-"), rest))
        lines.append("")
    lines.append(summary_line(findings))
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv(findings: list[Finding]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["kind", "subject", "emr_id", "oncall_url", "field", "expected", "oncall", "fixable",
                     "action", "detail"])
    for f in findings:
        rows = list(f.fields.items()) or [("", (None, None))]
        for name, (expected, oncall) in rows:
            writer.writerow([_cell(v) for v in (f.kind, f.subject, f.emr_id, f.oncall_url, name, expected,
                                                oncall, "yes" if f.fixable else "no", f.action, f.detail)])
    return buffer.getvalue()


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;
text-align:left}th{background:#f0f0f0}.fix{color:#0a5}.person{color:#b50}.summary{font-weight:bold}
code{font-size:12px}"""


def _html(findings: list[Finding], meta: ReportMeta) -> str:
    e = html.escape
    rows = []
    for f in findings:
        fields = "<br>".join(f"{e(n)}: EMR <code>{e(_show(a))}</code> / OnCall <code>{e(_show(b))}</code>"
                             for n, (a, b) in f.fields.items())
        css, mark = ("fix", "fix") if f.fixable else ("person", "needs a person")
        rows.append(f"<tr><td>{e(LABELS[f.kind])}</td><td>{e(f.subject)}</td><td>{e(f.detail)}</td>"
                    f"<td>{fields}</td><td class=\"{css}\">{e(mark)}: {e(f.action or '-')}</td></tr>")
    table = ("<table><thead><tr><th>Kind</th><th>Subject</th><th>Detail</th><th>Fields</th><th>Action</th>"
             "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>") if rows else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"robots\" content=\"noindex\"><title>OnCall reconciliation "
            f"{e(meta.generated_at.strftime('%Y-%m-%d %H:%M'))}</title><style>{_CSS}</style></head><body>"
            f"<h1>OnCall reconciliation</h1><p>Generated {e(meta.generated_at.isoformat())}. Appointments "
            f"from {e(meta.since.isoformat())} to {e(meta.until.isoformat())}. {meta.contacts} contacts, "
            f"{meta.appointments} appointments. EMR: {e(meta.emr_source or 'not consulted')}.</p>"
            f"<p><strong>Contains patient data: keep it where patient records may be kept.</strong></p>"
            f"<p class=\"summary\">{e(summary_line(findings))}</p>{table}</body></html>\n")
