"""The report assistant: a Streamlit page around cxrgen.assistant.generate.

Started by `cxrgen app [--port 8501] [--project DIR]` (streamlit run on 127.0.0.1). The project
directory comes from the script argument `--project DIR`, else $CXRGEN_PROJECT, else the current
directory. Upload a frontal and (optionally) a lateral view, choose the model and the decoding,
press "Generate report": the page shows the report, the labeler's findings, and for the attention
model each word's attention over both views. What the model was trained on is always shown, with a
warning box for synthetic data or random feature weights. Every problem is a message on the page.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import streamlit as st  # noqa: E402

from cxrgen.errors import CxrgenError  # noqa: E402

UPLOAD_TYPES = ["png", "jpg", "jpeg", "dcm", "dicom"]
STATUS_STYLE = {"positive": ("red", "Positive"), "negative": ("green", "Negative"),
                "uncertain": ("orange", "Uncertain")}


def project_dir() -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--project", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known.project or os.environ.get("CXRGEN_PROJECT", ".")


def upload_key(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def show_provenance(provenance) -> None:
    with st.container(border=True):
        st.markdown("**What this model was trained on**")
        rows = [("Model", provenance.model),
                ("Data source", provenance.source_label),
                ("Feature weights", provenance.weights_label),
                ("Split", provenance.split or "unknown"),
                ("Train seed", "unknown" if provenance.train_seed is None else str(provenance.train_seed))]
        st.markdown("\n".join(f"- {name}: **{html.escape(str(value))}**" for name, value in rows))
    for warning in provenance.warnings():
        st.warning(warning, icon="⚠️")


def show_findings(report) -> None:
    st.subheader("Findings")
    findings = report.findings()
    if findings is None:
        st.info(f"Findings are not available: {report.labeler_note}.")
        return
    columns = st.columns(3)
    for column, status in zip(columns, ("positive", "negative", "uncertain")):
        colour, label = STATUS_STYLE[status]
        with column:
            st.markdown(f"**:{colour}[{label}]**")
            items = findings[status]
            st.markdown("\n".join(f"- :{colour}[{name}]" for name in items) if items else "_none_")
    if report.mentions:
        with st.expander("Where the findings were read (negation and uncertainty)"):
            st.dataframe([{"observation": m.observation, "status": m.status, "phrase": m.phrase,
                           "trigger": m.trigger or "", "sentence": m.sentence} for m in report.mentions],
                         hide_index=True)


def show_attention(report) -> None:
    from cxrgen.assistant.attention_maps import attention_png

    st.subheader("Where the model looked, word by word")
    if report.attention is None:
        st.info("The baseline model reads one pooled vector per view: it has no attention map. "
                "Choose the attention model to see where each word looked.")
        st.image([report.views[0], report.views[1]], caption=["frontal (as the model saw it)",
                                                            "lateral (as the model saw it)"], width=260)
        return
    if not report.words:
        st.info("The model wrote no words, so there is no map to show.")
        return
    from cxrgen.assistant.attention_maps import select_words

    if st.session_state.get("word") is None or st.session_state["word"] >= len(report.words):
        st.session_state["word"] = (select_words(report.words, 1) or [0])[0]
    index = st.selectbox("Word", list(range(len(report.words))), key="word",
                         format_func=lambda i: f"{i + 1}. {report.words[i]}")
    index = index if index is not None and index < len(report.words) else 0
    word = report.words[index]
    png = attention_png(report.views, report.attention[index], word,
                        f"Word {index + 1} of {len(report.words)}. {report.provenance.line()}. "
                        "Research tool, not a diagnosis.")
    st.image(png, caption=f'Attention for "{word}" over the frontal and the lateral view (colour: from the least '
                          'to the most attended point of the two views)', width="stretch")


def default_beam_width(project: str) -> int:
    """The project's decode.beam_width (params.yaml), which `cxrgen generate` also uses; 3 when unset."""
    from cxrgen.params import load_params

    try:
        width = int((load_params(os.path.join(project, "params.yaml")).get("decode") or {}).get("beam_width", 3))
    except (CxrgenError, TypeError, ValueError):
        return 3
    return width if width >= 1 else 3


def main() -> None:
    st.set_page_config(page_title="cxrgen · chest X-ray report assistant", page_icon="🩻", layout="wide")
    from cxrgen.assistant import generate

    st.title("Chest X-ray report assistant")
    st.info(generate.RESEARCH_NOTE, icon="ℹ️")

    project = project_dir()
    with st.sidebar:
        st.header("Settings")
        model = st.radio("Model", generate.MODEL_NAMES, key="model",
                         format_func=lambda m: {"attention": "attention (with maps)", "baseline": "baseline"}[m])
        configured = default_beam_width(project)
        decoding = st.radio("Decoding", ["beam search", "greedy"], index=0 if configured > 1 else 1,
                            key="decoding", horizontal=True)
        beam = None
        if decoding == "beam search":
            beam = st.slider("Beam width", 2, 8, min(max(configured, 2), 8), key="beam",
                             help="Starts at the project's decode.beam_width (params.yaml), as `cxrgen generate`.")
        st.caption(f"Project: `{os.path.abspath(project)}`")

    try:
        assistant = generate.get_assistant(project, model)
    except CxrgenError as exc:
        st.error(f"The {model} model cannot be loaded: {exc}", icon="🚫")
        st.stop()
        return  # st.stop() does not always raise (AppTest)
    show_provenance(assistant.provenance)

    left, right = st.columns(2)
    max_mb = max(1, generate.MAX_FILE_BYTES // 2**20)
    with left:
        frontal = st.file_uploader("Frontal view (PA/AP)", type=UPLOAD_TYPES, key="frontal", max_upload_size=max_mb)
    with right:
        lateral = st.file_uploader("Lateral view (optional)", type=UPLOAD_TYPES, key="lateral",
                                   max_upload_size=max_mb)
    views = [generate.ViewInput(f.name, f.getvalue()) for f in (frontal, lateral) if f is not None]
    st.caption(f"PNG (8 or 16-bit, gray, RGB, RGBA, palette), JPEG, or DICOM; at most {max_mb} MiB and "
               f"{generate.MAX_PIXELS / 1e6:.0f} megapixels per image. One view only works too: it is used "
               "as both views.")

    key = upload_key(*(v.data for v in views), *(v.name for v in views), model, decoding, beam,
                     str(assistant.project))
    clicked = st.button("Generate report", type="primary", disabled=not views, key="generate")
    if clicked:
        st.session_state.pop("result", None)
        try:
            with st.spinner("Reading the images and writing the report…"):
                result = assistant.generate(views[0], views[1] if len(views) > 1 else None,
                                            beam=beam, greedy=decoding == "greedy")
        except CxrgenError as exc:
            st.error(f"Cannot use this upload: {exc}", icon="🚫")
            return
        st.session_state["result"] = (key, result)
        st.session_state.pop("word", None)

    stored = st.session_state.get("result")
    if stored is None:
        if not views:
            st.caption("Upload at least a frontal view, then press Generate report.")
        return
    if stored[0] != key:
        st.info("The images or settings changed: press Generate report for a new report.")
        return
    report = stored[1]
    st.subheader(f"Report — {report.model} model, {report.decoding}")
    st.markdown(f'<div id="cxrgen-report" style="font-size:1.15rem;line-height:1.6;padding:0.8rem 1rem;'
                f'border-left:4px solid #4e79a7;background:#f4f7fb">{html.escape(report.text or "(empty)")}</div>',
                unsafe_allow_html=True)
    for note in report.notes:
        st.warning(note, icon="ℹ️")
    show_findings(report)
    show_attention(report)


main()
