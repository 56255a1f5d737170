"""What a fresh clone shows a researcher who wants to install, cite and build on the kit: the license, the citation
file, the changelog, the notes the docstrings cite, the ignore rules, and a README that agrees with the manifests on
how to get every dataset (issue 20, item 6)."""
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

import histokit
from histokit.data.manifests import list_manifests, load_manifest
from histokit.papers import get_recipe, list_papers

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_the_mit_license_pyproject_declares():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c)" in text and "histokit developers" in text
    assert "Permission is hereby granted, free of charge" in text and 'THE SOFTWARE IS PROVIDED "AS IS"' in text
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == {"text": "MIT"}


def _citation() -> dict:
    return yaml.safe_load((ROOT / "CITATION.cff").read_text())


def test_citation_cites_the_kit_at_its_version():
    cff = _citation()
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == histokit.__version__ and cff["license"] == "MIT"
    assert cff["authors"] == [{"name": "histokit developers"}]
    for ref in cff["references"]:
        assert ref["title"] and ref["authors"] and ref["year"], ref.get("title")


def test_citation_references_the_four_papers_and_every_dataset():
    refs = _citation()["references"]
    papers = {}
    for ref in refs:
        found = re.search(r"histokit recipe: (\w+)", ref.get("notes", ""))
        if found:
            papers[found.group(1)] = ref
    assert set(papers) == set(list_papers())
    for paper, ref in papers.items():
        # the recipe's own citation (what the tables print) names the same paper
        assert ref["title"].lower() in get_recipe(paper, "smoke").citation.lower(), paper
    cited = set()
    for ref in refs:
        if ref["type"] == "data":
            found = re.search(r"manifests?: ([\w, ]+)", ref["notes"])
            assert found, ref["title"]
            cited |= {n.strip() for n in found.group(1).split(",")}
    assert cited == set(list_manifests())


def test_changelog_states_the_current_version_and_the_policy():
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", text, re.MULTILINE)
    assert versions and versions[0] == histokit.__version__
    assert "Semantic Versioning" in text and "Version policy" in text


def _cited_notes() -> dict[Path, set[str]]:
    out = {}
    for path in [*(ROOT / "histokit").rglob("*.py"), *(ROOT / "tests").glob("*.py")]:
        text = path.read_text(encoding="utf-8")
        out[path] = set(re.findall(r"(?<![\w/])((?:docs/)?[A-Za-z_]+\.md)\b", text))
    return out


def test_the_notes_the_code_cites_are_in_the_repository():
    """Docstrings cite docs/design.md and docs/protocols.md (once DESIGN.md / REFERENCE.md, outside the repository)."""
    assert (ROOT / "docs" / "design.md").is_file() and (ROOT / "docs" / "protocols.md").is_file()
    for path, cited in _cited_notes().items():
        if path.name == "test_repo_files.py":
            continue
        assert not cited & {"DESIGN.md", "REFERENCE.md"}, f"{path.relative_to(ROOT)} cites a note outside the repo"
        for name in cited:
            if name.startswith("docs/"):
                assert (ROOT / name).is_file(), f"{path.relative_to(ROOT)} cites {name}, which does not exist"
    protocols = (ROOT / "docs" / "protocols.md").read_text()
    for section in ("## Datasets", "## Official weights", "## Protocols found in the reference code",
                    "## Speed references", "Retrieval metric definitions"):
        assert section in protocols  # the sections the docstrings name


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_tracked_file_is_git_ignored():
    """results/REPORT.md and results/report.html are results, tracked: an ignore rule over them (or any tracked
    file) would make every run show them modified while `git status` claims they are ignored."""
    out = subprocess.run(["git", "ls-files", "--cached", "--ignored", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == []
    tracked = subprocess.run(["git", "ls-files", "results/REPORT.md", "results/report.html"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert tracked == ["results/REPORT.md", "results/report.html"]


# --------------------------------------------------------------------------------------------- README vs manifests

# The README's access table names datasets as people do; these are the manifests each row stands for.
README_ROWS = {
    "NCT-CRC-HE-100K, its NONORM release, CRC-VAL-HE-7K": ("nct_crc_he_100k", "nct_crc_he_100k_nonorm",
                                                          "crc_val_he_7k"),
    "Kather 2016 textures": ("kather2016",),
    "The 100-tile Kather 2016 subset": ("kather2016_tiny",),
    "PathMNIST": ("pathmnist",),
    "PanNuke": ("pannuke",),
    "BACH (ICIAR 2018)": ("bach",),
    "BRACS": ("bracs",),
    "Kimia Path24C": ("kimia_path24c",),
    "BreastPathQ": ("breastpathq",),
    "VGH/NKI": ("vgh_nki",),
    "ImageNet-1k": ("imagenet1k",),
}
# Names the README's prose uses for datasets (the papers' own spellings included: Habijan et al.'s "BracS", "BATCH").
ALIASES = {"bracs": "bracs", "bach": "bach", "batch": "bach", "breastpathq": "breastpathq", "kimia": "kimia_path24c",
           "pannuke": "pannuke", "imagenet": "imagenet1k", "vgh/nki": "vgh_nki"}


def _access_in_words(cell: str) -> str:
    """A README access cell -> a manifest ``access`` value; what stands in brackets is a detail, not the access."""
    main = re.sub(r"\([^)]*\)", "", cell).lower()
    if "bundled" in main:
        return "bundled"
    if "unavailable" in main:
        return "unavailable"
    if "registration" in main or "agreement" in main or "login" in main:
        return "login"
    if "open" in main:
        return "open"
    raise AssertionError(f"README access cell says no access the test knows: {cell!r}")


def _readme_table() -> dict[str, str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("| dataset | access | license |")
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        name, access, _license = (c.strip() for c in line.strip("|").split("|"))
        rows[name] = access
    return rows


def test_readme_access_table_agrees_with_the_manifests():
    rows = _readme_table()
    assert set(rows) == set(README_ROWS), "a README row without a manifest mapping here (or one missing)"
    covered = [m for names in README_ROWS.values() for m in names]
    assert sorted(covered) == sorted(list_manifests()), "every manifest has exactly one README row"
    for row, access in rows.items():
        for name in README_ROWS[row]:
            assert _access_in_words(access) == load_manifest(name).access, (row, name, access)


def test_readme_prose_on_registration_agrees_with_the_manifests():
    """Anything the README says needs registration is a `login` manifest (BACH's images are an open download)."""
    text = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    claims = re.findall(r"((?:[\w/-]+)(?: and [\w/-]+)?) needs? registration", text)
    claims += re.findall(r"([\w/-]+) \(registration needed\)", text)
    named = {ALIASES[w.lower()] for claim in claims for w in claim.split(" and ") if w.lower() in ALIASES}
    assert named, "the README names the datasets that need registration"
    for name in named:
        assert load_manifest(name).access == "login", f"README says {name} needs registration; its manifest: " \
                                                      f"{load_manifest(name).access}"
    open_ones = re.findall(r"([\w/-]+) \(an open [^)]*download\)", text)
    assert open_ones and all(load_manifest(ALIASES[w.lower()]).access == "open" for w in open_ones)


def _count_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("count_guarantee_tests", ROOT / "tools" / "count_guarantee_tests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guarantee_counts_in_the_docs_are_the_suites():
    """docs/guarantees.md's marker counts are generated (tools/count_guarantee_tests.py --write), never hand-kept:
    the suite is collected again in a subprocess (nothing runs) and the page must carry exactly its counts."""
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "tools" / "count_guarantee_tests.py")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    table = {line[:16].strip(): int(line[16:]) for line in out.stdout.splitlines() if line[16:].strip().isdigit()}
    tool = _count_tool()
    assert set(table) == set(tool.MARKERS) | {"any of these", "all test cases"}
    doc = tool.DOC.read_text()
    assert tool.with_counts(doc, table) == doc, (
        f"docs/guarantees.md's counts are not the suite's {table}: run python tools/count_guarantee_tests.py --write")


def test_the_count_writer_refuses_a_page_without_the_table():
    tool = _count_tool()
    table = dict.fromkeys(tool.MARKERS, 1) | {"any of these": 2, "all test cases": 3}
    page = "| `fault` | 9 | x |\n| `bad_input` | 9 | x |\n| `security` | 9 | x |\n| `determinism` | 9 | x |\n"
    with pytest.raises(ValueError, match="any of these"):
        tool.with_counts(page, table)
    with pytest.raises(ValueError, match="determinism"):
        tool.with_counts(page.replace("`determinism`", "`other`"), table)
    full = page + "| any of these | 7 | of 8 test cases in the suite |\n"
    assert "| `fault` | 1 |" in tool.with_counts(full, table) and "| 2 | of 3 test cases" in tool.with_counts(full, table)
