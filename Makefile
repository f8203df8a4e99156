# keras-mtl: two commands on a fresh machine.
#   make demo   GradNorm toy experiments of Chen et al. 2018, section 4 -> runs/demo/report.md
#   make test   the test suite (what CI runs)
#   make demo-digits   every balancer on real digits (MultiDigits), 3 seeds -> runs/digits/report.md
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Test processes (pytest-xdist; one file per worker at a time, so module
# fixtures are built once): the CI machine has 2 cores.
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed

.PHONY: demo demo-digits test test-slow benchmark benchmark-tables install clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo --out_dir=runs/demo

demo-digits: $(STAMP)
	$(PY) -m launch.digits_demo --out_dir=runs/digits

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

benchmark: $(STAMP)
	$(PY) -m launch.benchmark

# The speed tables of the README (issue 15): gradient balancers at T=2/10/40
# on both problems in float32 and mixed_float16, and the arithmetic floor,
# each as markdown + JSON under runs/bench/. On a GPU machine install the
# `gpu` extra first (VENV=... and `pip install -e ".[gpu,test]"`).
BENCH_BALANCERS ?= equal,gradnorm,imtl_g,mgda,pcgrad,uncertainty
benchmark-tables: $(STAMP)
	mkdir -p runs/bench
	$(PY) -m launch.benchmark --suites=balancers --rounds=5 --balancers=$(BENCH_BALANCERS) \
	  --out=runs/bench/balancers_float32.md
	$(PY) -m launch.benchmark --suites=balancers --rounds=5 --balancers=$(BENCH_BALANCERS) \
	  --mixed_precision=float16 --out=runs/bench/balancers_float16.md
	$(PY) -m launch.benchmark --suites=floor --rounds=5 --out=runs/bench/floor.md

clean:
	rm -rf runs build *.egg-info
