"""extract: XML parsing (original and reconstructed layouts), PNG headers, the projection rule."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from hostile_inputs import (
    HOSTILE_XML,
    external_entity,
    external_parameter_entity,
    internal_entity,
    png_bytes,
    report_xml,
    write_tgz,
)

from cxrgen.data.extract import (
    EXTRACT_DEFAULTS,
    FRONTAL,
    LATERAL,
    extract,
    kaggle_image_id,
    parse_report_xml,
    png_size,
    projection_accuracy,
    read_projections_csv,
)
from cxrgen.errors import Unusable

ORIGINAL_LAYOUT = b"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <meta type="rr"/>
  <uId id="CXR1"/>
  <pmcId id="1"/>
  <docSource>CXR</docSource>
  <IUXRId id="1"/>
  <licenseType>open-access</licenseType>
  <publisher>Indiana University</publisher>
  <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
    <Article PubModel="Electronic">
      <Journal><JournalIssue><PubDate><Year>2013</Year></PubDate></JournalIssue></Journal>
      <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
      <Abstract>
        <AbstractText Label="COMPARISON">None.</AbstractText>
        <AbstractText Label="INDICATION">Positive TB test</AbstractText>
        <AbstractText Label="FINDINGS">The cardiac silhouette and mediastinum size are within normal limits.
          There is no pulmonary edema.</AbstractText>
        <AbstractText Label="IMPRESSION">Normal chest x-XXXX.</AbstractText>
      </Abstract>
    </Article>
  </MedlineCitation>
  <MeSH><major>normal</major><automatic>something</automatic></MeSH>
  <parentImage id="CXR1_1_IM-0001-3001">
    <figureId>F1</figureId><caption>Xray Chest PA and Lateral</caption>
    <panel type="single"><url>/hadoop/storage/radiology/extract/CXR1_1_IM-0001-3001.jpg</url></panel>
  </parentImage>
  <parentImage id="CXR1_1_IM-0001-4001">
    <figureId>F2</figureId><caption>Xray Chest PA and Lateral</caption>
    <panel type="single"><url>/hadoop/storage/radiology/extract/CXR1_1_IM-0001-4001.jpg</url></panel>
  </parentImage>
</eCitation>
"""


def test_original_layout_parses():
    row = parse_report_xml(ORIGINAL_LAYOUT, "1.xml")
    assert row["report_id"] == "CXR1"
    assert row["comparison"] == "None."
    assert row["indication"] == "Positive TB test"
    assert row["findings"] == (
        "The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema."
    )
    assert row["impression"] == "Normal chest x-XXXX."
    assert row["mesh_major"] == ["normal"]
    assert row["image_ids"] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
    assert row["source_file"] == "1.xml"


def test_empty_and_missing_sections_are_null():
    xml = b'<eCitation><uId id="CXR9"/><Abstract><AbstractText Label="FINDINGS"/></Abstract></eCitation>'
    row = parse_report_xml(xml, "9.xml")
    assert row["findings"] is None and row["impression"] is None and row["image_ids"] == []


@pytest.mark.parametrize("data, reason", [
    (b"<eCitation><uId id='CXR1'/>", "truncated XML"),
    (b"", "empty file"),
    (b"<eCitation><pmcId id='1'/></eCitation>", "no <uId"),
])
def test_unusable_xml_gives_a_reason(data, reason):
    with pytest.raises(ValueError, match=reason):
        parse_report_xml(data, "bad.xml")


def _norm(text: str) -> str | None:
    return " ".join(text.split()) or None


def test_every_sample_report_matches_the_kaggle_csv(shared_sample: Path):
    """All 63 reconstructed XML files against the same reports in the Kaggle CSV layout."""
    expected = {row["uid"]: row for row in csv.DictReader(open(shared_sample / "indiana_reports_sample.csv"))}
    projections = list(csv.DictReader(open(shared_sample / "indiana_projections_sample.csv")))
    xml_files = sorted((shared_sample / "ecgen-radiology").glob("*.xml"))
    assert len(xml_files) == 63
    for path in xml_files:
        row = parse_report_xml(path.read_bytes(), path.name)
        if path.stem not in expected:  # the sample's 3 image-less reports are absent from the CSV
            assert row["image_ids"] == [] and "absent from the CSV" in path.read_text(), path.name
            continue
        csv_row = expected[path.stem]
        assert row["report_id"] == f"CXR{path.stem}"
        for section in ("comparison", "indication", "findings", "impression"):
            assert row[section] == _norm(csv_row[section]), (path.name, section)
        # MeSH terms are kept whitespace-trimmed ("Unsatisfactory " in one CSV row)
        assert row["mesh_major"] == [t.strip() for t in csv_row["MeSH"].split(";")], path.name
        kaggle_ids = sorted(kaggle_image_id(p["filename"]) for p in projections if p["uid"] == path.stem)
        assert sorted(row["image_ids"]) == kaggle_ids, path.name


def test_order_rule_accuracy_on_the_real_sample(shared_sample: Path):
    truth = read_projections_csv((shared_sample / "indiana_projections_sample.csv").read_text(), "sample")
    rows = []
    for path in sorted((shared_sample / "ecgen-radiology").glob("*.xml")):
        report = parse_report_xml(path.read_bytes(), path.name)
        rows += [{"image_id": i, "position": n} for n, i in enumerate(report["image_ids"])]
    result = projection_accuracy(pd.DataFrame(rows), truth)
    assert result["images_checked"] == len(truth) == 117
    # Measured on this sample: 102 of 117 = 0.872. The rule (first image frontal, the others
    # lateral) is wrong mostly on single-image studies, where the one image is often a lateral.
    assert result["accuracy"] >= 0.85, result


def test_projection_accuracy_counts_right_and_wrong():
    images = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "position": [0, 1, 0, 1]})
    truth = {"a": FRONTAL, "b": FRONTAL, "c": FRONTAL}
    assert projection_accuracy(images, truth) == {"images_checked": 3, "accuracy": round(2 / 3, 4)}
    assert projection_accuracy(images, {})["accuracy"] is None
    assert LATERAL == "lateral"


def test_png_size_reads_the_header(shared_sample: Path):
    data = (shared_sample / "images" / "CXR3_IM-1384-1001.png").read_bytes()
    assert png_size(data[:24]) == (512, 512)
    with pytest.raises(ValueError, match="zero-byte"):
        png_size(b"")
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(b"GIF89a" + bytes(30))


# -- hostile report files: each skipped for its own reason ----------------------------------------


@pytest.mark.parametrize("name", sorted(HOSTILE_XML))
def test_each_kind_of_bad_xml_has_its_own_reason(name):
    make, reason = HOSTILE_XML[name]
    with pytest.raises(Unusable) as info:
        parse_report_xml(make(7), f"{name}.xml")
    assert info.value.reason == reason, info.value
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("make", [external_entity, external_parameter_entity])
def test_an_external_entity_is_refused_and_its_target_never_read(tmp_path, make):
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:leaked-secret-word\n")
    with pytest.raises(Unusable) as info:
        parse_report_xml(make(8, secret), "8.xml")
    assert info.value.reason == "external entity" and "&leak;" in info.value.detail
    assert "leaked-secret-word" not in str(info.value)


def test_an_internal_entity_is_expanded():
    row = parse_report_xml(internal_entity(9, ["CXR9_IM-1"]), "9.xml")
    assert row["findings"] == "The heart is normal. No effusion."


def test_extract_names_counts_and_lists_every_skipped_report(tmp_path, capsys):
    """An archive with one report file of each bad kind: each skipped with its reason, counted,
    warned about by name, and one manifest row each; the good reports are kept."""
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:leaked-secret-word\n")
    raw = tmp_path / "raw"
    members = {f"ecgen-radiology/{n}.xml": report_xml(n, "Heart normal.", [f"CXR{n}_IM-1"]) for n in (1, 2)}
    bad = {}
    for number, name in enumerate(sorted(HOSTILE_XML), start=10):
        make, reason = HOSTILE_XML[name]
        members[f"ecgen-radiology/{number}.xml"] = make(number)
        bad[f"{number}.xml"] = f"report: {reason}"
    members["ecgen-radiology/30.xml"] = external_entity(30, secret, ["CXR30_IM-1"])
    bad["30.xml"] = "report: external entity"
    members["ecgen-radiology/31.xml"] = report_xml(31, "x" * 5000, [])
    bad["31.xml"] = "report: file too large"
    write_tgz(raw / "NLMCXR_reports.tgz", members)
    write_tgz(raw / "NLMCXR_png.tgz", {f"CXR{n}_IM-1.png": png_bytes(20, 30) for n in (1, 2, 30)})
    (raw / "source.json").write_text(json.dumps(
        {"source": "local", "layout": "nlmcxr",
         "files": {"images": "NLMCXR_png.tgz", "reports": "NLMCXR_reports.tgz"}}))

    reports, images, skipped, _ = extract(raw, {**EXTRACT_DEFAULTS, "max_xml_bytes": 4096})
    assert list(reports["report_id"]) == ["CXR1", "CXR2"]
    assert list(images["image_id"]) == ["CXR1_IM-1", "CXR2_IM-1"]
    expected = {}
    for reason in bad.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert skipped.counts() == dict(sorted(expected.items()))
    rows = {row["file"]: row for row in skipped.items}
    assert {file.split("/")[-1]: row["reason"] for file, row in rows.items()} == bad
    assert all(row["stage"] == "extract" and row["kind"] == "report" for row in rows.values())
    assert "5," in rows["NLMCXR_reports.tgz:ecgen-radiology/31.xml"]["detail"]  # its size, and the bound
    err = capsys.readouterr().err
    for file, reason in bad.items():
        assert f"ecgen-radiology/{file}: {reason}" in err
    assert "leaked-secret-word" not in err + reports.to_json()
