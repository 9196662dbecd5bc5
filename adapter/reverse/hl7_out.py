"""HL7 v2.5 messages for the EMR, built with hl7apy: ADT^A04/A08 (a patient) and SIU^S12/S14/S15
(an appointment with its patients).

hl7apy knows each version's structures (which segments and groups a message has, each field's
data type) and escapes every value it is given (``^``, ``|``, ``&``, ``~``, ``\\``), so a name like
``O'Brien^Smith`` cannot break the message. Built messages are rare (one per OnCall change), so
its cost (~15 ms) is paid where its knowledge is worth it; the ACK is read with the light ER7 reader.

Identifiers: PID-3 carries the OnCall id with assigning authority ``ONCALL&<system URL>&URI``
(the system names the collection, participants or contacts), plus the EMR's own id (type MR) when
it is known. SCH-2 (filler appointment id) is the OnCall appointment id.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from hl7apy.core import Message, Segment

from adapter.hl7.ack import hl7_timestamp
from adapter.hl7.er7 import escape
from adapter.oncall.urls import object_id
from adapter.reverse.bundle import BundleBuilder
from adapter.reverse.operations import EMRAppointmentUpsert, EMRPatient

__all__ = ["HL7Builder", "MessageHeader", "siu_trigger"]

VERSION = "2.5"
_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
# FHIR appointment status -> SCH-25 filler status (HL7 table 0278)
_FILLER_STATUS = {"booked": "Booked", "cancelled": "Cancelled", "fulfilled": "Complete", "noshow": "Noshow",
                  "pending": "Pending", "proposed": "Pending", "waitlist": "Waitlist", "arrived": "Started",
                  "checked-in": "Started", "entered-in-error": "Deleted"}
_EVENT_TEXT = {"S12": "New appointment", "S14": "Modification", "S15": "Cancellation"}


def siu_trigger(op: EMRAppointmentUpsert, *, known: bool) -> Literal["S12", "S14", "S15"]:
    """S15 for a cancelled appointment, S12 the first time the EMR hears of it, S14 after."""
    if op.status == "cancelled":
        return "S15"
    return "S14" if known else "S12"


def _t(value: str) -> str:
    """Free text escaped for ER7 here: hl7apy escapes ``^ | ~ \\`` but not ``&`` (it splits on it), and
    leaves text that already is an escape sequence as it is, so pre-escaped text comes out once."""
    return escape(value)


@dataclass(frozen=True, slots=True)
class MessageHeader:
    sending_application: str = "ONCALL-ADAPTER"
    sending_facility: str = "ONCALL"
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"


class HL7Builder:
    def __init__(self, bundles: BundleBuilder, *, header: MessageHeader | None = None,
                 emr_id_authority: str | None = None) -> None:
        self.bundles = bundles               # for the identifier systems derived from the OnCall base
        self.header = header or MessageHeader()
        self.emr_id_authority = emr_id_authority

    def adt(self, patient: EMRPatient, *, trigger: Literal["A04", "A08"], control_id: str,
            now: dt.datetime) -> str:
        msg = Message("ADT_A01", version=VERSION)   # A04 and A08 share the ADT_A01 structure
        self._msh(msg, f"ADT^{trigger}^ADT_A01", control_id, now)
        msg.evn.evn_1 = trigger
        msg.evn.evn_2 = hl7_timestamp(now)
        self._pid(msg.pid, patient, 1)
        msg.pv1.pv1_1 = "1"
        msg.pv1.pv1_2 = "N"    # not applicable: a registration, not a visit
        return msg.to_er7()

    def siu(self, op: EMRAppointmentUpsert, *, trigger: Literal["S12", "S14", "S15"], control_id: str,
            now: dt.datetime, placer_id: str | None = None) -> str:
        structure = f"SIU_{trigger}"
        msg = Message(structure, version=VERSION)
        self._msh(msg, f"SIU^{trigger}^SIU_S12", control_id, now)
        sch = msg.sch
        if placer_id:
            sch.sch_1.ei_1 = _t(placer_id)
        sch.sch_2.ei_1 = str(object_id(op.oncall_url))
        sch.sch_2.ei_2 = "ONCALL"
        sch.sch_6.ce_1 = trigger
        sch.sch_6.ce_2 = _EVENT_TEXT[trigger]
        if op.description:
            sch.sch_7.ce_2 = _t(op.description)
        if op.appointment_type:
            sch.sch_8.ce_1 = _t(op.appointment_type)
        if op.minutes_duration:
            sch.sch_9 = str(op.minutes_duration)
            sch.sch_10.ce_1 = "min"
        if op.start is not None and op.end is not None:
            tq = sch.add_field("SCH_11")
            tq.tq_4.ts_1 = hl7_timestamp(op.start)
            tq.tq_5.ts_1 = hl7_timestamp(op.end)
        # SCH-16 (filler contact) and SCH-20 (entered by) are required in 2.5: the change came from OnCall
        sch.sch_16.xcn_1 = _t(self.header.sending_application)
        sch.sch_20.xcn_1 = _t(self.header.sending_application)
        sch.sch_25.ce_1 = _FILLER_STATUS[op.status]
        for index, patient in enumerate(op.participants, start=1):
            group = msg.add_group(f"{structure}_PATIENT")
            self._pid(group.pid, patient, index)
            if patient.participation_cancelled:
                group.pv1.pv1_2 = "N"
                group.pv1.pv1_41 = "Cancelled"
        resources = msg.add_group(f"{structure}_RESOURCES")
        resources.rgs.rgs_1 = "1"
        return msg.to_er7()

    # -- segments -------------------------------------------------------------------------------
    def _msh(self, msg: Message, message_type: str, control_id: str, now: dt.datetime) -> None:
        h = self.header
        msh = msg.msh
        msh.msh_3.hd_1 = _t(h.sending_application)
        msh.msh_4.hd_1 = _t(h.sending_facility)
        if h.receiving_application:
            msh.msh_5.hd_1 = _t(h.receiving_application)
        if h.receiving_facility:
            msh.msh_6.hd_1 = _t(h.receiving_facility)
        msh.msh_7 = hl7_timestamp(now)
        code, trigger, structure = message_type.split("^")
        msh.msh_9.msg_1 = code
        msh.msh_9.msg_2 = trigger
        msh.msh_9.msg_3 = structure
        msh.msh_10 = _t(control_id)
        msh.msh_11.pt_1 = h.processing_id
        msh.msh_12.vid_1 = VERSION
        msh.msh_15 = "AL"      # ask for an accept ACK: the sender waits for it on the held connection
        msh.msh_16 = "NE"
        msh.msh_18 = "UNICODE UTF-8"

    def _pid(self, pid: Segment, p: EMRPatient, set_id: int) -> None:
        pid.pid_1 = str(set_id)
        ident = self.bundles.identifier(p.oncall_url)
        cx = pid.add_field("PID_3")
        cx.cx_1 = _t(ident["value"])
        cx.cx_4.hd_1 = "ONCALL"
        cx.cx_4.hd_2 = _t(ident["system"])
        cx.cx_4.hd_3 = "URI"
        cx.cx_5 = "PI"
        if p.emr_patient_id:
            emr = pid.add_field("PID_3")
            emr.cx_1 = _t(p.emr_patient_id)
            if self.emr_id_authority:
                emr.cx_4.hd_1 = _t(self.emr_id_authority)
            emr.cx_5 = "MR"
        name = pid.pid_5
        if p.last_name:
            name.xpn_1.fn_1 = _t(p.last_name)
        elif p.name:
            name.xpn_1.fn_1 = _t(p.name)
        if p.first_name:
            name.xpn_2 = _t(p.first_name)
        if p.birth_date:
            pid.pid_7.ts_1 = p.birth_date.strftime("%Y%m%d")
        if p.gender:
            pid.pid_8 = _SEX[p.gender]
        if p.phone:
            tel = pid.add_field("PID_13")
            tel.xtn_2 = "PRN"
            tel.xtn_3 = "PH"
            tel.xtn_12 = _t(p.phone)
        if p.email:
            mail = pid.add_field("PID_13")
            mail.xtn_2 = "NET"
            mail.xtn_3 = "Internet"
            mail.xtn_4 = _t(p.email)
