"""What radfusion does with each inbound HL7 message: parse, drop duplicates, store, acknowledge.

The application provides the callbacks (database writes, each one transaction that also
records the message's control id), so nothing is half-stored: a callback that raises
leaves the database as it was and the sender gets an AE naming the error, and will resend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from hl7_fhir.hl7v2 import (
    ADT_TYPES,
    ERR_APPLICATION_INTERNAL,
    LAB_TYPES,
    MERGE_TYPES,
    Demographics,
    Header,
    Hl7MessageError,
    LabReport,
    Merge,
    Order,
    ParsedMessage,
    build_ack,
    content_digest,
    parse,
    parse_demographics,
    parse_labs,
    parse_merges,
    parse_orders,
    read_header,
)
from hl7_fhir.errors import AlreadyStored
from hl7_fhir.mllp import MllpReply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hl7Inbox:
    """Message-processing policy behind an MllpServer (``server = MllpServer(host, port, inbox.handle)``).

    ``seen(header)`` says whether that message of that sender (control id, ``Header.sender``, and content:
    ``Header.digest``) was already stored (a store callback raises AlreadyStored when another connection stored
    it meanwhile); ``on_labs`` (returns how many stored values each of the message's retractions removed),
    ``on_demographics``, ``on_order`` and ``on_merge`` (patient merges:
    what was stored under a prior identifier moves to the surviving one) store one message's content
    and its (control id, sender) in one transaction. ``on_rejected(header, ack_code, reason)`` records a
    message answered AE or AR (header None for a frame without a readable MSH); the reason names no
    patient data.
    """

    seen: Callable[[Header], bool]
    on_labs: Callable[[Header, LabReport], list[int]]
    on_demographics: Callable[[Header, Demographics], None]
    on_order: Callable[[Header, list[Order]], None]
    on_merge: Callable[[Header, list[Merge]], None]
    on_rejected: Callable[[Header | None, str, str], None] = lambda header, code, reason: None
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)

    def handle(self, text: str) -> MllpReply:
        """The reply to one message; never raises (every failure becomes an AE/AR ACK)."""
        try:
            header = read_header(text)
        except Hl7MessageError as exc:
            log.warning("HL7 frame without a readable MSH rejected: %s", exc)
            self._rejected(None, exc.ack_code, str(exc))
            return MllpReply(build_ack(Header("", "", "", "", "", "RADFUSION", "", "", ""), exc.ack_code,
                                       str(exc), hl7_error=exc.hl7_error))
        try:
            parsed = parse(text)
            header = replace(header, digest=content_digest(text))
            parsed = replace(parsed, header=header)
            if self.seen(header):
                raise AlreadyStored(header.control_id)
            summary, warnings = self._store(parsed)
        except AlreadyStored:  # seen before, or stored meanwhile by another connection (its store raised this)
            log.info("HL7 %s %s from %s is a duplicate, ignored", header.message_type, header.control_id,
                     header.sender)
            return self._ack(header, "AA", f"duplicate message control id {header.control_id}, ignored")
        except Hl7MessageError as exc:
            log.warning("HL7 %s %s from %s answered %s: %s", header.message_type, header.control_id,
                        header.sending_facility, exc.ack_code, exc)
            self._rejected(header, exc.ack_code, str(exc))
            return self._ack(header, exc.ack_code, str(exc), exc.hl7_error)
        except Exception as exc:  # the app's store failed: its transaction rolled back, the sender resends
            log.exception("HL7 %s %s: storing failed", header.message_type, header.control_id)
            self._rejected(header, "AE", f"storing failed: {type(exc).__name__}")
            return self._ack(header, "AE", f"storing failed: {type(exc).__name__}: {exc}", ERR_APPLICATION_INTERNAL)
        log.info("HL7 %s %s from %s: %s", header.message_type, header.control_id, header.sending_facility, summary)
        return self._ack(header, "AA", summary, warnings=warnings)

    def _store(self, parsed: ParsedMessage) -> tuple[str, list[str]]:
        """Hand the message's content to its callback; returns the ACK text and what was left out of it."""
        header = parsed.header
        if header.message_type in LAB_TYPES:
            report = parse_labs(parsed, received_at=self.clock())
            removals = self.on_labs(header, report)
            removed = sum(removals)
            skipped = (f"; {len(report.skipped_codes)} OBX with codes radfusion does not use"
                       if report.skipped_codes else "")
            unusable = f"; not used: {'; '.join(report.unusable)}" if report.unusable else ""
            deleted = (f"; {len(report.deleted)} taken back, {removed} stored value{'s' * (removed != 1)} removed"
                       if report.deleted else "")
            stored = len(report.values) + len(report.coded)
            missed = removals.count(0)
            unmatched = ([f"no stored value matched {missed} of the {len(report.deleted)} result(s) taken back: sent "
                          "by another system (MSH-3/4) or under another order number than the original?"]
                         if missed else [])
            if unmatched:
                log.warning("HL7 %s from %s: %s", header.control_id, header.sending_facility, unmatched[0])
            return f"stored {stored} values{deleted}{skipped}{unusable}", [*report.unusable, *unmatched]
        if header.message_type in ADT_TYPES:
            self.on_demographics(header, parse_demographics(parsed))
            return "stored demographics", []
        if header.message_type in MERGE_TYPES:
            merges = parse_merges(parsed)
            self.on_merge(header, merges)
            return f"merged {len(merges)} patient record(s)", []
        orders = parse_orders(parsed)
        self.on_order(header, orders)
        return f"stored {len(orders)} order(s)", []

    def refused(self, text: str, code: str, reason: str) -> None:
        """A message the MLLP layer refused before it could be handled (``MllpServer.on_refused``): recorded like
        any rejection, under its header when the start of it can be read."""
        try:
            header: Header | None = read_header(text)
        except Hl7MessageError:
            header = None
        self._rejected(header, code, reason)

    def _rejected(self, header: Header | None, code: str, reason: str) -> None:
        """Tell ``on_rejected``; its own failure (the database down) must not cost the sender its ACK."""
        try:
            self.on_rejected(header, code, reason)
        except Exception:  # noqa: BLE001 - logged; the ACK still goes out
            log.exception("recording the rejection of an HL7 message failed")

    @staticmethod
    def _ack(header: Header, code: str, text: str, hl7_error: str = ERR_APPLICATION_INTERNAL,
             warnings: Sequence[str] = ()) -> MllpReply:
        return MllpReply(build_ack(header, code, text, hl7_error=hl7_error, warnings=warnings))
