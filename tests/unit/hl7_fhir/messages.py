"""HL7 v2 test messages (\\n between segments, as people write them; the parser normalizes)."""

from __future__ import annotations


def oru(control_id: str, platelets: str = "150", unit: str = "10*3/uL", inr: str = "2.5") -> str:
    """ORU^R01 with platelets, INR, one analyte radfusion does not use, and a smoking status."""
    return (
        f"MSH|^~\\&|LAB|HOSP|RADFUSION|RAD|20261120103000||ORU^R01^ORU_R01|{control_id}|P|2.5.1\n"
        "PID|1||12345^^^HOSP&1.2.3&ISO^MR~999^^^SSA^SS||Doe^Jane||19500101|F\n"
        "OBR|1|PL1|FL1|57021-8^CBC^LN|||20261120100000\n"
        f"OBX|1|NM|777-3^Platelets^LN||{platelets}|{unit}|150-400|N|||F|||20261120100000\n"
        f"OBX|2|NM|6301-6^INR^LN||{inr}|{{INR}}|0.8-1.2|H|||F|||202611201000+0100\n"
        "OBX|3|NM|789-8^RBC^LN||4.5|10*6/uL|||||F\n"
        "OBX|4|CWE|72166-2^Tobacco smoking status^LN||449868002^Current every day smoker^SCT||||||F\n"
    )


def adt(control_id: str, event: str = "A08", ack_modes: str = "") -> str:
    """ADT^<event> with two identifiers, birth date and sex."""
    return (
        f"MSH|^~\\&|ADT|HOSP|RADFUSION|RAD|20261120103000||ADT^{event}|{control_id}|P|2.3{ack_modes}\n"
        "EVN|A08|20261120103000\n"
        "PID|1||12345^^^HOSP^MR||Doe^Jane||19500101|F\n"
    )


def orm(control_id: str) -> str:
    """ORM^O01 for a head CT with accession (OBR-18) and reason for exam (OBR-31)."""
    obr = ["OBR", "1", "PL9", "FL9", "CTHEAD^CT Head without contrast"] + [""] * 27
    obr[18] = "ACC123"
    obr[31] = "^Fall from ladder, on warfarin"
    return (
        f"MSH|^~\\&|RIS|HOSP|RADFUSION|RAD|20261120103000||ORM^O01|{control_id}|P|2.5\n"
        "PID|1||12345^^^HOSP^MR\n"
        "ORC|NW|PL9|FL9\n"
        + "|".join(obr) + "\n"
    )
