"""The HTML report: one self-contained page (no network reference, images inlined), with the
sections each attack calls for; and its screenshot in headless Chromium where there is one."""

from __future__ import annotations

import base64
import copy
import html
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from handmade import CONFIG, backdoor_rows, png

from sslpoison.attacks.indiscriminate import Rows
from sslpoison.cli import main
from sslpoison.eval.backdoor import backdoor_row
from sslpoison.eval.rows import Row
from sslpoison.results.html_report import build_report
from sslpoison.results.store import ResultsStore, import_runs

SCRIPT = Path(__file__).parents[2] / "scripts" / "report_screenshot.py"


def runs_folder(make_run, tmp_path) -> Path:
    """BadEncoder + MIMIC over three seeds (with a detector), a lambda2 sweep, an SSL run."""
    for seed, acc in enumerate((0.80, 0.84, 0.88)):
        rows = backdoor_rows(
            {
                "clean": {"acc": 0.9, "asr": 0.1},
                "attacked": {"acc": 0.85, "asr": 0.95},
                "mimic": {"acc": acc, "asr": 0.02 * (seed + 1)},
            }
        )
        rows.append(Row(None, "attacked", "decree", "flagged", 1, "decree/attacked_flagged"))
        rows.append(Row(None, "attacked", "decree", "pl1", 0.02, "decree/attacked_pl1"))
        folder = make_run(
            f"runs/defended{seed}", rows, seed,
            defenses=[{"name": "mimic"}], detectors=[{"name": "decree"}],
        )  # fmt: skip
        png(folder / "decree-attacked.png", shade=30)
        results = (folder / "results.json").read_text()
        extra = f'"trigger_inverted:decree/attacked": "{folder / "decree-attacked.png"}",'
        (folder / "results.json").write_text(
            results.replace('"artifacts": {', '"artifacts": {' + extra)
        )
    for i, lam in enumerate((1.0, 2.0, 3.0)):
        rows = backdoor_rows(
            {"clean": {"acc": 0.9, "asr": 0.1}, "attacked": {"acc": 0.85, "asr": 0.3 * lam}}
        )
        attack = {"name": "badencoder", "lambda2": lam, "targets": []}
        make_run(f"runs/sweep{i}", rows, name="hand-sweep", attack=attack)
    ssl = [Row("synthetic", "clean", "linear", "acc", 0.7, "synthetic/linear_acc")]
    make_run("runs/ssl", ssl, name="hand-ssl", attack=None)
    return tmp_path / "runs"


class Tags(HTMLParser):
    """The page's tags, and the ``src``/``href`` of each."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: dict[str, int] = {}
        self.closed: dict[str, int] = {}
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.opened[tag] = self.opened.get(tag, 0) + 1
        self.sources += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_endtag(self, tag):
        self.closed[tag] = self.closed.get(tag, 0) + 1


def test_the_page_is_self_contained_and_shows_each_section(tmp_path, make_run):
    db = tmp_path / "store.sqlite"
    import_runs([runs_folder(make_run, tmp_path)], db)
    with ResultsStore(db, read_only=True) as store:
        page = build_report(store.runs())
    assert "http://" not in page and "https://" not in page
    tags = Tags()
    tags.feed(page)
    for tag in ("details", "table", "section", "figure"):
        assert tags.opened[tag] == tags.closed[tag], tag
    images = [s for s in tags.sources if not s.startswith("#")]
    assert images and all(s.startswith("data:image/png;base64,") for s in images)
    for s in images:
        assert base64.b64decode(s.split(",", 1)[1]).startswith(b"\x89PNG")
    # Two attack sections; the BadEncoder one with every part; each run's config folded.
    for text in ("BadEncoder", "No attack", "Encoders", "Defenses compared", "Sweeps"):
        assert f">{text}" in page, text
    assert ">Detectors<" in page and ">backdoored<" in page
    assert "hand-sweep: against attack.lambda2" in page
    assert "0.8400 ± 0.0400" in page  # MIMIC's accuracy over three seeds
    # ASR beside ASR-B over the three seeds, with the verdict and its test.
    assert ">Effects against their null controls<" in page
    assert "effect: Δ 0.8500 &gt; 2·σ 0.0000" in page and "one-sided" in page
    assert "0.0500" in page  # CA − BA of the attacked encoder
    assert page.count('<table class="sortable">') >= 4
    assert '"lambda2": 3.0' in html.unescape(page) and page.count("<pre>") == 7
    assert "<script src" not in page and "<link" not in page


def test_the_style_sheet_and_script_are_package_data_inlined_in_the_page(tmp_path, make_run):
    """``report.css`` and ``report.js`` are files of the package, declared in pyproject so a
    wheel carries them, and inlined in the page: the style in the head, the script at the
    end (a page without runs has no table to sort, and no script)."""
    package = Path(build_report.__code__.co_filename).parent
    data = sorted(p.name for p in package.iterdir() if p.is_file() and p.suffix != ".py")
    assert data == ["report.css", "report.js"]
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"sslpoison.results" = ["report.css", "report.js"]' in pyproject
    css, js = ((package / name).read_text() for name in data)
    assert "th[data-dir=asc]" in css and "addEventListener" in js
    empty = build_report([])
    assert f"<style>\n{css}</style></head>" in empty and "<script>" not in empty
    rows = backdoor_rows({"clean": {"acc": 0.9, "asr": 0.1}, "attacked": {"acc": 0.8, "asr": 0.9}})
    db = tmp_path / "store.sqlite"
    import_runs([make_run("runs/one", rows)], db)
    with ResultsStore(db, read_only=True) as store:
        page = build_report(store.runs())
    assert f"<style>\n{css}</style></head>" in page
    assert page.endswith(f"<script>\n{js}</script></body></html>\n")


def test_the_report_command_takes_folders_or_store_filters(tmp_path, make_run, capsys):
    runs = runs_folder(make_run, tmp_path)
    out = tmp_path / "a.html"
    assert main(["report", str(runs / "ssl"), str(runs / "sweep0"), "--out", str(out)]) == 0
    page = out.read_text()
    assert "hand-ssl" in page and "hand-sweep" in page and "defended0" not in page
    db = tmp_path / "store.sqlite"
    import_runs([runs], db)
    out = tmp_path / "b.html"
    assert main(["report", "--db", str(db), "--preset", "hand-sweep", "--out", str(out)]) == 0
    page = out.read_text()
    assert "3 runs" in page and "hand-ssl" not in page
    assert "report: " in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
    reason="no Chromium on PATH",
)
def test_the_page_renders_in_headless_chromium_with_the_network_off(tmp_path, make_run):
    from PIL import Image

    runs = runs_folder(make_run, tmp_path)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(runs), "--out", str(tmp_path / "check"),
         "--size", "900,700"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shot = Image.open(tmp_path / "check" / "report.png")
    assert shot.size == (900, 700)
    low, high = shot.convert("L").getextrema()
    assert high - low > 100  # text and tables, not a blank page
    assert re.search(r"screenshot: .*report\.png", done.stdout)


def filter_rows() -> list[Row]:
    """A hand-made SSL-Backdoor run with PatchSearch: its scores and its encoder's numbers."""
    rows = backdoor_rows(
        {
            "clean": {"acc": 0.83, "asr": 0.001, "fp": 9},
            "attacked": {"acc": 0.84, "asr": 0.01, "fp": 88},
            "patchsearch": {"acc": 0.835, "asr": 0.002, "fp": 12},
        },
        probe="linear",
    )
    for metric, value in (("poison_precision", 0.42), ("poison_recall", 0.91),
                          ("poison_auroc", 0.97), ("clean_removed", 0.063)):  # fmt: skip
        rows.append(Row(None, "patchsearch", "filter", metric, value, f"patchsearch/{metric}"))
    return rows


def test_the_filters_have_their_own_section(tmp_path, make_run):
    attack = {"name": "ssl_backdoor", "target_class": "vertical"}
    folder = make_run(
        "runs/filtered", filter_rows(), attack=attack, defenses=[{"name": "patchsearch"}],
        eval={"datasets": ["synthetic"], "probes": ["linear"]},
    )  # fmt: skip
    results = (folder / "results.json").read_text()
    (folder / "results.json").write_text(
        results.replace('"wall_s": 60.0', '"wall_s": 60.0, "retrain_s": 100.0')
    )
    db = tmp_path / "store.sqlite"
    import_runs([folder], db)
    with ResultsStore(db, read_only=True) as store:
        page = build_report(store.runs())
    assert ">Filters of the pre-training data<" in page
    assert "PatchSearch (Tejankar et al.)" in page  # the title, from the defense's class
    for value in ("0.4200", "0.9100", "0.9700", "0.0630"):
        assert value in page
    assert ">Detectors<" not in page  # the filter's rows are not a detector's
    assert ">160.0<" in page  # wall s: the filter (60) and the pre-training again (100)


def test_the_page_opens_with_headlines_and_names_classes_and_settings(tmp_path, make_run):
    """A headline figure per attack before the tables; class names, not indices, where the
    run kept them; each setting labelled by what departs from the preset's usual setting."""
    names = ["horizontal", "vertical", "diagonal"]
    cells = {"clean": {"acc": 0.9, "asr": 0.1}, "attacked": {"acc": 0.85, "asr": 0.95}}
    for seed, top in enumerate((1, 1, 2)):
        top_row = backdoor_row("attacked", "synthetic", "mlp", "top_class", top)
        make_run(f"runs/named{seed}", [*backdoor_rows(cells), top_row], seed, classes=names)
    for key, value in (("lambda2", 5.0), ("lambda1", 2.0)):  # one key changed each
        attack = copy.deepcopy(CONFIG["attack"]) | {key: value}
        make_run(f"runs/{key}", backdoor_rows(cells), attack=attack)
    rows = [*backdoor_rows(cells), backdoor_row("attacked", "synthetic", "mlp", "top_class", 2)]
    make_run("runs/unnamed", rows, name="hand-unnamed")  # no confusion.json: the index
    for seed in (0, 1):
        made = Rows("synthetic")
        made.accuracies("linear", None, 0.9, 0.8)
        made.null(["linear"], None, 0.9, 0.9 - 0.01 * seed)
        make_run(f"runs/gc{seed}", made.rows, seed, name="hand-gc", attack={"name": "gc"})
    make_run("runs/ssl", [Row("synthetic", "clean", "linear", "acc", 0.7, "s/l")], attack=None)
    db = tmp_path / "store.sqlite"
    import_runs([tmp_path / "runs"], db)
    with ResultsStore(db, read_only=True) as store:
        page = build_report(store.runs())
    opening = page[: page.index('<section id="attack-')]
    assert ">At a glance<" in opening and opening.count("<figure>") == 2  # none without attack
    assert "BadEncoder: ASR against accuracy" in opening
    assert "Gradient canceling: acc. drop against drop null" in opening
    for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', opening):
        assert base64.b64decode(uri).startswith(b"\x89PNG")
    assert "<td>vertical ×2, diagonal ×1</td>" in page  # the top class over three seeds
    assert "<td>vertical</td>" in page  # the target, by name
    assert "<td>2</td>" in page  # no class names kept: the index
    for label in ("hand-badencoder", "hand-badencoder (attack.lambda2=5.0)",
                  "hand-badencoder (attack.lambda1=2.0)"):  # fmt: skip
        assert f">{label}</td>" in page, label
    assert "more)" not in page
