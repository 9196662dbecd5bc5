"""Report rendering (table with summary line, JSON, CSV, standalone escaped HTML), fix planning into
RECONCILE envelopes, the payload parser, and the mapping wrapper the worker uses."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.envelope import Source
from adapter.errors import InputError
from adapter.mapping.operations import ContactUpsert
from adapter.reconcile.apply import ReconcileMappings, with_reconcile
from adapter.reconcile.fix import plan_fixes
from adapter.reconcile.model import Finding, FindingKind
from adapter.reconcile.ops import ContactPatch, parse_operations
from adapter.reconcile.report import ReportMeta, render, summary, summary_line

META = ReportMeta(
    datetime(2030, 1, 1, 12, tzinfo=UTC),
    datetime(2030, 1, 1, tzinfo=UTC),
    datetime(2030, 2, 1, tzinfo=UTC),
    "export emr.json",
    10,
    3,
)
PATCH: dict[str, Any] = {
    "kind": "contact_patch",
    "contact_url": "https://api.oncallhealth.ca/contacts/7/",
    "emr_patient_id": "P7",
    "set": {"last_name": "Right"},
    "expect": {"last_name": "Wrong"},
}
EVIL = '<script>alert("x")</script>&'


def findings() -> list[Finding]:
    return [
        Finding(
            FindingKind.FIELD_MISMATCH,
            "patient P7",
            f"contact 7 ({EVIL}) differs",
            "patient:P7",
            "P7",
            PATCH["contact_url"],
            {"last_name": ("Right", EVIL)},
            (PATCH,),
            "patch last_name from the EMR",
        ),
        Finding(
            FindingKind.DUPLICATE_EMR_ID,
            "patient P5",
            "EMR id P5 is on 2 contacts",
            "patient:P5",
            "P5",
            action="merge them",
        ),
        Finding(
            FindingKind.CROSSWALK_MISSING,
            "patient P7",
            "no entry",
            "patient:P7",
            "P7",
            fix=(
                {
                    "kind": "xref_link",
                    "namespace": "patient",
                    "source_id": "P7",
                    "target": PATCH["contact_url"],
                    "replaces": None,
                },
            ),
            action="link",
        ),
    ]


def test_table_has_rows_and_a_summary_line() -> None:
    """The terminal table lists each finding with its action and ends with the counts."""
    text = render(findings(), META, "table", width=140)
    assert text.splitlines()[-1] == (
        "3 findings: 1 duplicate EMR id, 1 field mismatch, 1 crosswalk missing; "
        "2 fixable by --fix, 1 for a person"
    )
    assert "needs a person: merge them" in text and "fix: patch last_name" in text
    assert summary_line([]).startswith("0 findings")


def test_json_and_csv() -> None:
    """JSON carries meta, per-kind counts and findings; CSV one row per field, formulas neutralised."""
    body = json.loads(render(findings(), META, "json"))
    assert body["summary"]["field_mismatch"] == 1 and body["summary"] == summary(findings())
    assert body["findings"][0]["fields"]["last_name"] == {"expected": "Right", "oncall": EVIL}
    rows = list(csv.reader(io.StringIO(render(findings(), META, "csv"))))
    assert rows[0][:5] == ["kind", "subject", "emr_id", "oncall_url", "field"]
    assert len(rows) == 4
    formula = Finding(
        FindingKind.FIELD_MISMATCH, "patient X", "d", "k", fields={"first_name": ("=1+1", "@x")}
    )
    row = list(csv.reader(io.StringIO(render([formula], META, "csv"))))[1]
    assert row[5:7] == ["'=1+1", "'@x"]


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_standalone_and_escaped() -> None:
    """The HTML page has no script, no external reference, and shows hostile values as text."""
    page = render(findings(), META, "html")
    parser = _Collect()
    parser.feed(page)
    assert "script" not in parser.tags
    assert not [v for k, v in parser.attrs if k in ("src", "href")]
    assert EVIL in "".join(parser.text)
    assert "Contains patient data" in page


@given(st.text(max_size=40))
def test_html_escapes_any_text(value: str) -> None:
    """Whatever a patient record holds, it never opens a tag in the page."""
    finding = Finding(FindingKind.FIELD_MISMATCH, value, value, "k", fields={"email": (value, value)})
    parser = _Collect()
    parser.feed(render([finding], META, "html"))
    assert set(parser.tags) <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "p",
        "strong",
        "table",
        "thead",
        "tr",
        "th",
        "tbody",
        "td",
        "code",
        "br",
    }


def test_plan_groups_by_ordering_key_and_dedups_ops() -> None:
    """Fixable findings of one ordering key become one RECONCILE envelope; manual ones none."""
    plan = plan_fixes([*findings(), findings()[0]], run="r1")
    assert [(e.source, e.kind, e.ordering_key, e.dedup_key) for e in plan.envelopes] == [
        (Source.RECONCILE, "reconcile", "patient:P7", "reconcile:r1:patient:P7")
    ]
    ops = json.loads(plan.envelopes[0].payload)
    assert [op["kind"] for op in ops] == ["contact_patch", "xref_link"]
    assert plan.operations == 2 and "patient P7" in plan.describe()
    assert plan_fixes([findings()[1]]).describe() == "nothing to fix\n"


def test_parse_operations_mixes_kinds_and_names_the_bad_one() -> None:
    """Reconcile kinds and mapping kinds parse; a bad item is an InputError with its index."""
    upsert = {"kind": "contact_upsert", "emr_patient_id": "P1", "first_name": "A", "last_name": "B"}
    ops = parse_operations(json.dumps([PATCH, upsert]))
    assert isinstance(ops[0], ContactPatch) and isinstance(ops[1], ContactUpsert)
    with pytest.raises(InputError, match=r"\[1\] \(contact_patch\)"):
        parse_operations(json.dumps([upsert, {"kind": "contact_patch"}]))
    with pytest.raises(InputError, match="JSON list"):
        parse_operations(b'{"kind": "x"}')
    with pytest.raises(InputError, match="not JSON"):
        parse_operations(b"\xff")


class _Inner:
    version = "inner-1"

    def map(self, kind: str, payload: str | bytes, *, source: str) -> str:
        return f"inner:{source}:{kind}"


def test_mapping_wrapper_takes_reconcile_payloads_only() -> None:
    """RECONCILE envelopes map to their own operations; every other source reaches the configured set."""
    mappings = with_reconcile(_Inner)()
    assert isinstance(mappings, ReconcileMappings) and mappings.version == "inner-1"
    result = mappings.map("reconcile", json.dumps([PATCH]).encode(), source=Source.RECONCILE.value)
    assert result.route == "reconcile" and [op.kind for op in result.operations] == ["contact_patch"]
    assert mappings.map("ADT^A08", b"MSH|", source="mllp") == "inner:mllp:ADT^A08"
