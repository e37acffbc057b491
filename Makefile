# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install the pinned set (constraints.txt) into it;
# a second run finds the stamp up to date and installs nothing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_VERSION := 26.3

.PHONY: install demo test lint format lock clean-stack help browser-setup real-audio

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==$(PIP_VERSION)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

# The scripts and styles of Great Expectations' Data Docs, pinned (package-lock.json), so
# the docs open offline (ingestion/data_docs.py). From the npm registry, like pip's wheels.
DOCS_ASSETS := ingestion/data_docs_assets
ASSETS_STAMP := $(DOCS_ASSETS)/node_modules/.installed

$(ASSETS_STAMP): $(DOCS_ASSETS)/package.json $(DOCS_ASSETS)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix $(DOCS_ASSETS) --ignore-scripts --no-audit --no-fund --loglevel=error \
	  && touch $@; \
	else \
	  echo "install: WARNING: no npm here: Data Docs keep their CDN links (they need the internet)"; \
	fi

install: $(STAMP) $(ASSETS_STAMP)  ## create .venv and install the pinned dependencies

demo: $(STAMP) $(ASSETS_STAMP)  ## start the local stack and run the demo
	$(BIN)/python -m synthetic.demo

test: $(STAMP) $(ASSETS_STAMP) browser-setup real-audio  ## lint, then run every test (starts real services on free ports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# ---- real recordings (tests/integration/test_real_audio.py) ------------------------------
# Real speech at telephone rate: Asterisk's prompts read by five speakers (en_US and es_MX
# Allison Smith, fr_CA June Wallack, it_IT Carlo and Marco Menardi's it_IT_f, ru_RU
# IvrvoiceRU; CC-BY-SA-3.0), from
# Debian's packages (and the English prompts' transcripts, core-sounds-en.txt), unpacked into
# .cache/real-audio (apt-get download needs no root).
REAL_AUDIO := .cache/real-audio
# The target is a recording itself, not a stamp: a stamp can outlive the files it vouches for.
# Other rules name `real-audio`, not this variable: make expands a rule's prerequisites where the
# rule is read, and a variable defined further down is empty there (CI's run fetched nothing).
REAL_AUDIO_PROBE := $(REAL_AUDIO)/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz
REAL_AUDIO_PACKAGES := asterisk-core-sounds-en-wav=1.6.1-1 asterisk-core-sounds-fr-wav=1.6.1-1 \
  asterisk-core-sounds-en=1.6.1-1 asterisk-core-sounds-es-wav=1.6.1-1 asterisk-core-sounds-ru-wav=1.6.1-1 \
  asterisk-core-sounds-it-wav=1.6.1-1 asterisk-prompt-it-menardi-wav=1:1.4.22+mm20110907-3.1

real-audio: $(REAL_AUDIO_PROBE)  ## fetch the real recordings the real-audio test ingests
# After the Makefile: a package added to the list is fetched into an older cache too.
$(REAL_AUDIO_PROBE): Makefile
	rm -rf $(REAL_AUDIO) && mkdir -p $(REAL_AUDIO)
	cd $(REAL_AUDIO) && apt-get download $(REAL_AUDIO_PACKAGES)
	cd $(REAL_AUDIO) && for deb in *.deb; do dpkg-deb -x "$$deb" . && rm "$$deb"; done
	@test -f $@ || { echo "real-audio: $@ is not in the packages"; exit 1; }
	touch $@

# ---- browser tests (tests/browser) ------------------------------------------------------
# Playwright drives Debian's Chromium (`playwright install` needs the internet). Installed
# with apt-get only when missing, so a second `make test` checks and moves on at once.
# Without apt-get (or root/sudo) it says so; the browser tests are then skipped, with why.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)

browser-setup:  ## install Chromium for the browser tests when missing (apt-get)
	@if [ -n "$$CHROMIUM_PATH" ] && [ -x "$$CHROMIUM_PATH" ]; then :; \
	elif command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "browser-setup: installing Chromium with apt-get (once)"; \
	  { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install \
	      -y -qq --no-install-recommends chromium >/dev/null; } \
	  || echo "browser-setup: WARNING: apt-get could not install chromium; tests/browser will be SKIPPED"; \
	else \
	  echo "browser-setup: no chromium and no apt-get here: install Chromium (or set CHROMIUM_PATH);"; \
	  echo "browser-setup: until then tests/browser will be SKIPPED"; \
	fi

lint: $(STAMP)  ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock:  ## re-resolve the dependency ranges of pyproject.toml into constraints.txt
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet pip==$(PIP_VERSION)
	.lock-venv/bin/pip install --quiet -e ".[dev]"
	{ echo "# Exact versions of every package, tested together. Regenerate with 'make lock'."; \
	  echo "# torch is the CPU wheel on local disk (pip finds it via its find-links)."; \
	  .lock-venv/bin/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; \
	} > constraints.txt
	rm -rf .lock-venv

clean-stack: $(STAMP)  ## stop the local stack and delete its state (.dualmedia/)
	-$(BIN)/dualmedia down
	rm -rf .dualmedia
