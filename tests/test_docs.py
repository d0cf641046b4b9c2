"""The documentation site: it builds, and it documents every public name.

One build per test session (module-scoped fixture): Sphinx in this process,
warnings as errors, the gallery's pages written but its scripts not run
(``plot_gallery=0``), intersphinx off, so that no step needs a network. The
sources are copied to a temporary folder first, so that the generated API
stubs and gallery pages never land in the checkout.
"""

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import sklearn_pathkernel
from sklearn_pathkernel import engines, exceptions, plotting

build_main = pytest.importorskip("sphinx.cmd.build").build_main
ClassDoc = pytest.importorskip("numpydoc.docscrape").ClassDoc

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))
GUIDE = sorted((DOCS / "user_guide").glob("*.rst"))
PUBLIC_MODULES = (sklearn_pathkernel, plotting, exceptions, engines)
# What a build leaves in docs/: never copied into the temporary source tree.
_BUILT = shutil.ignore_patterns(
    "_build", "generated", "auto_examples", "sg_execution_times.rst", "__pycache__"
)


def public_names():
    """``module.name`` of every public name the API reference must list."""
    return {
        f"{module.__name__}.{name}"
        for module in PUBLIC_MODULES
        for name in module.__all__
        if not name.startswith("__")
    }


def api_index(text):
    """``module.name`` of every entry of the autosummary tables of ``api.rst``."""
    names, module, in_table = set(), None, False
    for line in text.splitlines():
        found = re.match(r"\.\. (?:current)?module:: ([\w.]+)", line)
        if found:
            module, in_table = found.group(1), False
        elif line.startswith(".. autosummary::"):
            in_table = True
        elif in_table and re.match(r"   [A-Za-z_]\w*$", line):
            names.add(f"{module}.{line.strip()}")
        elif line and not line.startswith(" "):
            in_table = False
    return names


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the site once: ``(html folder, seconds)``; fails with the warnings."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(DOCS, source / "docs", ignore=_BUILT)
    shutil.copytree(ROOT / "examples", source / "examples", ignore=_BUILT)
    (source / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "RESULTS.md", source / "benchmarks")
    html, warnings = source / "html", source / "warnings.txt"
    intersphinx = os.environ.pop("SKLEARN_PATHKERNEL_DOCS_INTERSPHINX", None)
    start = time.perf_counter()
    try:
        status = build_main(
            ["-W", "--keep-going", "-q", "-b", "html", "-D", "plot_gallery=0"]
            + ["-w", str(warnings), str(source / "docs"), str(html)]
        )
    finally:
        if intersphinx is not None:
            os.environ["SKLEARN_PATHKERNEL_DOCS_INTERSPHINX"] = intersphinx
    seconds = time.perf_counter() - start
    assert status == 0, warnings.read_text()[-5000:]
    return html, seconds


def test_the_api_index_lists_every_public_name_once():
    text = (DOCS / "api.rst").read_text()
    listed = api_index(text)
    assert listed == public_names(), (
        f"missing from docs/api.rst: {sorted(public_names() - listed)}; "
        f"listed but not public: {sorted(listed - public_names())}"
    )


def test_the_index_reader_reads_tables_and_modules():
    text = (
        ".. module:: pkg\n\nA\n=\n\n.. autosummary::\n   :toctree: generated/\n\n"
        "   One\n   two\n\n.. currentmodule:: pkg.sub\n\n.. autosummary::\n\n"
        "   Three\n\nText after.\n\n   Indented\n"
    )
    assert api_index(text) == {"pkg.One", "pkg.two", "pkg.sub.Three"}


def test_every_public_name_has_a_page(site):
    html, _ = site
    for name in sorted(public_names()):
        page = html / "generated" / f"{name}.html"
        assert page.is_file(), name
        assert f'id="{name}"' in page.read_text(), name
    index = (html / "api.html").read_text()
    assert all(f'href="generated/{name}.html"' in index for name in public_names())


def test_estimator_pages_list_their_own_methods(site):
    html, _ = site
    name = "sklearn_pathkernel.PathKernelClassifier"
    page = (html / "generated" / f"{name}.html").read_text()
    methods = ("fit", "kernel", "kernel_diagonal", "decompose", "predict_proba")
    for method in methods + ("influence", "self_influence"):
        assert f'id="{name}.{method}"' in page
    # scikit-learn's generated methods are scikit-learn's to document.
    assert f'id="{name}.set_fit_request"' not in page


def test_the_gallery_has_a_page_and_a_thumbnail_per_example(site):
    html, _ = site
    index = (html / "auto_examples" / "index.html").read_text()
    assert EXAMPLES
    for script in EXAMPLES:
        assert (html / "auto_examples" / f"{script.stem}.html").is_file(), script.name
        thumbnail = f"sphx_glr_{script.stem}_thumb.png"
        assert f"_images/{thumbnail}" in index, script.name
        assert (html / "_images" / thumbnail).stat().st_size > 0, script.name


def test_every_guide_chapter_is_built_and_runs_an_example(site):
    html, seconds = site
    assert GUIDE
    for chapter in GUIDE:
        assert (html / "user_guide" / f"{chapter.stem}.html").is_file(), chapter.name
        if chapter.stem != "index":
            assert "\n>>> " in chapter.read_text(), f"{chapter.name} runs no example"
    for page in ("index", "getting_started", "theory", "benchmarks", "changelog"):
        assert (html / f"{page}.html").is_file(), page
    print(f"documentation built in {seconds:.1f} s")


def _fitted_estimators():
    rng = np.random.RandomState(0)
    X = rng.randn(30, 4)
    y = (X[:, 0] > 0).astype(int)
    net = sklearn_pathkernel.PathKernelClassifier((4,), max_iter=3, random_state=0)
    return [
        net.fit(X, y),
        sklearn_pathkernel.PathKernelClassifier(
            (4,), max_iter=3, early_stopping=True, random_state=0
        ).fit(X, y),
        sklearn_pathkernel.PathKernelRegressor((4,), max_iter=3).fit(X, X[:, 0]),
        sklearn_pathkernel.PathKernelTransformer(net).fit(X, y),
        sklearn_pathkernel.PathKernelFeatures(net, n_components=5).fit(X, y),
        sklearn_pathkernel.PathKernelNystroem(net, n_components=5).fit(X, y),
    ]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_every_fitted_attribute_is_documented():
    for estimator in _fitted_estimators():
        documented = {item.name for item in ClassDoc(type(estimator))["Attributes"]}
        fitted = {k for k in vars(estimator) if k.endswith("_") and k[0] != "_"}
        assert fitted <= documented, (type(estimator).__name__, fitted - documented)


def test_the_readme_is_a_short_front_door_with_the_ci_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme.splitlines(), "the README's test command is CI's, verbatim"


def test_read_the_docs_builds_this_configuration():
    text = (ROOT / ".readthedocs.yaml").read_text()
    assert "configuration: docs/conf.py" in text
    assert re.search(r"extra_requirements:\s*\n\s*- docs", text)
    assert 'python: "3.11"' in text
