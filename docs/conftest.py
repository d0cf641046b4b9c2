"""Collect the guide's pages as doctests, and nothing a build left here.

pytest runs every ``.rst`` page under ``docs/`` as a doctest (see
``[tool.pytest.ini_options]``). What Sphinx and sphinx-gallery write into this
folder (the API stubs, the gallery's copies of the examples, which
``--doctest-modules`` would import and so run) and ``conf.py`` are not tests.
"""

collect_ignore = ["conf.py"]
collect_ignore_glob = ["_build/*", "generated/*", "auto_examples/*", "_templates/*"]
