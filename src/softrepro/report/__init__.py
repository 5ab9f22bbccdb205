"""Render the report: papermill executes report/report.ipynb, nbconvert makes HTML without
code cells, WeasyPrint turns that HTML into a PDF (no network, no LaTeX).  The notebook's
content comes from ``softrepro.report.page`` and ``.figures``, which read a results folder only."""
from __future__ import annotations

import html
import shutil
import time
from pathlib import Path

CSS = """
@page { size: A4 landscape; margin: 12mm; @bottom-right { content: counter(page) " / " counter(pages); font-size: 8pt; } }
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; font-size: 10pt; color: #222; max-width: 1400px; margin: 0 auto; padding: 0 1em; }
h1 { font-size: 18pt; border-bottom: 2px solid #444; } h2 { font-size: 14pt; margin-top: 1.6em; border-bottom: 1px solid #aaa; page-break-after: avoid; }
h3 { font-size: 11.5pt; page-break-after: avoid; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; font-size: 8.5pt; page-break-inside: auto; }
tr { page-break-inside: avoid; }
th, td { border: 1px solid #ccc; padding: 3px 5px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
img { max-width: 100%; page-break-inside: avoid; }
.banner { background: #fff3cd; border: 1px solid #e0c060; padding: 6px 10px; margin: 1em 0; }
.v-reproduced { background: #d4edda; } .v-direction-holds { background: #e2f0d9; }
.v-not-reproduced { background: #f8d7da; } .v-inconclusive { background: #fff3cd; } .v-not-run { background: #e2e3e5; }
.v-consistent { background: #dbe9f6; } .v-contradicts { background: #fbe0c8; } .v-not-comparable-at-this-scale { background: #eeeeee; }
.small { font-size: 8.5pt; color: #555; }
pre { white-space: pre-wrap; font-size: 8pt; }
"""


def render(root: Path, scale: str, results: str = "results") -> list[Path]:
    import nbformat
    import papermill
    from nbconvert import HTMLExporter
    from weasyprint import HTML
    from weasyprint.urls import URLFetcher

    out_dir = root / results / scale
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / "report.ipynb"
    t0 = time.perf_counter()
    papermill.execute_notebook(
        str(root / "report" / "report.ipynb"), str(executed),
        parameters={"scale": scale, "results_dir": str((root / results).resolve())},
        kernel_name="python3", progress_bar=False, cwd=str(root),
    )
    exporter = HTMLExporter(template_name="basic")
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    title = f"softrepro report ({scale})"
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
    html_path, pdf_path = out_dir / "report.html", out_dir / "report.pdf"
    tmp_html, tmp_pdf = html_path.with_suffix(".html.tmp"), pdf_path.with_suffix(".pdf.tmp")
    tmp_html.write_text(page)
    HTML(string=page, base_url=str(out_dir), url_fetcher=URLFetcher(allowed_protocols={"data", "file"})).write_pdf(tmp_pdf)
    shutil.move(tmp_html, html_path)
    shutil.move(tmp_pdf, pdf_path)
    print(f"report rendered in {time.perf_counter() - t0:.1f} s")
    return [html_path, pdf_path, executed]
