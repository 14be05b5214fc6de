"""mkdocs hook: the committed benchmark results (benchmarks/results/*.md and their plots) become
pages of the site as they are, under results/, so no number is copied by hand into the docs."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def on_files(files, config):
    pages = sorted(RESULTS.glob("*.md"))
    for md in pages:
        files.append(
            File.generated(
                config,
                f"results/{md.name}",
                abs_src_path=str(md),
                inclusion=InclusionLevel.NOT_IN_NAV,
            )
        )
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    intro = (
        "The result files committed under `benchmarks/results/`, as they are: each states its "
        "command, its machine and every number. Rerun a benchmark to regenerate its file."
    )
    index = ["# Benchmark results", "", intro, ""]
    for md in pages:
        title = next(
            (
                line.lstrip("# ").strip()
                for line in md.read_text().splitlines()
                if line.startswith("# ")
            ),
            md.stem,
        )
        index.append(f"* [{title}]({md.name}) (`{md.name}`)")
    files.append(File.generated(config, "results/index.md", content="\n".join(index) + "\n"))
    return files
