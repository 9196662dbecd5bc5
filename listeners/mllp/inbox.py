"""The one-method seam between the MLLP connection loop and the store: `Inbox.accept(frame, peer)`.

`MessageHandler` is the inbox the adapter runs: it reads MSH and the ordering key cheaply
(`adapter.hl7.intake`), asks the mapping engine whether the kind is routed (`accepts`), appends one
envelope and only then builds the ACK. Refusals are values, not exceptions:

- AA/CA once the envelope is committed (a duplicate delivery is answered AA again, stored once);
- AE/CE with ERR when the message cannot be used (no MSH-10, unknown MSH-18, bytes invalid in the
  charset, PID without identifier); AR/CR for kinds the mappings do not route and oversized messages;
- AE (ERR code 205) when the same MSH-10 comes back with other content: the store keeps it QUARANTINED
  and it is never applied, so answering AA would tell the sender a lie; AE makes the defect visible
  on its side, and the sender should resend corrections under a new control id.

Every refused message is stored too, REJECTED with its reason, under its own dedup key
(``mllp-rejected:...`` + content hash) so a refusal never shadows a later good delivery of the same
control id (e.g. once the mapping for its kind is loaded).

When nothing could be stored, `accept` raises (StoreError): the listener then closes the connection
without any ACK. An AE would tell many engines to stop resending (and park the message on their
side); a missing ACK makes every engine resend after reconnecting, and the dedup key absorbs the
repeat if the commit did happen after all.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from adapter import metrics
from adapter.envelope import Appended, AppendOutcome, NewEnvelope, Source, State, content_hash
from adapter.errors import HL7InputError
from adapter.hl7.ack import AckError, Verdict, ack_code, build_ack, hl7_timestamp, wants_ack
from adapter.hl7.intake import Header, Intake, PatientIdPolicy, key_hash, read_header, read_intake
from listeners.mllp.framing import Frame

__all__ = ["Accepts", "Appender", "Inbox", "MessageHandler", "Reply", "accept_all"]

log = structlog.get_logger(__name__)

Accepts = Callable[[str], str | None]
"""`accepts(kind)` -> None when the mappings route this kind, else the reason it is refused."""


def accept_all(kind: str) -> str | None:
    return None


# What a filtering bound logger's filtered-out methods are (structlog makes them one shared no-op).
_FILTERED = structlog.make_filtering_bound_logger(logging.CRITICAL).debug


def _debug_logged() -> bool:
    """Whether `log.debug` would write anything, asked of the configuration: with loggers not cached
    (adapter.logging), each `log.debug` call first builds a logger, ~3 us per message for nothing."""
    return structlog.get_config()["wrapper_class"].debug is not _FILTERED


@dataclass(frozen=True, slots=True)
class Reply:
    ack: bytes | None            # the ACK to send, unframed; None: send nothing (enhanced NE/ER/SU)
    close: bool = False          # close the connection afterwards (the stream cannot be answered)


class Inbox(Protocol):
    async def accept(self, frame: Frame, peer: str) -> Reply:
        """Store, then say what to answer. Raises when nothing could be stored (no answer then)."""
        ...


class Appender(Protocol):
    """The part of the store the listener needs (any `Store`)."""

    async def append(self, new: NewEnvelope) -> Appended: ...


class MessageHandler:
    """The adapter's inbox: intake, routing check, append, ACK."""

    def __init__(self, store: Appender, accepts: Accepts = accept_all, *,
                 patient_ids: PatientIdPolicy | None = None, application: str | None = None,
                 facility: str | None = None, on_stored: Callable[[], None] | None = None) -> None:
        self._store = store
        self._on_stored = on_stored          # e.g. WorkerPool.wake: claim now, not at the next poll
        self._accepts = accepts
        self._policy = patient_ids or PatientIdPolicy()
        self._application = application      # the ACK's MSH-3/4; default: the message's MSH-5/6
        self._facility = facility
        self._ack_prefix = f"OA{int(time.time()) & 0xFFFFFFFF:08X}"   # ACK control ids: <= 20 chars
        self._ack_seq = itertools.count(1)

    async def accept(self, frame: Frame, peer: str) -> Reply:
        raw = frame.payload
        try:
            header = read_header(raw)
        except HL7InputError as exc:
            return await self._unreadable(frame, exc, peer)
        if frame.oversized:
            error = AckError("104", f"message is {frame.size} bytes, over the listener's limit; "
                                    "split it or raise mllp.max_message_bytes")
            return await self._refuse(header, raw, Verdict.REJECTED, error, peer,
                                      extra={"truncated_from": str(frame.size)})
        try:
            intake = read_intake(header, raw, self._policy)
        except HL7InputError as exc:
            return await self._refuse(header, raw, Verdict.ERROR, AckError.from_exception(exc), peer)
        reason = self._accepts(intake.kind)
        if reason is not None:
            # before v2.5 the only text is MSA-3 (80 characters): do not spend it naming the kind twice
            text = reason if intake.kind in reason else f"{intake.kind} is not accepted: {reason}"
            error = AckError("200", text, "MSH^1^9")
            return await self._refuse(header, raw, Verdict.REJECTED, error, peer, intake=intake)
        appended = await self._append(NewEnvelope(
            Source.MLLP, intake.kind, intake.ordering_key, intake.dedup_key, intake.payload,
            meta={**intake.meta, "peer": peer}))
        if appended.outcome is AppendOutcome.STORED and self._on_stored is not None:
            self._on_stored()
        verdict = Verdict.ACCEPTED
        conflict: AckError | None = None
        if appended.outcome is AppendOutcome.CONFLICT:
            verdict = Verdict.ERROR
            conflict = AckError("205", "this MSH-10 was already received with other content; this one is "
                                    "kept in quarantine and not applied (resend changes under a new "
                                    "control id)", "MSH^1^10")
        reply, code = self._answer(header, verdict, conflict)
        if _debug_logged():
            log.debug("mllp_message", envelope_id=appended.envelope.id, outcome=appended.outcome.value,
                      kind=intake.kind, control_id=header.control_id, ack_code=code, peer=peer,
                      ordering_key_hash=intake.meta["key_hash"])
        if conflict is not None:
            log.warning("mllp_control_id_conflict", envelope_id=appended.envelope.id, kind=intake.kind,
                        control_id=header.control_id, peer=peer)
        return reply

    async def _append(self, new: NewEnvelope) -> Appended:
        appended = await self._store.append(new)
        metrics.count_appended(appended)
        return appended

    # -- refusals (stored REJECTED, then answered) --------------------------------------------------
    async def _refuse(self, header: Header, raw: bytes, verdict: Verdict, error: AckError, peer: str,
                      *, intake: Intake | None = None, extra: dict[str, str] | None = None) -> Reply:
        control_id = header.control_id
        ordering_key = intake.ordering_key if intake else f"control:{header.sender}|{control_id}"
        meta = dict(intake.meta) if intake else {"control_id": control_id, "sender": header.sender,
                                                   "key_hash": key_hash(ordering_key)}
        meta.update(extra or {}, peer=peer, error_code=error.code, location=error.location or "")
        appended = await self._append(NewEnvelope(
            Source.MLLP, header.kind or "unknown", ordering_key,
            f"mllp-rejected:{header.sender}|{control_id}|{content_hash(raw)[:16]}", raw,
            meta=meta, state=State.REJECTED, reason=error.text))
        reply, code = self._answer(header, verdict, error)
        log.info("mllp_message_refused", envelope_id=appended.envelope.id, kind=header.kind,
                 control_id=control_id, ack_code=code, reason_code=error.code, location=error.location,
                 peer=peer, size=len(raw))
        return reply

    async def _unreadable(self, frame: Frame, exc: HL7InputError, peer: str) -> Reply:
        """No usable MSH: stored REJECTED; AE in default delimiters, or close if it was oversized."""
        raw = frame.payload
        digest = content_hash(raw)
        appended = await self._append(NewEnvelope(
            Source.MLLP, "unreadable", f"unreadable:{digest[:16]}", f"mllp-rejected:unreadable|{digest}",
            raw, meta={"peer": peer, "error_code": exc.code, "truncated_from": str(frame.size)},
            state=State.REJECTED, reason=str(exc)))
        log.warning("mllp_message_unreadable", envelope_id=appended.envelope.id, reason_code=exc.code,
                    location=exc.location, peer=peer, size=frame.size, oversized=frame.oversized)
        if frame.oversized:
            return Reply(None, close=True)
        text = build_ack(None, "AE", control_id=self._next_control_id(), timestamp=hl7_timestamp(),
                         error=AckError.from_exception(exc))
        return Reply(text.encode("latin-1", errors="replace"))

    def _answer(self, header: Header, verdict: Verdict, error: AckError | None) -> tuple[Reply, str]:
        enhanced = header.enhanced
        code = ack_code(verdict, enhanced=enhanced)
        if not wants_ack(verdict, enhanced=enhanced, accept_ack_type=header.msh.field(15)):
            return Reply(None), "none"
        text = build_ack(header.msh, code, control_id=self._next_control_id(), timestamp=hl7_timestamp(),
                         error=error, charset=header.declared_charset if header.codec else None,
                         application=self._application, facility=self._facility)
        # the message's own charset; an unusable one: latin-1 echoes MSH bytes exactly as received
        return Reply(text.encode(header.codec or "latin-1", errors="replace")), code

    def _next_control_id(self) -> str:
        return f"{self._ack_prefix}{next(self._ack_seq)}"
