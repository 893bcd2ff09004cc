"""The `cxrgen` command: draft reports from image files, or start the report assistant app.

    cxrgen generate FRONTAL [LATERAL] [--model attention|baseline] [--beam N | --greedy] [--samples N] [--project DIR]
    cxrgen generate --folder DIR --out reports.csv [--model ...] [--beam N | --greedy] [--samples N] [--project DIR]
    cxrgen app [--port 8501] [--project DIR]

`--project` is a project directory after `dvc repro` (default: the current directory, or
$CXRGEN_PROJECT). Folder mode: see `cxrgen.assistant.generate.group_studies` for how files become studies.
Errors are one line on stderr ("cxrgen: error: FILE: problem") and exit status 1.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path

from cxrgen.errors import BadInput, CxrgenError

CSV_COLUMNS = ["study", "frontal", "lateral", "single_view", "ignored", "model", "decoding", "report",
               "positive", "negative", "uncertain", "error", "data_source", "weights", "split", "train_seed"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrgen", description="Chest X-ray report drafts (research tool, "
                                                                "not a diagnosis).")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="draft the FINDINGS of one study, or of every study in a folder")
    gen.add_argument("frontal", nargs="?", help="frontal view (PNG, JPEG or DICOM)")
    gen.add_argument("lateral", nargs="?", help="lateral view (optional: one view is used twice)")
    gen.add_argument("--folder", help="a folder of studies (one per subfolder, or files grouped by name)")
    gen.add_argument("--out", help="CSV file to write (with --folder)")
    gen.add_argument("--model", choices=["attention", "baseline"], default="attention")
    decoding = gen.add_mutually_exclusive_group()
    decoding.add_argument("--beam", type=int, metavar="N", help="beam search of width N (default: params decode)")
    decoding.add_argument("--greedy", action="store_true", help="greedy decoding (beam width 1)")
    gen.add_argument("--samples", type=int, metavar="N",
                     help="reports sampled beside the beam's; the one the finding head agrees with most is "
                          "given (default: params decode.rerank_samples; 0: the beam's report)")
    gen.add_argument("--project", default=None, help="project directory (default: . or $CXRGEN_PROJECT)")
    app = commands.add_parser("app", help="start the report assistant (Streamlit) on 127.0.0.1")
    app.add_argument("--port", type=int, default=8501)
    app.add_argument("--project", default=None, help="project directory (default: . or $CXRGEN_PROJECT)")
    seeds = commands.add_parser("seeds", help="mean ± std over training seeds from `dvc exp show` → metrics/seeds.md")
    seeds.add_argument("--project", default=None, help="project directory (default: . or $CXRGEN_PROJECT)")
    seeds.add_argument("--out", default="metrics/seeds.md", help="Markdown file, relative to the project")
    return parser


def _project(args) -> Path:
    return Path(args.project or os.environ.get("CXRGEN_PROJECT", ".")).resolve()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "app":
            return run_app(args.port, _project(args))
        if args.command == "seeds":
            from cxrgen.evaluation.seeds import write_summary

            print(write_summary(_project(args), args.out), end="")
            return 0
        return run_generate(args, parser)
    except CxrgenError as exc:
        print(f"cxrgen: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("cxrgen: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------------------------
# generate


def _check_args(args, parser: argparse.ArgumentParser) -> None:
    """Everything checkable before TensorFlow loads (seconds)."""
    if args.beam is not None and args.beam < 1:
        parser.error("--beam must be at least 1")
    if args.samples is not None and args.samples < 0:
        parser.error("--samples must be 0 or more")
    if args.samples and args.greedy:
        parser.error("--samples goes with beam search, not --greedy")
    if args.folder:
        if args.frontal or args.lateral:
            parser.error("give either image files or --folder, not both")
        if not args.out:
            parser.error("--folder needs --out reports.csv")
        if not Path(args.folder).is_dir():
            raise BadInput(args.folder, "folder not found")
    else:
        if not args.frontal:
            parser.error("give a frontal image (and optionally a lateral one), or --folder DIR --out FILE")
        if args.out:
            parser.error("--out goes with --folder")
        for path in (args.frontal, args.lateral):
            if path is not None and not Path(path).is_file():
                raise BadInput(path, "file not found")
    project = _project(args)
    if not project.is_dir():
        raise BadInput(project, "project directory not found")
    if not (project / "models" / f"{args.model}.keras").is_file():
        raise BadInput(project / "models" / f"{args.model}.keras",
                       "model file not found (run `dvc repro` in the project, or pass --project)")


def run_generate(args, parser: argparse.ArgumentParser) -> int:
    _check_args(args, parser)
    from cxrgen.quiet import import_tensorflow

    import_tensorflow()
    from cxrgen.assistant.generate import get_assistant

    assistant = get_assistant(_project(args), args.model)
    if args.folder:
        return run_folder(assistant, Path(args.folder), Path(args.out), args.beam, args.greedy, args.samples)
    report = assistant.generate(args.frontal, args.lateral, beam=args.beam, greedy=args.greedy, samples=args.samples)
    print(format_report(report))
    return 0


def format_report(report) -> str:
    from cxrgen.assistant.generate import RESEARCH_NOTE

    lines = [f"Report ({report.model} model, {report.decoding}):", f"  {report.text or '(empty)'}", ""]
    findings = report.findings()
    if findings is None:
        lines.append(f"Findings: not available ({report.labeler_note})")
    else:
        lines.append("Findings:")
        for status in ("positive", "negative", "uncertain"):
            lines.append(f"  {status + ':':<10} {', '.join(findings[status]) or '-'}")
    lines.append("")
    for note in report.notes:
        lines.append(f"Note: {note}")
    lines.append(f"Provenance: {report.provenance.line()}")
    for warning in report.provenance.warnings():
        lines.append(f"WARNING: {warning}")
    lines.append(RESEARCH_NOTE)
    return "\n".join(lines)


def run_folder(assistant, folder: Path, out: Path, beam: int | None, greedy: bool, samples: int | None = None) -> int:
    from tqdm import tqdm

    from cxrgen.assistant.generate import group_studies
    from cxrgen.files import atomic_path

    studies = group_studies(folder)
    provenance = assistant.provenance
    rows, failed = [], 0
    for name, views, ignored in tqdm(studies, desc="studies", unit=" study", file=sys.stderr):
        row = {"study": name, "frontal": views[0].name, "lateral": views[1].name if len(views) > 1 else "",
               "ignored": ";".join(p.name for p in ignored), "model": assistant.model_name,
               "data_source": provenance.data_source, "weights": provenance.weights,
               "split": provenance.split, "train_seed": provenance.train_seed}
        try:
            report = assistant.generate(views[0], views[1] if len(views) > 1 else None, beam=beam, greedy=greedy,
                                        samples=samples)
        except BadInput as exc:
            failed += 1
            row["error"] = str(exc)
            print(f"cxrgen: warning: study {name} left out: {exc}", file=sys.stderr)
        else:
            findings = report.findings() or {}
            row.update({"single_view": report.single_view, "decoding": report.decoding, "report": report.text,
                        **{s: "; ".join(findings.get(s, [])) for s in ("positive", "negative", "uncertain")}})
            if report.labels is None:
                row["error"] = f"findings: {report.labeler_note}"
        rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"cxrgen: {len(rows) - failed} of {len(rows)} studies → {out}  ({provenance.line()})")
    for warning in provenance.warnings():
        print(f"WARNING: {warning}")
    if failed:   # the CSV holds the others; the exit status and stderr say that not all went through
        left_out = [row for row in rows if row.get("error") and not row.get("report")]
        print(f"cxrgen: error: {failed} of {len(rows)} studies left out (reasons in the CSV's error column):",
              file=sys.stderr)
        for row in left_out:
            print(f"  {row['study']}: {row['error']}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# app


def app_command(port: int, project: Path) -> list[str]:
    from cxrgen.assistant.generate import MAX_FILE_BYTES

    app = Path(__file__).with_name("app.py")
    return [sys.executable, "-m", "streamlit", "run", str(app),
            "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
            "--server.maxUploadSize", str(math.ceil(MAX_FILE_BYTES / 2**20)),
            "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
            "--theme.base", "light", "--client.toolbarMode", "viewer", "--", "--project", str(project)]


def run_app(port: int, project: Path) -> int:
    if not 1 <= port <= 65535:
        raise BadInput("--port", f"{port} is not a TCP port")
    if not project.is_dir():
        raise BadInput(project, "project directory not found")
    command = app_command(port, project)
    print(f"cxrgen: report assistant on http://127.0.0.1:{port}  (project {project}; Ctrl-C stops it)",
          flush=True)
    os.execv(command[0], command)   # the server replaces this process: signals reach it directly
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
