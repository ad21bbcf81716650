# dlmath: the two commands of the quick start are `make book` and `make test`.
# Every target creates .venv (python3 -m venv + pip) when it is missing or older than
# pyproject.toml, installs dlmath editable with what that target needs, then runs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
BOOK_FLAGS := -W -n --keep-going

.PHONY: book pdf test lab execute page bench knobs mutate bad-inputs clean lint stripout-check pytest book-strict rerun browser-check lab-check help

help:
	@echo "make book     build the HTML book (prints the path of index.html)"
	@echo "make test     run everything CI runs"
	@echo "make lab      JupyterLab on notebooks/ with the venv's kernel"
	@echo "make page NB=notebooks/NN-slug.ipynb   build one chapter alone (fast)"
	@echo "make pdf      build the PDF of the book with XeLaTeX (needs TeX: tools/install_tex.sh)"
	@echo "make execute  run every notebook once (nbval), no book build; SIZE=large runs them at"
	@echo "              the GPU preset's sizes on any device (slow on a CPU: see CONTRIBUTING)"
	@echo "make rerun    run the built chapters again (nbval): same asserts, same outputs"
	@echo "make bench    run the benchmarks (not part of CI)"
	@echo "make knobs    run every chapter's Experiment with its knobs turned (not part of CI)"
	@echo "make mutate MODULE=lse [TESTS=...]   mutation testing of src/dlmath/lse.py (not CI)"
	@echo "make bad-inputs  call every public function with one argument spoiled (part of make test)"
	@echo "make clean    remove build outputs (keeps .venv)"

# One stamp per extra set; each is rebuilt when pyproject.toml changes.
$(VENV)/.stamp-base:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	@touch $@

$(VENV)/.stamp-%: pyproject.toml $(VENV)/.stamp-base
	$(BIN)/pip install --quiet -e '.[$*]'
	@touch $@

# src/ changed => drop the execution cache (it keys on code cells only).
SRC_HASH = cat $$(find src -name '*.py' | sort) | sha256sum | cut -d' ' -f1

_build/.src-hash: FORCE
	@mkdir -p _build
	@h=$$($(SRC_HASH)); \
	if [ "$$(cat $@ 2>/dev/null)" != "$$h" ]; then \
	  rm -rf _build/.jupyter_cache; echo "$$h" > $@; fi

FORCE:

# The book's chapters run with one torch (and BLAS) thread: the digits they print depend on how
# many threads share a reduction, and `make rerun` runs them again the same way.
ONE_THREAD := OMP_NUM_THREADS=1

book: $(VENV)/.stamp-book _build/.src-hash
	$(ONE_THREAD) $(BIN)/jupyter-book build . $(BOOK_FLAGS)
	@echo
	@echo "The book is at: $(CURDIR)/_build/html/index.html"

# PDF: Sphinx's LaTeX builder + latexmk/XeLaTeX, same execution cache as `make book`, its own
# doctrees. Fails with the Debian packages to install when TeX is missing (see tools/install_tex.sh).
pdf: $(VENV)/.stamp-book _build/.src-hash
	$(ONE_THREAD) $(PY) tools/build_pdf.py

page: $(VENV)/.stamp-book
	@test -n "$(NB)" || (echo "usage: make page NB=notebooks/NN-slug.ipynb" && exit 2)
	@mkdir -p _build/pages
	$(PY) tools/page_toc.py $(NB) _build/pages/$(notdir $(basename $(NB))).toc.yml
	$(ONE_THREAD) $(BIN)/jupyter-book build . --toc _build/pages/$(notdir $(basename $(NB))).toc.yml \
	  --path-output _build/pages/$(notdir $(basename $(NB))) --keep-going
	@echo "Page: $(CURDIR)/_build/pages/$(notdir $(basename $(NB)))/_build/html/$(basename $(NB)).html"

# The notebooks get pyflakes only (undefined names, unused imports): their style is prose-first.
lint: $(VENV)/.stamp-test
	$(BIN)/ruff check src tests tools benchmarks
	$(BIN)/ruff check --select F notebooks

stripout-check: $(VENV)/.stamp-test
	$(BIN)/nbstripout --verify notebooks/*.ipynb

# Two pytest workers already use both cores: give each one torch thread, or the two kernels
# contend for four (benchmarks/bench_notebooks.py: 0.64-0.71x the wall time of the default).
PYTEST = $(ONE_THREAD) $(PY) -m pytest -n 2 -q
NBVAL  = --nbval-current-env --dist loadfile

pytest: $(VENV)/.stamp-test
	$(PYTEST) tests

# Every chapter from its source, asserts checked, outputs not compared (no book build needed).
# SIZE=small|large forces a size preset (DLMATH_SIZE); empty: the device's own.
execute: $(VENV)/.stamp-test
	DLMATH_SIZE=$(SIZE) $(PYTEST) --nbval-lax $(NBVAL) notebooks

book-strict: $(VENV)/.stamp-book
	rm -rf _build/html _build/.doctrees _build/jupyter_execute _build/.jupyter_cache
	@mkdir -p _build && $(SRC_HASH) > _build/.src-hash  # the fresh cache matches src/: keep it for pdf
	$(ONE_THREAD) $(BIN)/jupyter-book build . $(BOOK_FLAGS)
	$(PY) tools/exec_budget.py _build/.jupyter_cache

# nbval, strict, on the chapters the build executed: every cell runs again in a fresh kernel,
# every assert must hold, and every printed text and value must equal the build's exactly. On a
# GPU only the asserts are checked: some CUDA kernels (atomic adds) do not repeat bit for bit.
rerun: $(VENV)/.stamp-test $(VENV)/.stamp-book
	rm -rf _build/executed
	$(PY) tools/export_executed.py _build/.jupyter_cache _build/executed
	@mode=$$($(PY) -c "from dlmath import device; print(device.default_device().type)"); \
	if [ "$$mode" = cpu ]; then flag=--nbval; else flag=--nbval-lax; \
	  echo "rerun: chapters ran on $$mode; checking asserts only, not outputs"; fi; \
	echo "$(PYTEST) $$flag $(NBVAL) _build/executed"; $(PYTEST) $$flag $(NBVAL) _build/executed

browser-check: $(VENV)/.stamp-test
	$(PY) tools/browser_check.py _build/html --screenshots _build/screenshots

lab-check: $(VENV)/.stamp-test
	$(PY) tools/lab_check.py notebooks/01-logsumexp-inequalities.ipynb \
	  --screenshot _build/screenshots/lab-01-logsumexp-inequalities.png

test: lint stripout-check pytest bad-inputs book-strict rerun pdf browser-check lab-check
	@echo "make test: all checks passed"

lab: $(VENV)/.stamp-lab
	$(BIN)/python -m ipykernel install --sys-prefix --name dlmath --display-name "Python 3 (dlmath)"
	$(BIN)/jupyter lab notebooks/

bench: $(VENV)/.stamp-test
	@ls benchmarks/bench_*.py >/dev/null 2>&1 || { echo "no benchmarks yet (see benchmarks/README.md)"; exit 0; }; \
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# A reader's changes: each Experiment knob set to the values its comment and prose suggest, to
# half and twice its value, and to other seeds; the chapter is run to the end each time.
knobs: $(VENV)/.stamp-test
	$(ONE_THREAD) $(PY) tools/turn_knobs.py notebooks/*.ipynb

# Mutation testing: does each small change to a module make some test fail? (slow: minutes to
# hours per module; tools/mutate.py says how to read and act on the survivors.)
mutate: $(VENV)/.stamp-mutation
	@test -n "$(MODULE)" || { echo "usage: make mutate MODULE=lse (or optim/lion)"; exit 2; }
	$(PY) tools/mutate.py run src/dlmath/$(MODULE).py $(if $(TESTS),--tests $(TESTS))
	$(PY) tools/mutate.py survivors src/dlmath/$(MODULE).py

# Bad input: every public function's recorded calls (from the test suite) repeated with one
# argument spoiled; fails on an error raised from inside torch/Python instead of ours, or a hang.
bad-inputs: $(VENV)/.stamp-test
	$(ONE_THREAD) $(PY) tools/bad_inputs.py

clean:
	rm -rf _build .pytest_cache .hypothesis
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
