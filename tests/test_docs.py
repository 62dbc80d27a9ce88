"""The documentation holds together: README.md stays a guide of at most 300 lines, every relative link in it and
in docs/ and benchmarks/results/ resolves (anchors too), its results tables quote the committed result files,
and its Python snippet runs."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "benchmarks" / "results"
MARKDOWN = [README, *sorted((REPO / "docs").glob("*.md")), *sorted(RESULTS.rglob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)\)")  # [text](target), ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def prose(path):
    """The file's text without fenced code blocks (a link inside code is an example, not a link)."""
    return FENCE.sub("", path.read_text())


def heading_anchors(path):
    """GitHub's anchors of the file's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for line in prose(path).splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text)))
    return anchors


def relative_links(path):
    for target in LINK.findall(prose(path)):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not files
            yield target


def test_readme_is_a_guide_of_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(path):
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{path.relative_to(REPO)}: " + "; ".join(broken)


def test_the_link_checker_sees_links_and_broken_ones(tmp_path):
    """Negative control: a missing file and a missing anchor are reported, a link inside code is not."""
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [gone](missing.md) [bad](#nowhere) ![img](x.png)\n\n"
                    "```\n[code](not-a-link.md)\n```\n[web](https://example.com)\n")
    assert list(relative_links(page)) == ["#top", "missing.md", "#nowhere", "x.png"]
    assert "top" in heading_anchors(page) and "nowhere" not in heading_anchors(page)


def table_rows(text):
    return [line for line in text.splitlines() if line.startswith("|")]


def cells(row):
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


SPEED_ROWS = {"eval, conv / tree": "eval_conv_over_tree", "eval, folded / tree": "eval_best_conv_over_tree",
              "train, conv / tree": "train_conv_over_tree"}


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_readme_speed_table_quotes_the_compare_results(device):
    """Each ratio in the README's speed table is the committed compare_<device>.json's (block 8, 16, 32)."""
    result = json.loads((RESULTS / f"compare_{device}.json").read_text())
    by_block = result["ratios"][device]["by_block_size"]
    rows = [cells(row) for row in table_rows(README.read_text()) if f"(benchmarks/results/compare_{device}.md)" in row]
    assert {row[0] for row in rows} == set(SPEED_ROWS)
    for row in rows:
        key = SPEED_ROWS[row[0]]
        if "best" in key:
            assert all(by_block[b]["eval_best_conv_form"] == "conv_folded" for b in ("8", "16", "32"))
        expected = [f"{by_block[b][key]:.2f}×" for b in ("8", "16", "32")]
        assert row[1:4] == expected, f"README's '{row[0]}' row should read {' | '.join(expected)}"


def test_readme_recipe_table_quotes_the_summaries():
    """Parameters, val, test and seconds of each recipe row are those of the summary.json it links."""
    rows = [row for row in table_rows(README.read_text()) if "_summary.json)" in row]
    assert len(rows) >= 3
    for row in rows:
        path = REPO / re.search(r"\]\((benchmarks/results/[^)]+_summary\.json)\)", row).group(1)
        summary = json.loads(path.read_text())
        expected = [f"{summary['params']:,}", f"{summary['val_loss']:.4f}", f"{summary['test_loss']:.4f}",
                    f"{summary['seconds_total']:.1f}"]
        assert cells(row)[1:5] == expected, f"{path.name}: the README row should read {' | '.join(expected)}"


def test_readme_time_to_loss_table_quotes_the_results():
    """Median, fastest-slowest and steps of each row are those of its variant in time_to_loss_cpu.json."""
    results = json.loads((RESULTS / "time_to_loss_cpu.json").read_text())["results"]
    by_variant = {"default (float32)": "(default)", "`--precision bf16`": "--precision bf16",
                  "`--compile`": "--compile"}
    rows = [cells(row) for row in table_rows(README.read_text()) if "(benchmarks/results/time_to_loss_cpu.md)" in row]
    assert {row[0] for row in rows} == set(by_variant)
    for row in rows:
        (result,) = [r for r in results if r["variant"] == by_variant[row[0]]]
        expected = [f"{result['median_s']:.1f}", f"{result['min_s']:.1f}–{result['max_s']:.1f}", f"{result['steps']:.0f}"]
        assert row[1:4] == expected, f"README's '{row[0]}' row should read {' | '.join(expected)}"


def test_readme_python_snippet_runs():
    """The API section's snippet, as printed: it ends with the tree/conv equivalence check."""
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "assert_close" in code
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_readme_keeps_the_install_and_test_commands():
    text = README.read_text()
    for command in ("pip install torch==2.13.0", 'pip install -e ".[test]"', "python -m pytest -q"):
        assert command in text


def test_no_tracked_file_speaks_of_the_work_that_made_it():
    """The tracked files describe the software, not how it was made: the word for a period of work appears only
    as pytest's fixture scope."""
    word = "ses" "sion"  # split, so that this file does not match itself
    try:
        found = subprocess.run(["git", "grep", "-n", "-i", "-w", word], cwd=REPO, capture_output=True,
                               text=True, timeout=60)
    except OSError:
        pytest.skip("git is not installed")
    if found.returncode not in (0, 1):
        pytest.skip("not a git checkout")
    lines = [line for line in found.stdout.splitlines() if f'scope="{word}"' not in line]
    assert not lines, "\n".join(lines[:20])
