"""cxrgen.data.mimic: report sections from MIMIC-CXR's free text, views, paths, the tables."""

from __future__ import annotations

import gzip

import pytest

from cxrgen.data import mimic
from cxrgen.errors import BadInput

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.

 NOTIFICATION:  The findings were discussed with Dr. ___ at 10:15.
"""


def test_sections_of_a_typical_report():
    sections = mimic.parse_sections(REPORT)
    assert sections == {
        "COMPARISON": "None.",
        "INDICATION": "___F with new onset ascites // eval for infection",
        "FINDINGS": "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular "
                    "opacities that most likely represent nipple shadows.",
        "IMPRESSION": "No acute cardiopulmonary process.",   # ends at the NOTIFICATION: heading
    }


def test_a_report_without_findings_keeps_null():
    sections = mimic.parse_sections(" FINAL REPORT\n EXAMINATION: CHEST\n\n IMPRESSION:\n\n Clear lungs.\n")
    assert sections["FINDINGS"] is None and sections["IMPRESSION"] == "Clear lungs."
    assert mimic.parse_sections("no headings at all") == dict.fromkeys(mimic.REPORT_SECTIONS)


def test_headings_in_any_case_start_a_section_only_capitals_end_one():
    text = "Findings: Heart size normal.\nNote: lines unchanged.\nImpression: Nothing acute.\nRECOMMENDATION(S): CT."
    sections = mimic.parse_sections(text)
    # "Note:" is not a heading in capitals, so it stays in the findings; "Impression:" starts its section
    # but only an ALL-CAPS heading ends one.
    assert sections["FINDINGS"] == "Heart size normal. Note: lines unchanged. Impression: Nothing acute."
    assert sections["IMPRESSION"] == "Nothing acute."


def test_empty_and_repeated_sections():
    text = " FINDINGS:\n\n IMPRESSION:  First.\n\n ADDENDUM:  x\n IMPRESSION:  Second.\n"
    sections = mimic.parse_sections(text)
    assert sections["FINDINGS"] is None            # a heading with nothing under it
    assert sections["IMPRESSION"] == "First."      # the first non-empty one is kept
    combined = mimic.parse_sections(" FINDINGS AND IMPRESSION:  Normal chest.\n")
    assert combined["FINDINGS"] is None and combined["IMPRESSION"] is None   # another heading, not taken


def test_colons_inside_a_line_are_not_headings():
    sections = mimic.parse_sections(" FINDINGS:  Compared to the study at 10:15, the tube ratio 1:2 is unchanged.\n")
    assert sections["FINDINGS"] == "Compared to the study at 10:15, the tube ratio 1:2 is unchanged."


@pytest.mark.parametrize("view, projection", [
    ("PA", "frontal"), ("AP", "frontal"), ("LATERAL", "lateral"), ("LL", "lateral"), (" pa ", "frontal"),
    ("", None), (None, None), ("LAO", None), ("SWIMMERS", None), ("AP AXIAL", None),
])
def test_projection_from_view_position(view, projection):
    assert mimic.projection(view) == projection


def test_paths_and_names():
    assert mimic.image_path("10000032", "50414267", "02aa804e") == "files/p10/p10000032/s50414267/02aa804e.jpg"
    assert mimic.report_path("10000032", "50414267") == "files/p10/p10000032/s50414267.txt"
    assert mimic.REPORT_PATH.fullmatch("files/p10/p10000032/s50414267.txt")
    assert not mimic.REPORT_PATH.fullmatch("files/p10/../p10000032/s50414267.txt")
    assert mimic.table_name("mimic-cxr-2.0.0-split.csv.gz") == mimic.SPLIT_TABLE
    assert mimic.table_name("mimic-cxr-2.0.0-metadata.csv") == mimic.METADATA_TABLE
    assert mimic.table_name("other.csv") is None


def test_read_table_plain_or_gzipped_and_its_refusals():
    data = b"dicom_id,study_id,subject_id,split\nd1,5,1,train\n"
    assert mimic.read_table(data, "x", mimic.SPLIT_TABLE) == mimic.read_table(
        gzip.compress(data), "x", mimic.SPLIT_TABLE) == [{"dicom_id": "d1", "study_id": "5", "subject_id": "1",
                                                         "split": "train"}]
    with pytest.raises(BadInput, match="x: not the MIMIC-CXR table .*no column.*split"):
        mimic.read_table(b"dicom_id,study_id,subject_id\n", "x", mimic.SPLIT_TABLE)
    with pytest.raises(BadInput, match="not a readable CSV"):
        mimic.read_table(b"\x1f\x8bnot gzip", "x", mimic.SPLIT_TABLE)
    with pytest.raises(BadInput, match="decompressed"):
        mimic.read_table(gzip.compress(data * 100), "x", mimic.SPLIT_TABLE, limit=200)


def test_images_root(tmp_path):
    (tmp_path / "a.csv").write_text("")
    assert mimic.images_root(str(tmp_path)) == tmp_path.resolve()
    assert mimic.images_root(str(tmp_path / "a.csv")) == tmp_path.resolve()
    with pytest.raises(BadInput, match="params.yaml: download.local.path is not set"):
        mimic.images_root(None)
    with pytest.raises(BadInput, match="does not exist"):
        mimic.images_root(str(tmp_path / "gone"))
