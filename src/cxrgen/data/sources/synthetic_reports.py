"""The text half of the synthetic source: which findings a study has, and the report that states them.

A study's findings are sampled first (about 40 % normal, the others 1-3 findings); the report is then
written from a small grammar of radiology sentences (several phrasings each, chosen by the seeded
generator). Present findings are stated plainly ("Small left pleural effusion."), absent ones are
negated the common ways ("No pleural effusion or pneumothorax."), so a CheXpert-style labeler reads
back what was sampled. `XXXX` appears only in slots that carry no finding (ages, dates, filler
words), as in the de-identified originals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIDES = ("left", "right")

# Sampling weights of the finding kinds in an abnormal study (relative).
FINDING_WEIGHTS = {
    "cardiomegaly": 0.16,
    "pleural_effusion": 0.12,
    "opacity": 0.12,
    "consolidation": 0.06,
    "atelectasis": 0.12,
    "nodule": 0.08,
    "pneumothorax": 0.05,
    "edema": 0.06,
    "support_device": 0.09,
    "degenerative_spine": 0.14,
}
FINDING_ORDER = tuple(FINDING_WEIGHTS)
DEVICES = ("pacemaker", "endotracheal_tube", "central_line", "sternotomy_wires")

# The CheXpert observation each finding is meant to make positive (degenerative spine: none).
CHEXPERT_OF = {
    "cardiomegaly": "Cardiomegaly",
    "pleural_effusion": "Pleural Effusion",
    "opacity": "Lung Opacity",
    "consolidation": "Consolidation",
    "atelectasis": "Atelectasis",
    "nodule": "Lung Lesion",
    "pneumothorax": "Pneumothorax",
    "edema": "Edema",
    "support_device": "Support Devices",
}

P_NORMAL = 0.40
N_FINDINGS_P = {1: 0.50, 2: 0.33, 3: 0.17}
P_NO_FINDINGS_SECTION = 0.12
P_NO_IMPRESSION_SECTION = 0.03
P_NO_COMPARISON = 0.20
P_NO_INDICATION = 0.03


WORDINGS = ("varied", "fixed")


class FixedWording:
    """A stand-in for the generator that writes a report: every wording choice is the same one.

    `integers` answers 0 (the first phrasing) and `random` answers 0.5 (an optional sentence is
    written when its probability is above one half). The report then is a function of the findings
    alone, which makes the image's share of the text large (a cleaner test of whether a model uses
    the image; see the README for what it does to the floors).
    """

    def integers(self, *args, **kwargs):
        return 0

    def random(self):
        return 0.5


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _pick_weighted(rng: np.random.Generator, weights: dict):
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


# ----------------------------------------------------------------------------- sampling findings


def _sample_one(kind: str, rng: np.random.Generator) -> dict:
    if kind == "cardiomegaly":
        return {"finding": kind, "severity": _pick_weighted(rng, {"mild": 0.5, "moderate": 0.3, "severe": 0.2})}
    if kind == "pleural_effusion":
        return {
            "finding": kind,
            "side": _pick_weighted(rng, {"left": 0.35, "right": 0.35, "bilateral": 0.30}),
            "severity": _pick_weighted(rng, {"small": 0.5, "moderate": 0.35, "large": 0.15}),
        }
    if kind in ("opacity", "consolidation", "nodule"):
        zone = _pick_weighted(rng, {"upper": 0.3, "mid": 0.25, "lower": 0.45})
        return {"finding": kind, "side": _pick(rng, SIDES), "zone": zone}
    if kind == "atelectasis":
        side = _pick_weighted(rng, {"left": 0.35, "right": 0.35, "bilateral": 0.30})
        return {"finding": kind, "side": side, "zone": "lower"}
    if kind == "pneumothorax":
        severity = _pick_weighted(rng, {"small": 0.6, "moderate": 0.3, "large": 0.1})
        return {"finding": kind, "side": _pick(rng, SIDES), "zone": "apical", "severity": severity}
    if kind == "edema":
        return {"finding": kind, "kind": _pick(rng, ("interstitial", "pulmonary"))}
    if kind == "support_device":
        return {"finding": kind, "device": _pick(rng, DEVICES)}
    if kind == "degenerative_spine":
        return {"finding": kind, "severity": _pick_weighted(rng, {"mild": 0.6, "moderate": 0.4})}
    raise ValueError(f"unknown finding kind {kind!r}")


def _sort_key(finding: dict) -> tuple:
    return (FINDING_ORDER.index(finding["finding"]), sorted(finding.items()))


def sample_findings(rng: np.random.Generator) -> list[dict]:
    """The findings of one study, in a canonical order; [] for a normal study."""
    if rng.random() < P_NORMAL:
        return []
    count = _pick_weighted(rng, N_FINDINGS_P)
    kinds: list[str] = []
    weights = dict(FINDING_WEIGHTS)
    for _ in range(count):
        kind = _pick_weighted(rng, weights)
        kinds.append(kind)
        del weights[kind]
    findings = [_sample_one(kind, rng) for kind in kinds]
    # Heart failure pattern: edema often comes with an enlarged heart.
    if "edema" in kinds and "cardiomegaly" not in kinds and rng.random() < 0.5:
        findings.append(_sample_one("cardiomegaly", rng))
    # A second device now and then (pacemaker patients often have sternotomy wires too).
    if "support_device" in kinds and rng.random() < 0.15:
        present = {f["device"] for f in findings if f["finding"] == "support_device"}
        other = [d for d in DEVICES if d not in present]
        findings.append({"finding": "support_device", "device": _pick(rng, other)})
    return sorted(findings, key=_sort_key)


def chexpert_positive(findings: list[dict]) -> list[str]:
    """The CheXpert observations the report is written to make positive ("No Finding" when none)."""
    observations = sorted({CHEXPERT_OF[f["finding"]] for f in findings if f["finding"] in CHEXPERT_OF})
    return observations or ["No Finding"]


# ----------------------------------------------------------------------------- sentence grammar


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _zone_phrase(side: str, zone: str, rng: np.random.Generator) -> str:
    """Where in the lung, e.g. 'right lower lobe', 'lingula', 'left lung base'."""
    if zone == "upper":
        return _pick(rng, (f"{side} upper lobe", f"{side} upper lung", f"{side} upper lung zone"))
    if zone == "mid":
        if side == "right":
            return _pick(rng, ("right middle lobe", "right mid lung", "right mid lung zone"))
        return _pick(rng, ("lingula", "left mid lung", "left mid lung zone"))
    return _pick(rng, (f"{side} lower lobe", f"{side} lung base", f"{side} lower lung zone"))


def _in_zone(side: str, zone: str, rng: np.random.Generator) -> str:
    phrase = _zone_phrase(side, zone, rng)
    preposition = "at" if phrase.endswith("base") else "in"
    return f"{preposition} the {phrase}"


def finding_sentence(f: dict, rng: np.random.Generator, short: bool = False) -> str:
    """One sentence stating finding `f`; `short` gives the terse impression style."""
    kind = f["finding"]
    if kind == "cardiomegaly":
        sev = f["severity"]
        adverb = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}[sev]
        if short:
            return _pick(rng, (f"{_cap(sev)} cardiomegaly.", "Cardiomegaly.",
                               f"{_cap(sev)} cardiomegaly without acute pulmonary disease."))
        options = [
            f"{_cap(sev)} cardiomegaly.",
            f"There is {sev} cardiomegaly.",
            f"The heart is {adverb} enlarged.",
            f"Heart size is {adverb} enlarged.",
            f"The cardiac silhouette is {adverb} enlarged.",
        ]
        if sev == "severe":
            options.append("Markedly enlarged cardiac silhouette.")
        return _pick(rng, options)
    if kind == "pleural_effusion":
        sev, side = f["severity"], f["side"]
        if side == "bilateral":
            if short:
                return _pick(rng, (f"{_cap(sev)} bilateral pleural effusions.", f"Bilateral {sev} pleural effusions."))
            return _pick(rng, (
                f"There are {sev} bilateral pleural effusions.",
                f"{_cap(sev)} bilateral pleural effusions.",
                f"Bilateral {sev} pleural effusions are present.",
            ))
        if short:
            return _pick(rng, (f"{_cap(sev)} {side} pleural effusion.", f"{_cap(sev)} {side}-sided pleural effusion."))
        options = [
            f"There is a {sev} {side} pleural effusion.",
            f"{_cap(sev)} {side} pleural effusion.",
            f"{_cap(sev)} {side} pleural effusion is present.",
            f"A {sev} {side}-sided pleural effusion is noted.",
        ]
        if sev == "small":
            options.append(f"Blunting of the {side} costophrenic angle consistent with a small pleural effusion.")
        return _pick(rng, options)
    if kind == "opacity":
        where = _in_zone(f["side"], f["zone"], rng)
        if short:
            return _cap(_zone_phrase(f["side"], f["zone"], rng)) + " opacity."
        return _pick(rng, (
            f"There is a focal airspace opacity {where}.",
            f"Patchy airspace opacity {where}.",
            f"Hazy opacity is seen {where}.",
            f"There is an ill-defined opacity {where}.",
            _cap(_zone_phrase(f["side"], f["zone"], rng)) + " opacity.",
        ))
    if kind == "consolidation":
        where = _in_zone(f["side"], f["zone"], rng)
        if short:
            return _cap(_zone_phrase(f["side"], f["zone"], rng)) + " consolidation."
        return _pick(rng, (
            f"There is focal consolidation {where}.",
            f"Dense airspace consolidation {where}.",
            f"Consolidation is present {where}.",
            _cap(_zone_phrase(f["side"], f["zone"], rng)) + " consolidation.",
        ))
    if kind == "atelectasis":
        side = f["side"]
        if side == "bilateral":
            return _pick(rng, (
                "Bibasilar atelectasis.",
                "There is mild bibasilar atelectasis.",
                "Linear atelectasis at both lung bases.",
                "Bilateral basilar atelectasis.",
            ))
        if short:
            return _pick(rng, (f"{_cap(side)} basilar atelectasis.", f"{_cap(side)} base atelectasis."))
        return _pick(rng, (
            f"{_cap(side)} basilar atelectasis.",
            f"XXXX {side} basilar atelectasis.",
            f"There is mild {side} basilar atelectasis.",
            f"Linear atelectasis at the {side} lung base.",
            f"Platelike atelectasis at the {side} base.",
        ))
    if kind == "nodule":
        where = _in_zone(f["side"], f["zone"], rng)
        if short:
            return _cap(_zone_phrase(f["side"], f["zone"], rng)) + " nodule."
        return _pick(rng, (
            f"There is a small nodule {where}.",
            f"A XXXX cm nodule is present {where}.",
            _cap(_zone_phrase(f["side"], f["zone"], rng)) + " pulmonary nodule.",
            f"Small rounded nodule projecting {where.replace('in the', 'over the').replace('at the', 'over the')}.",
        ))
    if kind == "pneumothorax":
        sev, side = f["severity"], f["side"]
        if short:
            return f"{_cap(sev)} {side} apical pneumothorax."
        return _pick(rng, (
            f"There is a {sev} {side} apical pneumothorax.",
            f"{_cap(sev)} {side} apical pneumothorax.",
            f"A {sev} {side} pneumothorax is present at the apex.",
            f"{_cap(sev)} {side} pneumothorax with a visible pleural line at the apex.",
        ))
    if kind == "edema":
        if f["kind"] == "interstitial":
            return _pick(rng, (
                "There is mild interstitial edema.",
                "Interstitial pulmonary edema.",
                "Pulmonary vascular congestion with interstitial edema.",
                "Findings consistent with interstitial edema.",
            ))
        return _pick(rng, (
            "There is pulmonary edema.",
            "Moderate pulmonary edema.",
            "Bilateral perihilar pulmonary edema.",
            "Diffuse bilateral pulmonary edema.",
        ))
    if kind == "support_device":
        device = f["device"]
        if device == "pacemaker":
            return _pick(rng, (
                "Left-sided pacemaker with lead terminating in the right ventricle.",
                "A left chest wall pacemaker is in place.",
                "Left subclavian pacemaker generator with a single lead in the right ventricle.",
                "Cardiac pacemaker in place.",
            ))
        if device == "endotracheal_tube":
            return _pick(rng, (
                "Endotracheal tube tip is XXXX cm above the carina.",
                "An endotracheal tube is in place with the tip above the carina.",
                "Endotracheal tube in satisfactory position.",
            ))
        if device == "central_line":
            return _pick(rng, (
                "Right internal jugular central venous catheter with tip in the superior vena cava.",
                "Right-sided central line with tip in the SVC.",
                "A right central venous catheter terminates in the superior vena cava.",
            ))
        return _pick(rng, (
            "Median sternotomy wires are intact.",
            "Postsurgical changes of median sternotomy with intact wires.",
            "Sternotomy wires are present.",
        ))
    if kind == "degenerative_spine":
        if f["severity"] == "mild":
            return _pick(rng, (
                "Mild degenerative changes of the thoracic spine.",
                "There are mild degenerative changes in the spine.",
                "Mild thoracic spondylosis.",
                "Minimal degenerative changes of the spine.",
            ))
        return _pick(rng, (
            "Moderate degenerative changes of the thoracic spine.",
            "Multilevel degenerative changes of the thoracic spine with osteophytes.",
            "Moderate thoracic spondylosis.",
        ))
    raise ValueError(f"unknown finding kind {kind!r}")


LUNG_FINDINGS = {"opacity", "consolidation", "atelectasis", "nodule", "edema"}


def negation_sentences(findings: list[dict], rng: np.random.Generator) -> dict[str, list[str]]:
    """Sentences for what is absent, grouped by the part of the report they belong to."""
    kinds = {f["finding"] for f in findings}
    heart: list[str] = []
    lungs: list[str] = []
    pleura: list[str] = []
    bones: list[str] = []
    if "cardiomegaly" not in kinds:
        if rng.random() < 0.4:
            heart.append(_pick(rng, (
                "The cardiomediastinal silhouette is within normal limits.",
                "The heart size and mediastinal contours are normal.",
                "Heart size and mediastinal contour are within normal limits.",
                "Normal cardiomediastinal silhouette.",
            )))
        else:
            heart.append(_pick(rng, (
                "The heart is normal in size.",
                "Heart size is within normal limits.",
                "Normal heart size.",
                "The cardiac silhouette is within normal limits.",
                "Heart size normal.",
            )))
            if rng.random() < 0.6:
                heart.append(_pick(rng, (
                    "The mediastinum is unremarkable.",
                    "Mediastinal contours are normal.",
                    "Normal mediastinal contour.",
                    "The mediastinal silhouette is within normal limits.",
                )))
    elif rng.random() < 0.5:
        heart.append(_pick(rng, ("The mediastinal contours are normal.", "Normal mediastinal contour.")))

    airspace_free = not kinds & {"opacity", "consolidation"}
    pleura_free = not kinds & {"pleural_effusion", "pneumothorax"}
    if not kinds & LUNG_FINDINGS and rng.random() < 0.75:
        lungs.append(_pick(rng, (
            "The lungs are clear.",
            "Lungs are clear bilaterally.",
            "The lungs are well expanded and clear.",
            "Clear lungs.",
            "Both lungs are clear.",
        )))
    if airspace_free and pleura_free and rng.random() < 0.35:
        # The very common combined negation.
        pleura.append(_pick(rng, (
            "No focal consolidation, pleural effusion, or pneumothorax.",
            "There is no focal airspace consolidation, pleural effusion or pneumothorax.",
            "No focal airspace disease, pleural effusion, or pneumothorax.",
        )))
    else:
        if airspace_free and rng.random() < 0.7:
            lungs.append(_pick(rng, (
                "No focal consolidation.",
                "No focal airspace opacity.",
                "There is no focal airspace consolidation.",
                "No focal airspace disease.",
                "No focal consolidation to suggest pneumonia.",
            )))
        if pleura_free and rng.random() < 0.6:
            pleura.append(_pick(rng, (
                "No pleural effusion or pneumothorax.",
                "There is no pleural effusion or pneumothorax.",
                "No pneumothorax or pleural effusion.",
                "No pleural effusions or pneumothoraces.",
            )))
        else:
            if "pleural_effusion" not in kinds:
                pleura.append(_pick(rng, (
                    "No pleural effusion.",
                    "There is no pleural effusion.",
                    "There are no XXXX of a pleural effusion.",
                    "No effusion.",
                )))
            if "pneumothorax" not in kinds:
                pleura.append(_pick(rng, (
                    "No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax.")))
    if "edema" not in kinds and rng.random() < 0.4:
        lungs.append(_pick(rng, (
            "No pulmonary edema.", "There is no pulmonary edema.", "No evidence of pulmonary edema.")))
    if "nodule" not in kinds and rng.random() < 0.08:
        lungs.append(_pick(rng, ("No suspicious pulmonary nodules.", "No pulmonary nodules.")))
    if rng.random() < 0.08:
        lungs.append("Pulmonary XXXX are normal.")
    if "degenerative_spine" not in kinds and rng.random() < 0.6:
        bones.append(_pick(rng, (
            "The osseous structures are intact.",
            "No acute bony abnormality.",
            "Visualized osseous structures are unremarkable.",
            "Bony structures are intact.",
            "No acute osseous abnormality.",
        )))
    return {"heart": heart, "lungs": lungs, "pleura": pleura, "bones": bones}


GROUP_OF = {
    "cardiomegaly": "heart",
    "opacity": "lungs",
    "consolidation": "lungs",
    "atelectasis": "lungs",
    "nodule": "lungs",
    "edema": "lungs",
    "pleural_effusion": "pleura",
    "pneumothorax": "pleura",
    "support_device": "devices",
    "degenerative_spine": "bones",
}


def findings_text(findings: list[dict], rng: np.random.Generator) -> str:
    """The FINDINGS paragraph: positives and negations, heart → lungs → pleura → devices → bones."""
    groups = {name: [] for name in ("heart", "lungs", "pleura", "devices", "bones")}
    for f in findings:
        groups[GROUP_OF[f["finding"]]].append(finding_sentence(f, rng))
    for name, sentences in negation_sentences(findings, rng).items():
        groups[name].extend(sentences)
    order = ["heart", "lungs", "pleura", "devices", "bones"]
    if rng.random() < 0.3:  # some radiologists start with the lungs
        order = ["lungs", "pleura", "heart", "devices", "bones"]
    return " ".join(s for name in order for s in groups[name])


MINOR_FINDINGS = {"support_device", "degenerative_spine"}
NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary abnormality.",
    "No active disease.",
    "Normal chest x-XXXX.",
    "No acute cardiopulmonary disease.",
    "Negative chest x-XXXX.",
    "No acute cardiopulmonary process.",
)


def impression_text(findings: list[dict], rng: np.random.Generator) -> str:
    major = [f for f in findings if f["finding"] not in MINOR_FINDINGS]
    minor = [f for f in findings if f["finding"] in MINOR_FINDINGS]
    if not major:
        text = _pick(rng, NORMAL_IMPRESSIONS)
        if minor and rng.random() < 0.5:
            text += " " + " ".join(finding_sentence(f, rng, short=True) for f in minor)
        return text
    return " ".join(finding_sentence(f, rng, short=True) for f in major)


# ----------------------------------------------------------------------------- other sections, MeSH

INDICATIONS = (
    "Positive TB test",
    "Chest pain",
    "Shortness of breath",
    "XXXX-year-old male with shortness of breath",
    "XXXX-year-old female with cough",
    "XXXX-year-old male, chest pain",
    "Preop evaluation",
    "Dyspnea",
    "Cough and fever",
    "Pre-employment physical",
    "XXXX-year-old female with hypertension",
    "Follow-up, history of XXXX",
    "Weakness",
    "Routine evaluation",
)
COMPARISONS = (
    "None.",
    "None",
    "XXXX, XXXX",
    "Chest radiographs XXXX.",
    "PA and lateral chest XXXX, XXXX.",
    "Prior study dated XXXX.",
    "XXXX XXXX, XXXX.",
)
CAPTIONS = (
    "Xray Chest PA and Lateral",
    "Xray Chest PA and Lateral",
    "Xray Chest PA and Lateral",
    "CHEST 2V FRONTAL/LATERAL XXXX",
    "PA and lateral views of the chest.",
    "Chest, 2 views, frontal and lateral",
    "PA and lateral chest x-XXXX XXXX at XXXX hours.",
    "XR Chest PA and Lateral",
)


def _zone_mesh(side: str, zone: str) -> str:
    if zone == "upper":
        return f"lung/upper lobe/{side}"
    if zone == "mid":
        return "lung/middle lobe/right" if side == "right" else "lung/lingula"
    return f"lung/base/{side}"


def mesh_major(findings: list[dict]) -> list[str]:
    """Human-style MeSH major terms: 'normal' or 'Term/modifier/...' consistent with the findings."""
    if not findings:
        return ["normal"]
    terms = []
    for f in findings:
        kind = f["finding"]
        if kind == "cardiomegaly":
            terms.append(f"Cardiomegaly/{f['severity']}")
        elif kind == "pleural_effusion":
            terms.append(f"Pleural Effusion/{f['side']}/{f['severity']}")
        elif kind == "opacity":
            terms.append(f"Opacity/{_zone_mesh(f['side'], f['zone'])}")
        elif kind == "consolidation":
            terms.append(f"Consolidation/{_zone_mesh(f['side'], f['zone'])}")
        elif kind == "atelectasis":
            terms.append(f"Pulmonary Atelectasis/base/{f['side']}")
        elif kind == "nodule":
            terms.append(f"Nodule/{_zone_mesh(f['side'], f['zone'])}")
        elif kind == "pneumothorax":
            terms.append(f"Pneumothorax/{f['side']}/{f['severity']}")
        elif kind == "edema":
            terms.append("Pulmonary Edema/interstitial" if f["kind"] == "interstitial" else "Pulmonary Edema")
        elif kind == "support_device":
            terms.append({
                "pacemaker": "Pacemaker, Artificial/left",
                "endotracheal_tube": "Tubes/trachea",
                "central_line": "Catheters, Indwelling/right",
                "sternotomy_wires": "Sternotomy",
            }[f["device"]])
        elif kind == "degenerative_spine":
            terms.append(f"Thoracic Vertebrae/degenerative/{f['severity']}")
    return terms


@dataclass
class ReportText:
    sections: dict[str, str | None]  # COMPARISON, INDICATION, FINDINGS, IMPRESSION; None = missing
    mesh_major: list[str]
    mesh_automatic: list[str] = field(default_factory=list)
    caption: str = ""


def write_report(findings: list[dict], rng: np.random.Generator, drop: str | None = None,
                 wording: str = "varied") -> ReportText:
    """The four sections, MeSH terms and image caption of a study with `findings`.

    drop: force a missing section ("FINDINGS" or "IMPRESSION"); None: by the designed rates.
    wording: "varied" (phrasings and optional sentences drawn at random, as radiologists vary) or
    "fixed" (one wording per set of findings; see FixedWording).
    """
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    if wording == "fixed":
        rng = FixedWording()
    if drop is None:
        u = rng.random()
        drop = "FINDINGS" if u < P_NO_FINDINGS_SECTION else (
            "IMPRESSION" if u < P_NO_FINDINGS_SECTION + P_NO_IMPRESSION_SECTION else "")
    findings_para = findings_text(findings, rng)
    impression = impression_text(findings, rng)
    if drop == "FINDINGS":
        # As in the originals, a report without FINDINGS says everything in its IMPRESSION.
        if findings:
            impression = (findings_para + " " + _pick(rng, ("", "No other acute abnormality."))).strip()
        findings_para = None
    elif drop == "IMPRESSION":
        impression = None
    sections = {
        "COMPARISON": None if rng.random() < P_NO_COMPARISON else _pick(rng, COMPARISONS),
        "INDICATION": None if rng.random() < P_NO_INDICATION else _pick(rng, INDICATIONS),
        "FINDINGS": findings_para,
        "IMPRESSION": impression,
    }
    major = mesh_major(findings)
    automatic = sorted({t.split("/")[0].lower() for t in major if t != "normal" and rng.random() < 0.5})
    return ReportText(sections=sections, mesh_major=major, mesh_automatic=automatic, caption=_pick(rng, CAPTIONS))
